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
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Protocol

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from storage import UploadInfo

from ..errors import HookAnswer, TusError
from ..ops import logs, metrics
from ..service.caller import NOBODY, Caller
from ..service.outcomes import Body
from .event import HOOK_TYPES, HookResponse, tusd_event

BACKLOG = 1000  # background hooks waiting to be sent; beyond this they are dropped (logged)
SENDERS = 8  # background hooks in flight at once

# What a background hook's answer is handed to (post-receive's StopUpload).
OnAnswer = Callable[[HookResponse], None]
# Upload.Storage of an upload, from its id: {"Type": "filestore", "Path": ...}.
StorageOf = Callable[[str], Mapping[str, str]]
Queued = tuple[str, dict[str, Any], str | None, OnAnswer | None]


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
                 storage: StorageOf | None = None, progress_interval: float = 1.0) -> None:
        self.transport = transport
        self.enabled = enabled
        self.attempts = max(retries, 0) + 1
        self.backoff = backoff
        # What the hook event's Upload.Storage says: {"Type": "filestore", "Path": ...}.
        self.storage: StorageOf = storage or (lambda upload_id: {"Type": "filestore"})
        # tusd's -progress-hooks-interval: seconds between post-receive hooks of one PATCH.
        self.progress_interval = progress_interval
        self._send: MemoryObjectSendStream[Queued]
        self._receive: MemoryObjectReceiveStream[Queued]
        self._send, self._receive = anyio.create_memory_object_stream(BACKLOG)
        # run()'s task group while it runs: progress timers of body transfers run in it.
        self._tasks: TaskGroup | None = None

    def on(self, hook_type: str) -> bool:
        return hook_type in self.enabled

    def event(self, hook_type: str, info: UploadInfo, caller: Caller = NOBODY,
              extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        storage = self.storage(info.id) if info.id else {}
        return tusd_event(hook_type, info, caller=caller, storage=storage, extra=extra)

    async def send(self, hook_type: str, body: Mapping[str, Any],
                   upload_id: str | None) -> HookResponse:
        """Deliver one event with the configured retries; HookUnavailable at the end."""
        delay = self.backoff
        error = ""
        reachable = False
        for attempt in range(1, self.attempts + 1):
            metrics.hook_invocations.labels(hook_type).inc()
            try:
                answer = await self.transport.call(hook_type, body)
            except HookFailed as exc:
                error = str(exc)
                reachable = not exc.retry
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
        raise HookUnavailable(
            f"{hook_type} hook {'failed' if reachable else 'unreachable'}: {error}")

    async def ask(self, hook_type: str, info: UploadInfo, caller: Caller) -> HookResponse:
        """A blocking hook; an empty response when the event is not enabled."""
        if not self.on(hook_type):
            return HookResponse()
        return await self.send(hook_type, self.event(hook_type, info, caller), info.id or None)

    async def gate(self, hook_type: str, info: UploadInfo, caller: Caller, *,
                   refused: Callable[[HookResponse], bool]) -> HookResponse:
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
            raise HookAnswer.refusal(hook_type, answer.status, answer.body, answer.headers)
        return answer

    def tell(self, hook_type: str, info: UploadInfo, caller: Caller = NOBODY,
             extra: Mapping[str, Any] | None = None, *,
             on_answer: OnAnswer | None = None) -> None:
        """A non-blocking hook: queued, sent in the background, retried. `on_answer` gets
        the hook's response once it arrived (post-receive's StopUpload)."""
        if not self.on(hook_type):
            return
        body = self.event(hook_type, info, caller, extra)
        try:
            self._send.send_nowait((hook_type, body, info.id, on_answer))
        except anyio.WouldBlock:
            logs.event("hook.dropped", info.id, level=logging.ERROR, type=hook_type,
                       reason=f"more than {BACKLOG} hooks waiting")

    async def run(self) -> None:
        """Service: deliver background hooks, SENDERS at a time."""
        limit = anyio.Semaphore(SENDERS)

        async def deliver(hook_type: str, body: dict[str, Any], upload_id: str | None,
                          on_answer: OnAnswer | None) -> None:
            try:
                answer = await self.send(hook_type, body, upload_id)
                if on_answer is not None:
                    on_answer(answer)
            except HookUnavailable as exc:
                logs.event("hook.gave_up", upload_id, level=logging.ERROR, type=hook_type,
                           error=str(exc))
            finally:
                limit.release()

        try:
            async with anyio.create_task_group() as tg, self._receive:
                self._tasks = tg
                async for hook_type, body, upload_id, on_answer in self._receive:
                    await limit.acquire()
                    tg.start_soon(deliver, hook_type, body, upload_id, on_answer)
        finally:
            self._tasks = None
            with anyio.CancelScope(shield=True):
                await self.transport.aclose()


    def progress(self, info: UploadInfo, caller: Caller,
                 stop: Callable[[], None]) -> Progress:
        """post-receive hooks for one body transfer (see Progress)."""
        return Progress(self, info, caller, stop)


class _Counted:
    """A body's chunks, counted as they are read (no generator: nothing to finalize
    when the reader stops early)."""

    __slots__ = ("_chunks", "_seen")

    def __init__(self, chunks: AsyncIterator[bytes], seen: Callable[[int], None]) -> None:
        self._chunks = chunks
        self._seen = seen

    def __aiter__(self) -> _Counted:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self._chunks.__anext__()
        self._seen(len(chunk))
        return chunk


class Progress:
    """tusd's post-receive while a body arrives: every `progress_interval` seconds when
    the offset moved (it counts bytes read, as tusd's does), and once more when the
    transfer ends. A hook answering `StopUpload` while the transfer runs calls `stop` (the
    service ends the transfer and terminates the upload).

    The timer runs in the sender's task group; without one (the sender is not running)
    the offset is reported when a chunk arrives after the interval.
    """

    def __init__(self, hooks: Hooks, info: UploadInfo, caller: Caller,
                 stop: Callable[[], None]) -> None:
        self.hooks = hooks
        self.info = info
        self.caller = caller
        self._stop = stop
        self.received = 0
        self.reported = info.offset
        self.active = True
        self.stopped: HookResponse | None = None  # the answer that stopped the upload
        self._next = time.monotonic() + hooks.progress_interval
        self._timer: anyio.CancelScope | None = anyio.CancelScope()
        try:
            if hooks._tasks is None:
                raise RuntimeError("the hook sender is not running")
            hooks._tasks.start_soon(self._tick, self._timer)
        except RuntimeError:  # also: its task group is closing
            self._timer = None

    def body(self, body: Body) -> Body:
        return Body(_Counted(body.chunks, self._seen), body.length, body.disconnect)

    def _now(self) -> UploadInfo:
        return self.info.evolve(offset=self.info.offset + self.received)

    async def _tick(self, scope: anyio.CancelScope) -> None:
        with scope:
            while True:
                await anyio.sleep(self.hooks.progress_interval)
                self._report(self._now())

    def _seen(self, size: int) -> None:
        self.received += size
        if self._timer is None and (now := time.monotonic()) >= self._next:
            self._next = now + self.hooks.progress_interval
            self._report(self._now())

    def _report(self, info: UploadInfo) -> None:
        if info.offset == self.reported:
            return
        self.reported = info.offset
        self.hooks.tell("post-receive", info, self.caller, on_answer=self._answered)

    def _answered(self, answer: HookResponse) -> None:
        if not answer.stop_upload or not self.active or self.stopped is not None:
            return
        self.stopped = answer
        logs.event("upload.stopped_by_hook", self.info.id, level=logging.WARNING,
                   status=answer.status or 400)
        self._stop()

    def end(self, info: UploadInfo) -> HookResponse | None:
        """The transfer ended at `info` (its last commit): the last post-receive, and the
        StopUpload answer that ended it, if one did."""
        self.active = False
        if self._timer is not None:
            self._timer.cancel()
        self._report(info)
        return self.stopped
