"""tusd v2-compatible HTTP hooks, so people moving from tusd keep their hook receivers.

Blocking hooks (pre-create, pre-finish, pre-terminate) are awaited and their
response can refuse or change what happens; the others are sent in the
background with retries and never slow an upload down. post-finish is sent
after processing (it carries the result under "TusdPy").
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from starlette.requests import Request

from storage import UploadInfo

from . import logs, metrics
from .errors import TusError
from .protocol import decoded_metadata

HOOK_TYPES = ("pre-create", "post-create", "post-receive", "pre-finish", "post-finish",
              "pre-terminate", "post-terminate")
BLOCKING = frozenset({"pre-create", "pre-finish", "pre-terminate"})
# tusd's defaults: the blocking pre-finish and pre-terminate are opt-in.
DEFAULT_EVENTS = ("pre-create", "post-create", "post-receive", "post-terminate", "post-finish")
RETRIES = 5
BACKOFF = 1.0
TIMEOUT = 15.0
BACKLOG = 1000  # background hooks waiting to be sent; beyond this they are dropped (logged)
SENDERS = 8  # background hooks in flight at once


@dataclass(frozen=True)
class HookRequest:
    """What tusd puts under Event.HTTPRequest."""

    method: str = ""
    uri: str = ""
    remote_addr: str = ""
    header: Mapping[str, list[str]] = field(default_factory=dict)

    @classmethod
    def of(cls, request: Request) -> HookRequest:
        header: dict[str, list[str]] = {}
        for name, value in request.headers.items():
            canonical = "-".join(part.capitalize() for part in name.split("-"))
            header.setdefault(canonical, []).append(value)
        client = request.client
        uri = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return cls(request.method, uri, f"{client.host}:{client.port}" if client else "", header)


@dataclass(frozen=True)
class HookResponse:
    """The parts of tusd's hook response that tusd-py honours."""

    status: int | None = None
    body: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    reject_upload: bool = False
    reject_termination: bool = False
    change_id: str | None = None
    change_metadata: Mapping[str, str] | None = None

    @classmethod
    def parse(cls, doc: Any) -> HookResponse:
        if not isinstance(doc, dict):
            return cls()
        http = doc.get("HTTPResponse") or {}
        change = doc.get("ChangeFileInfo") or {}
        metadata = change.get("MetaData")
        return cls(
            status=int(http["StatusCode"]) if http.get("StatusCode") else None,
            body=str(http.get("Body") or ""),
            headers={str(k): str(v) for k, v in (http.get("Header") or {}).items()},
            reject_upload=bool(doc.get("RejectUpload")),
            reject_termination=bool(doc.get("RejectTermination")),
            change_id=str(change["ID"]) if change.get("ID") else None,
            change_metadata=({str(k): str(v) for k, v in metadata.items()}
                             if isinstance(metadata, dict) else None),
        )


class HookAnswer(TusError):
    """A response a hook chose (tusd's HTTPResponse with RejectUpload / RejectTermination):
    its status, body and headers are sent as they are."""

    def __init__(self, status: int, body: str, headers: Mapping[str, str]) -> None:
        first_line = body.strip().splitlines()[0] if body.strip() else "rejected by a hook"
        super().__init__(status, "ERR_REJECTED_BY_HOOK", first_line[:200], headers)
        self.raw_body = body

    @property
    def body(self) -> str:
        return self.raw_body


def hook_failed(why: str) -> TusError:
    return TusError(502, "ERR_HOOK_FAILED", why, {"Retry-After": "5"})


class HookUnavailable(Exception):
    """A blocking hook could not be asked: the request must fail closed (5xx)."""


def tusd_event(hook_type: str, info: UploadInfo, extra: Mapping[str, Any] | None = None,
               request: HookRequest | None = None) -> dict[str, Any]:
    """The JSON tusd's HTTP hooks send, so existing hook receivers keep working."""
    file = (info.result or {}).get("file") or {}
    request = request or HookRequest()
    body: dict[str, Any] = {
        "Type": hook_type,
        "Event": {
            "Upload": {
                # 'Upload ID will be null for pre-create hook.'
                "ID": info.id or None, "Size": info.size or 0,
                "SizeIsDeferred": info.size is None, "Offset": info.offset,
                "MetaData": {k: v or "" for k, v in decoded_metadata(info.metadata).items()},
                "IsPartial": info.partial, "IsFinal": info.is_final,
                "PartialUploads": list(info.parts) or None,
                "Storage": ({} if hook_type == "pre-create"
                            else {"Type": "filestore", "Path": file.get("path", "")}),
            },
            "HTTPRequest": {"Method": request.method, "URI": request.uri,
                            "RemoteAddr": request.remote_addr, "Header": dict(request.header)},
        },
    }
    if extra is not None:
        # What tusd cannot tell: the processing result (state, file, image, thumbnails).
        body["TusdPy"] = dict(extra)
    return body


class HttpHook:
    """POSTs hook events to one URL with tusd's retry rule: 5xx and network errors retry."""

    def __init__(self, url: str, *, retries: int = RETRIES, backoff: float = BACKOFF,
                 timeout: float = TIMEOUT) -> None:
        import httpx  # it pulls in click and pygments: only in processes that send hooks

        self._httpx = httpx
        self.url = url
        self.retries = max(retries, 1)
        self.backoff = backoff
        self.timeout = timeout

    async def send(self, hook_type: str, body: Mapping[str, Any],
                   upload_id: str | None) -> HookResponse:
        """Deliver one event; HookUnavailable after the last failed attempt."""
        metrics.hook_requests.labels(hook_type).inc()
        httpx = self._httpx
        delay = self.backoff
        error = ""
        async with httpx.AsyncClient(timeout=self.timeout) as client:
            for attempt in range(1, self.retries + 1):
                try:
                    response = await client.post(self.url, json=body)
                    if response.status_code < 500:
                        logs.event("hook.sent", upload_id, type=hook_type,
                                   status=response.status_code, attempt=attempt)
                        if not response.is_success:
                            raise HookUnavailable(f"{hook_type} hook answered HTTP "
                                                  f"{response.status_code}")
                        try:
                            return HookResponse.parse(response.json())
                        except ValueError:
                            return HookResponse()  # an empty or non-JSON 2xx: no changes
                    error = f"HTTP {response.status_code}"
                except httpx.HTTPError as exc:
                    error = f"{type(exc).__name__}: {exc}"
                logs.event("hook.failed", upload_id, level=logging.WARNING, type=hook_type,
                           error=error, attempt=attempt, will_retry=attempt < self.retries)
                if attempt < self.retries:
                    await anyio.sleep(delay)
                    delay *= 2
        metrics.hook_errors.labels(hook_type).inc()
        raise HookUnavailable(f"{hook_type} hook unreachable: {error}")

    async def post_finish(self, info: UploadInfo, upload: Mapping[str, Any]) -> bool:
        try:
            await self.send("post-finish", tusd_event("post-finish", info, upload), info.id)
        except HookUnavailable:
            return False
        return True


class Hooks:
    """The enabled hook events of one server and the background sender."""

    def __init__(self, hook: HttpHook, enabled: frozenset[str]) -> None:
        self.hook = hook
        self.enabled = enabled
        self._send: MemoryObjectSendStream[tuple[str, dict[str, Any], str | None]]
        self._receive: MemoryObjectReceiveStream[tuple[str, dict[str, Any], str | None]]
        self._send, self._receive = anyio.create_memory_object_stream(BACKLOG)

    def on(self, hook_type: str) -> bool:
        return hook_type in self.enabled

    async def ask(self, hook_type: str, info: UploadInfo, request: Request) -> HookResponse:
        """A blocking hook; an empty response when the event is not enabled."""
        if not self.on(hook_type):
            return HookResponse()
        body = tusd_event(hook_type, info, request=HookRequest.of(request))
        return await self.hook.send(hook_type, body, info.id or None)

    async def gate(self, hook_type: str, info: UploadInfo, request: Request, *,
                   refused: Callable[[HookResponse], bool], default_body: str) -> HookResponse:
        """A blocking hook that decides whether the request goes on.

        It fails closed: a hook that cannot be asked answers 502 and nothing happens; a
        refusal is sent as the hook wrote it (tusd's HTTPResponse).
        """
        try:
            answer = await self.ask(hook_type, info, request)
        except HookUnavailable as exc:
            raise hook_failed(str(exc)) from None
        if refused(answer):
            logs.event("request.refused_by_hook", info.id or None, type=hook_type,
                       status=answer.status or 400)
            raise HookAnswer(answer.status or 400, answer.body or default_body, answer.headers)
        return answer

    def tell(self, hook_type: str, info: UploadInfo, request: Request | None = None) -> None:
        """A non-blocking hook: queued, sent in the background, retried."""
        if not self.on(hook_type):
            return
        body = tusd_event(hook_type, info,
                          request=HookRequest.of(request) if request is not None else None)
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
                await self.hook.send(hook_type, body, upload_id)
            except HookUnavailable as exc:
                logs.event("hook.gave_up", upload_id, level=logging.ERROR, type=hook_type,
                           error=str(exc))
            finally:
                limit.release()

        async with anyio.create_task_group() as tg, self._receive:
            async for hook_type, body, upload_id in self._receive:
                await limit.acquire()
                tg.start_soon(deliver, hook_type, body, upload_id)
