"""Interim (1xx) responses from an ASGI app, e.g. `104 Upload Resumption Supported`.

ASGI has no generic 1xx message (only `http.response.early_hint`, i.e. 103 with
`Link` headers). The resumable-upload draft needs a 104 carrying `Location`,
`Upload-Limit` and `Upload-Draft-Interop-Version` before the request body is
read, so the protocol classes below (small subclasses of uvicorn's httptools
and h11 protocols, selected by `tusd-py serve`) put an ASGI extension into
each request's scope::

    scope["extensions"]["tusd_py.informational"] = {"send": send}
    await send(104, [("Location", url), ...])  # -> True if written

The app calls `send_informational(scope, ...)`, which returns False (and
writes nothing) when the server has no such extension (another ASGI server,
the test client), when the response already started, or for an HTTP/1.0
client ('A server MUST NOT send a 1xx response to an HTTP/1.0 client',
RFC 9110 §15.2). The app then simply goes on without the interim response.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from . import sendfile

EXTENSION = "tusd_py.informational"
Headers = Sequence[tuple[str, str]]
Sender = Callable[[int, Headers], Awaitable[bool]]

REASONS = {
    100: "Continue",
    102: "Processing",
    103: "Early Hints",
    104: "Upload Resumption Supported",
}
# Request line plus header fields (Go's net/http allows 1 MiB, nginx 32 KiB by default).
MAX_HEADER_BYTES = 64 * 1024
MAX_HEADER_LINES = 256
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FIELD_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")


async def send_informational(scope: Any, status: int, headers: Headers) -> bool:
    """Write an interim response now if the server lets us; True when it was written."""
    extensions = scope.get("extensions") or {}
    entry = extensions.get(EXTENSION)
    if not entry:
        return False
    sender: Sender = entry["send"]
    try:
        return await sender(status, headers)
    except ValueError as exc:  # e.g. a header value with a control character
        logging.getLogger(__name__).warning("interim response not sent: %s", exc)
        return False


def encode(status: int, headers: Headers) -> bytes:
    """The HTTP/1.1 bytes of one interim response (validated: no header injection)."""
    if not 100 <= status <= 199 or status == 101:
        raise ValueError(f"not an interim status: {status}")
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Informational')}"]
    for name, value in headers:
        if _TOKEN.fullmatch(name) is None or _FIELD_VALUE.fullmatch(value) is None:
            raise ValueError(f"invalid header {name!r}: {value!r}")
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _usable(scope: Any, cycle: Any) -> bool:
    return (scope.get("http_version") == "1.1" and not cycle.response_started
            and not cycle.disconnected and not cycle.transport.is_closing())


def _attach(scope: Any, sender: Sender) -> None:
    extensions = scope.setdefault("extensions", {})
    extensions[EXTENSION] = {"send": sender}


def _httptools_sender(cycle: Any) -> Sender:
    async def send(status: int, headers: Headers) -> bool:
        data = encode(status, headers)
        if cycle.flow.write_paused and not cycle.disconnected:
            await cycle.flow.drain()
        if not _usable(cycle.scope, cycle):
            return False
        cycle.transport.write(data)
        return True

    return send


def _h11_sender(cycle: Any) -> Sender:
    async def send(status: int, headers: Headers) -> bool:
        encode(status, headers)  # validation only; h11 writes the bytes
        if cycle.flow.write_paused and not cycle.disconnected:
            await cycle.flow.drain()
        if not _usable(cycle.scope, cycle) or cycle.conn.our_state is not h11.SEND_RESPONSE:
            return False
        event = h11.InformationalResponse(
            status_code=status, reason=REASONS.get(status, "Informational").encode(),
            headers=[(n.encode("latin-1"), v.encode("latin-1")) for n, v in headers])
        cycle.transport.write(cycle.conn.send(event))
        return True

    return send


def _keeping_received_body(cycle: Any) -> Callable[[], Awaitable[Any]]:
    """uvicorn's receive(), except that body bytes read before the connection was lost are
    still handed over (uvicorn drops them): for a tus server they are the upload's bytes."""
    original = cycle.receive

    async def receive() -> Any:
        if cycle.disconnected and cycle.body and not cycle.response_complete:
            body = bytes(cycle.body)
            cycle.body = type(cycle.body)()
            return {"type": "http.request", "body": body, "more_body": True}
        return await original()

    return receive


class InformationalH11Protocol(H11Protocol):
    """uvicorn's h11 protocol plus the `tusd_py.informational` extension."""

    def handle_events(self) -> None:
        before = self.cycle
        super().handle_events()
        cycle = self.cycle
        # The request's task is created but has not run yet: the scope can still grow.
        if cycle is not None and cycle is not before:
            _attach(cycle.scope, _h11_sender(cycle))


InformationalProtocol: type[asyncio.Protocol]
try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover - httptools is an optional uvicorn extra
    InformationalProtocol = InformationalH11Protocol
else:

    class InformationalHttpToolsProtocol(HttpToolsProtocol):
        """uvicorn's httptools protocol plus the `tusd_py.informational` extension, and a
        bound on the header section (httptools itself buffers any amount of headers)."""

        _header_bytes = 0
        _header_count = 0
        _too_large = False
        _in_headers = False  # between on_message_begin and on_headers_complete
        _raw_bytes = 0

        def data_received(self, data: bytes) -> None:
            # httptools hands a header over only once its line is complete, so one endless
            # line would be buffered whole: count the raw bytes of the header section too.
            super().data_received(data)
            if self._in_headers and not self._too_large and not self.transport.is_closing():
                # Still inside a header section after this chunk: it all counts.
                self._raw_bytes += len(data)
                if self._raw_bytes > MAX_HEADER_BYTES + 8192:
                    self._too_large = True
                    self.send_400_response("")

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._header_bytes = self._header_count = 0
            self._in_headers = True
            self._raw_bytes = 0

        def on_headers_complete(self) -> None:
            self._in_headers = False
            self._on_headers_complete()

        def on_url(self, url: bytes) -> None:
            self._count(len(url), lines=0)
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count(len(name) + len(value) + 4, lines=1)
            super().on_header(name, value)

        def _count(self, size: int, lines: int) -> None:
            self._header_bytes += size
            self._header_count += lines
            if self._header_bytes > MAX_HEADER_BYTES or self._header_count > MAX_HEADER_LINES:
                self._too_large = True
                # Raised inside a parser callback: uvicorn turns it into send_400_response().
                raise ValueError("header section too large")

        def send_400_response(self, msg: str) -> None:
            if not self._too_large:
                super().send_400_response(msg)
                return
            body = (f"ERR_HEADERS_TOO_LARGE: the request header section exceeds "
                    f"{MAX_HEADER_BYTES} bytes or {MAX_HEADER_LINES} fields\n").encode()
            self.transport.write(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                b"content-type: text/plain; charset=utf-8\r\n"
                b"content-length: " + str(len(body)).encode() + b"\r\n"
                b"connection: close\r\n\r\n" + body)
            self.transport.close()

        def _on_headers_complete(self) -> None:
            before = self.cycle
            super().on_headers_complete()
            cycle = self.cycle
            if cycle is not None and cycle is not before:
                _attach(cycle.scope, _httptools_sender(cycle))
                sendfile.attach(cycle.scope, cycle)
                # An instance attribute: run_asgi() looks receive up when the task starts.
                setattr(cycle, "receive", _keeping_received_body(cycle))  # noqa: B010

    InformationalProtocol = InformationalHttpToolsProtocol

# `uvicorn.Config(http=PROTOCOL_PATH)`: a string survives --workers' process spawn.
PROTOCOL_PATH = "tusd_py.http.informational:InformationalProtocol"
