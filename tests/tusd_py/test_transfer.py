"""The body pump (tusd_py/service/transfer.py) driven directly, with a real embedded backend.

These tests pin down event-loop interleavings that a socket test hits only now and then
(the one below corrupted about one resumed upload in 25 in the benchmark's RST scenario).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import anyio
import pytest

from storage import FileDataStore, UploadInfo, embedded_backend
from tusd_py.config import Settings
from tusd_py.service import Body, Outcome, UploadService
from tusd_py.service.buffers import WriteBuffers
from tusd_py.service.transfer import pump_body

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the test below arranges asyncio's ready queue


class GatedData(FileDataStore):
    """Writes really happen, but the first write's return waits for a gate."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, fsync=False)
        self.gate = anyio.Event()
        self.on_gate_open: list[object] = []
        self.writes: list[tuple[int, bytes]] = []

    async def write(self, upload_id: str, offset: int, chunks: Sequence[bytes]) -> int:
        n = await super().write(upload_id, offset, chunks)
        self.writes.append((offset, b"".join(chunks)))
        if len(self.writes) == 1:
            await self.gate.wait()
            for callback in self.on_gate_open:
                asyncio.get_running_loop().call_soon(callback)  # type: ignore[arg-type]
        return n


async def test_a_release_while_a_batch_is_handed_over_never_writes_it_twice(
    tmp_path: Path,
) -> None:
    """anyio's send() can be cancelled after the writer took the item (the cancel lands
    first, the writer runs before the sender wakes up). The pump once kept such a batch
    and sent it again, so it was written twice and every later byte shifted: the stored
    upload differed from what the client sent although its length was right."""
    settings = Settings(upload_dir=tmp_path, checkpoint_bytes=1 << 30, checkpoint_seconds=1e9)
    data = GatedData(tmp_path)
    backend = dataclasses.replace(embedded_backend(tmp_path, fsync=False), data=data)
    ctx = UploadService(settings, backend, final=None,  # type: ignore[arg-type]
                        buffers=WriteBuffers(per_transfer=4))
    info = UploadInfo(id="race", size=64)
    await backend.state.create(info)
    await data.create(info.id)
    body = [bytes([65 + i]) * 4 for i in range(8)]  # AAAA BBBB CCCC ...
    release = anyio.CancelScope()
    sent: list[bytes] = []
    handing_over = anyio.Event()

    async def stream() -> AsyncIterator[bytes]:
        for chunk in body:
            sent.append(chunk)
            if len(sent) == 2:
                handing_over.set()
            yield chunk
        await anyio.sleep_forever()

    # Batch 1 is being written (gated) and the pump blocks handing over batch 2. Opening
    # the gate lets the writer reach its next receive(); the release request is queued
    # just before the writer takes batch 2.
    data.on_gate_open.append(release.cancel)

    async def open_gate_when_blocked() -> None:
        await handing_over.wait()
        await anyio.wait_all_tasks_blocked()  # the pump is now blocked in the hand-over
        data.gate.set()

    async with (backend.locker.hold(info.id, on_release_requested=release.cancel,
                                    timeout=5) as lease,
                anyio.create_task_group() as tg):
        tg.start_soon(open_gate_when_blocked)
        result = await pump_body(ctx, Body(stream(), None), info, lease, release, limit=64)

    assert result.outcome is Outcome.RELEASED
    batches = [batch for _, batch in data.writes]
    assert len(batches) == len(set(batches)), f"a batch was written twice: {data.writes}"
    stored = (tmp_path / "uploads" / info.id).read_bytes()
    assert result.info.offset == len(stored)
    assert stored == b"".join(sent)[: len(stored)], "stored bytes are not the body's prefix"
    assert result.info.offset >= 8  # batches 1-2 were received before the release


async def test_a_transfer_asked_to_release_keeps_reading_what_is_in_flight(
    tmp_path: Path,
) -> None:
    """A dropped connection's last bytes are still in the socket when the resuming client's
    HEAD asks for the lock: they are read and stored before the lock is let go, so the
    resume offset includes them. A body that then stalls is given up at once."""
    settings = Settings(upload_dir=tmp_path, checkpoint_bytes=1 << 30, checkpoint_seconds=1e9,
                        network_timeout=60)
    backend = embedded_backend(tmp_path, fsync=False)
    ctx = UploadService(settings, backend, final=None)  # type: ignore[arg-type]
    info = UploadInfo(id="drain", size=1 << 20)
    await backend.state.create(info)
    await backend.data.create(info.id)
    asked = anyio.Event()
    sent: list[bytes] = []

    async def stream() -> AsyncIterator[bytes]:
        for i in range(10):  # arrives before the release request
            sent.append(bytes([i]) * 1000)
            yield sent[-1]
        asked.set()
        for i in range(10, 20):  # still in flight after it: must be kept
            await anyio.sleep(0.001)  # the behaviour: bytes still arriving from the network
            sent.append(bytes([i]) * 1000)
            yield sent[-1]
        await anyio.sleep_forever()  # then the body stalls

    async def request_release() -> None:
        await asked.wait()
        async with ctx.hold(info.id):  # another request wants the upload (a HEAD)
            pass

    async with anyio.create_task_group() as tg:
        tg.start_soon(request_release)
        async with ctx.hold(info.id) as hold:
            started = anyio.current_time()
            result = await pump_body(ctx, Body(stream(), None), info, hold.lease, hold.release,
                                     limit=1 << 20)
            stopped = anyio.current_time() - started

    assert result.outcome is Outcome.RELEASED
    assert result.info.offset == 20_000, "bytes in flight at the release request were dropped"
    assert (tmp_path / "uploads" / info.id).read_bytes() == b"".join(sent)
    assert stopped < 1.0  # a stalled body does not hold the lock for long


def test_checkpoints_stretch_with_the_number_of_transfers() -> None:
    """A few transfers checkpoint every 2 s; thousands of slow ones share a budget of
    CHECKPOINTS_PER_SECOND record writes, never more than MAX_CHECKPOINT_SECONDS apart."""
    from tusd_py.service.transfer import (
        CHECKPOINTS_PER_SECOND,
        MAX_CHECKPOINT_SECONDS,
        checkpoint_interval,
    )

    assert checkpoint_interval(2.0, 1) == 2.0
    assert checkpoint_interval(2.0, 500) == 2.0
    assert checkpoint_interval(2.0, 1000) == 1000 / CHECKPOINTS_PER_SECOND
    assert checkpoint_interval(2.0, 3000) == min(3000 / CHECKPOINTS_PER_SECOND,
                                                 MAX_CHECKPOINT_SECONDS)
    assert checkpoint_interval(2.0, 100_000) == MAX_CHECKPOINT_SECONDS
    assert checkpoint_interval(30.0, 100_000) == 30.0  # a longer configured base wins
