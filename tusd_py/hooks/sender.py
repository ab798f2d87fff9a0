"""The one hook sender of a process: enabled events, retries, the background queue.

Built once at the composition root (tusd_py/app.py, or the `worker` command) from the
configured transport, retries, backoff and event set, and handed to the upload service
and the completion worker alike, so every event obeys the same configuration.

Blocking hooks (pre-create, pre-finish, pre-terminate) are awaited and their
response can refuse or change what happens; the others are queued and sent in the
background with retries, and never slow an upload down. post-finish is sent after
processing (it carries the result under "TusdPy").
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from storage import UploadInfo

from ..errors import HookAnswer, TusError
from ..ops import logs, metrics
from ..service.caller import NOBODY, Caller
from .event import HOOK_TYPES, HookResponse, tusd_event

BACKLOG = 1000  # background hooks waiting to be sent; beyond this they are dropped (logged)
SENDERS = 8  # background hooks in flight at once


class HookFailed(Exception):
    """One attempt failed; `retry` says whether another attempt may succeed."""

    def __init__(self, why: str, *, retry: bool) -> None:
        super().__init__(why)
        self.retry = retry


class HookUnavailable(Exception):
    """A hook could not be asked (after every attempt): a blocking hook fails closed."""


class HookTransport(Protocol):
    """How events reach the hook: HTTP, a hooks dir, gRPC, a Python object."""

    def describe(self) -> str: ...

    async def call(self, hook_type: str, body: Mapping[str, Any]) -> HookResponse:
        """One attempt; raises HookFailed."""
        ...

    async def aclose(self) -> None: ...


def parse_events(spec: str) -> frozenset[str]:
    """'pre-create,post-finish' -> the event set; ValueError naming unknown events."""
    events = frozenset(e.strip() for e in spec.split(",") if e.strip())
    unknown = events - set(HOOK_TYPES)
    if unknown:
        raise ValueError(f"unknown hook events: {', '.join(sorted(unknown))}")
    return events


class Hooks:
    """The enabled events of one process, their transport and retry policy."""

    def __init__(self, transport: HookTransport, enabled: frozenset[str], *,
                 retries: int = 3, backoff: float = 1.0,
                 storage: Mapping[str, str] | None = None) -> None:
        self.transport = transport
        self.enabled = enabled
        self.attempts = max(retries, 0) + 1
        self.backoff = backoff
        # What the hook event's Upload.Storage says: {"Type": "filestore", ...}.
        self.storage = dict(storage or {"Type": "filestore"})
        self._send: MemoryObjectSendStream[tuple[str, dict[str, Any], str | None]]
        self._receive: MemoryObjectReceiveStream[tuple[str, dict[str, Any], str | None]]
        self._send, self._receive = anyio.create_memory_object_stream(BACKLOG)

    def on(self, hook_type: str) -> bool:
        return hook_type in self.enabled

    def event(self, hook_type: str, info: UploadInfo, caller: Caller = NOBODY,
              extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        storage = dict(self.storage)
        path = ((info.result or {}).get("file") or {}).get("path")
        if path:
            storage["Path"] = path
        return tusd_event(hook_type, info, caller=caller, storage=storage, extra=extra)

    async def send(self, hook_type: str, body: Mapping[str, Any],
                   upload_id: str | None) -> HookResponse:
        """Deliver one event with the configured retries; HookUnavailable at the end."""
        delay = self.backoff
        error = ""
        for attempt in range(1, self.attempts + 1):
            metrics.hook_invocations.labels(hook_type).inc()
            try:
                answer = await self.transport.call(hook_type, body)
            except HookFailed as exc:
                error = str(exc)
                retry = exc.retry and attempt < self.attempts
                logs.event("hook.failed", upload_id, level=logging.WARNING, type=hook_type,
                           error=error, attempt=attempt, will_retry=retry)
                if not retry:
                    break
                await anyio.sleep(delay)
                delay *= 2
                continue
            logs.event("hook.sent", upload_id, type=hook_type, attempt=attempt,
                       to=self.transport.describe())
            return answer
        metrics.hook_errors.labels(hook_type).inc()
        raise HookUnavailable(f"{hook_type} hook unreachable: {error}")

    async def ask(self, hook_type: str, info: UploadInfo, caller: Caller) -> HookResponse:
        """A blocking hook; an empty response when the event is not enabled."""
        if not self.on(hook_type):
            return HookResponse()
        return await self.send(hook_type, self.event(hook_type, info, caller), info.id or None)

    async def gate(self, hook_type: str, info: UploadInfo, caller: Caller, *,
                   refused: Callable[[HookResponse], bool], default_body: str) -> HookResponse:
        """A blocking hook that decides whether the request goes on.

        It fails closed: a hook that cannot be asked answers 500 (as tusd) and nothing
        happens; a refusal is sent as the hook wrote it (tusd's HTTPResponse).
        """
        try:
            answer = await self.ask(hook_type, info, caller)
        except HookUnavailable as exc:
            raise TusError.hook_failed(str(exc)) from None
        if refused(answer):
            logs.event("request.refused_by_hook", info.id or None, type=hook_type,
                       status=answer.status or 400)
            raise HookAnswer(answer.status or 400, answer.body or default_body, answer.headers)
        return answer

    def tell(self, hook_type: str, info: UploadInfo, caller: Caller = NOBODY,
             extra: Mapping[str, Any] | None = None) -> None:
        """A non-blocking hook: queued, sent in the background, retried."""
        if not self.on(hook_type):
            return
        body = self.event(hook_type, info, caller, extra)
        try:
            self._send.send_nowait((hook_type, body, info.id))
        except anyio.WouldBlock:
            logs.event("hook.dropped", info.id, level=logging.ERROR, type=hook_type,
                       reason=f"more than {BACKLOG} hooks waiting")

    async def run(self) -> None:
        """Service: deliver background hooks, SENDERS at a time."""
        limit = anyio.Semaphore(SENDERS)

        async def deliver(hook_type: str, body: dict[str, Any], upload_id: str | None) -> None:
            try:
                await self.send(hook_type, body, upload_id)
            except HookUnavailable as exc:
                logs.event("hook.gave_up", upload_id, level=logging.ERROR, type=hook_type,
                           error=str(exc))
            finally:
                limit.release()

        try:
            async with anyio.create_task_group() as tg, self._receive:
                async for hook_type, body, upload_id in self._receive:
                    await limit.acquire()
                    tg.start_soon(deliver, hook_type, body, upload_id)
        finally:
            with anyio.CancelScope(shield=True):
                await self.transport.aclose()
