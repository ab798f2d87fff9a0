"""Downloads sent by the kernel: sendfile(2) from the upload's file to the client's socket.

An ASGI response body passes through the process as bytes objects (read, hand over,
copy into the transport's buffer). For a finished upload on local disk the kernel can
move the bytes itself, so a download costs no user-space buffer whatever its size or
the reader's speed. uvicorn has no such ASGI extension, so the httptools protocol of
tusd_py/http/informational.py offers one on plain-TCP connections:

    scope["extensions"]["tusd_py.sendfile"] = {"send": sendfile}
    await sendfile(fd, offset, count, idle_timeout)  # after http.response.start

The response's headers are flushed first (the transport's buffer must be empty so
that bytes keep their order), then the socket is written with os.sendfile() on a
duplicate of its descriptor, waiting for writability through the event loop. A reader
that takes nothing for `idle_timeout` seconds, or goes away, ends the connection.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import Any

EXTENSION = "tusd_py.sendfile"
SendFile = Callable[[int, int, int, float], Awaitable[int]]
# os.sendfile moves at most this much per call: a large download yields to the loop.
STEP = 8 << 20


async def _flush(cycle: Any) -> None:
    """Wait until the transport has written everything it buffered (the headers)."""
    transport = cycle.transport
    if not transport.get_write_buffer_size():
        return
    # FlowControl wakes drain() at resume_writing(), i.e. at the low-water mark: make that 0.
    transport.set_write_buffer_limits(high=1, low=0)
    try:
        while transport.get_write_buffer_size() and not cycle.disconnected:
            await cycle.flow.drain()
    finally:
        transport.set_write_buffer_limits()


async def _writable(loop: asyncio.AbstractEventLoop, fd: int, timeout: float) -> None:
    ready = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_writer(fd, wake)
    try:
        await asyncio.wait_for(ready, timeout)
    finally:
        loop.remove_writer(fd)


def sender(cycle: Any) -> SendFile:
    async def sendfile(fd: int, offset: int, count: int, idle_timeout: float) -> int:
        """Send `count` bytes of `fd` from `offset`; the number sent (short: the client
        went away or stopped reading, and the connection was closed)."""
        await _flush(cycle)
        sock = cycle.transport.get_extra_info("socket")
        if cycle.disconnected or sock is None:
            return 0
        loop = asyncio.get_running_loop()
        # Our own descriptor for the socket: the event loop watches it for us without
        # touching the transport's registration of the original.
        out = os.dup(sock.fileno())
        sent = 0
        try:
            while sent < count:
                try:
                    n = os.sendfile(out, fd, offset + sent, min(count - sent, STEP))
                except BlockingIOError:
                    await _writable(loop, out, idle_timeout)
                    continue
                if n == 0:
                    break  # the file is shorter than it should be
                sent += n
        except (OSError, TimeoutError):
            pass  # reset, broken pipe, or a reader that stopped reading
        finally:
            os.close(out)
            cycle.expected_content_length -= sent
            if sent < count:
                # The response cannot be completed: end the connection, as uvicorn does
                # when a client goes away, so nothing more is written to it.
                cycle.disconnected = True
                cycle.transport.close()
        return sent

    return sendfile


def attach(scope: Any, cycle: Any) -> None:
    """Offer the extension on plain TCP (TLS needs the bytes in user space)."""
    if cycle.transport.get_extra_info("sslcontext") is None:
        scope.setdefault("extensions", {})[EXTENSION] = {"send": sender(cycle)}
