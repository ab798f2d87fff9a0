"""The body pump: request stream -> coalesced writes -> checkpoint commits.

Bytes are always durable before the offset says so: every checkpoint is
DataStore.sync() followed by StateStore.commit(). tus-js-client sends a whole
file in one PATCH by default, so without checkpoints a drop at 9.9 GB of
10 GB would lose everything.

Receiving, writing and flushing overlap: the request task fills a buffer while a
writer task writes the previous one, and a checkpoint's fsync + commit runs beside
the writes that follow it (it commits only the offset it fsynced). The channel
between them is a rendezvous: a buffer fills while the one before it is written, so a
transfer holds two write buffers, which shrink as more transfers run at once
(tusd_py/service/buffers.py). A third buffer queued in between measured no faster and cost a
third more memory.
"""

from __future__ import annotations

import asyncio
import errno
import hmac
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from storage import Backend, Fenced, Lease, StorageUnavailable, UploadInfo

from ..config import Settings
from ..ops import logs
from .buffers import WriteBuffers
from .checksums import Hasher, new_hasher
from .outcomes import AppendResult, Body, Outcome

# Checkpoints (fsync + a record write each) a process aims at per second when many
# transfers run: with thousands of slow mobile uploads, a fixed 2 s interval made those
# record rewrites most of the worker threads' time. The interval stretches with the
# number of transfers, up to MAX_CHECKPOINT_SECONDS: a crash (not a disconnect, which
# always saves what arrived) then loses at most that many seconds of a client's bytes.
CHECKPOINTS_PER_SECOND = 250
MAX_CHECKPOINT_SECONDS = 15.0
# A transfer asked to release its upload stops once its body pauses this long.
DRAIN_IDLE_SECONDS = 0.02
# Writes may run this many checkpoint intervals ahead of a flush still in progress.
MAX_UNCOMMITTED_CHECKPOINTS = 4


class Host(Protocol):
    """What a transfer needs of the upload service."""

    settings: Settings
    backend: Backend
    buffers: WriteBuffers

    def next_expiry(self) -> float | None: ...


def checkpoint_interval(base: float, transfers: int) -> float:
    """Seconds between time-based checkpoints of one transfer while `transfers` run."""
    return max(base, min(transfers / CHECKPOINTS_PER_SECOND, MAX_CHECKPOINT_SECONDS))


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


@dataclass
class _Writer:
    """Writes batches at the upload's offset and commits checkpoints."""

    ctx: Host
    info: UploadInfo  # last committed record
    lease: Lease
    stop: Callable[[], None]  # ends the receiving side (the release scope)
    checkpoints: bool  # False while a checksum still has to be verified
    written: int = 0
    fenced: bool = False  # a newer lock holder exists: write and commit nothing more
    failure: StorageUnavailable | None = None
    # A write, sync or commit that failed on the disk (ENOSPC, EIO...): stop, commit
    # nothing unsynced, keep only what is durable (see salvage()).
    io_error: OSError | None = None
    sync_failed: bool = False  # after a failed fsync, no byte since the last commit is trusted
    started: float = field(default_factory=time.monotonic)
    last_checkpoint: float = field(default_factory=time.monotonic)
    # A checkpoint runs beside the writes that follow it (the disk flushes while the
    # network fills the page cache); this is set while one is in flight.
    _flushing: anyio.Event | None = None
    _tasks: TaskGroup | None = None

    def __post_init__(self) -> None:
        self.start = self.written = self.info.offset

    def _stopped(self) -> bool:
        return bool(self.fenced or self.failure or self.io_error)

    def _io_failed(self, exc: OSError, during: str) -> None:
        self.io_error = exc
        logs.event("upload.storage_full" if is_disk_full(exc) else "upload.storage_failed",
                   self.info.id, level=logging.ERROR, during=during,
                   errno=errno.errorcode.get(exc.errno or 0, exc.errno), error=str(exc),
                   committed=self.info.offset, uncommitted=self.written - self.info.offset)
        self.stop()

    async def write(self, batch: list[bytes]) -> None:
        if self._stopped() or self.lease.lost.is_set():
            # Never write after losing the lease: the new holder may own those bytes.
            self.fenced = self.fenced or self.lease.lost.is_set()
            return
        try:
            # A failed write may leave part of the batch past self.written: salvage() cuts it.
            self.written += await self.ctx.backend.data.write(self.info.id, self.written, batch)
        except OSError as exc:
            self._io_failed(exc, "write")
            return
        settings = self.ctx.settings
        uncommitted = self.written - self.info.offset
        if self.checkpoints and (
            uncommitted >= settings.checkpoint_bytes
            or time.monotonic() - self.last_checkpoint
            >= checkpoint_interval(settings.checkpoint_seconds, self.ctx.buffers.active)
        ):
            if self._flushing is not None:
                if uncommitted >= MAX_UNCOMMITTED_CHECKPOINTS * settings.checkpoint_bytes:
                    await self._flushing.wait()  # the disk is behind: let it catch up
                return
            if self._tasks is None:
                await self.checkpoint()
                return
            self._flushing = anyio.Event()
            self._tasks.start_soon(self._background_checkpoint, self._flushing)

    async def _background_checkpoint(self, done: anyio.Event) -> None:
        try:
            await self.checkpoint()
        finally:
            self._flushing = None
            done.set()

    async def run(self, batches: MemoryObjectReceiveStream[list[bytes]]) -> None:
        # The task group outlives the loop: a checkpoint still flushing is awaited here.
        async with anyio.create_task_group() as self._tasks, batches:
            async for batch in batches:
                await self.write(batch)
        self._tasks = None

    async def checkpoint(self) -> None:
        committed, target = self.info.offset, self.written
        if target == committed or self._stopped():
            return
        backend = self.ctx.backend
        # A commit cancelled half-way could be applied without us knowing it.
        with anyio.CancelScope(shield=True):
            try:
                await backend.data.sync(self.info.id)
            except StorageUnavailable as exc:  # an object store that cannot be reached
                logs.event("upload.sync_failed", self.info.id, level=logging.ERROR,
                           error=str(exc), uncommitted=self.written - committed)
                self.failure = exc
                self.stop()
                return
            except OSError as exc:
                # The kernel may already have dropped the dirty pages: a second fsync
                # could succeed without them, so nothing written since `committed` counts.
                self.sync_failed = True
                self._io_failed(exc, "sync")
                return
            try:
                # `target`, not self.written: writes made while fsync ran may not be on disk.
                self.info = await backend.state.commit(
                    self.info.id, epoch=self.lease.epoch, expected=committed,
                    new=target, expires_at=self.ctx.next_expiry(),
                )
            except Fenced:
                logs.event("upload.fenced", self.info.id, level=logging.WARNING,
                           epoch=self.lease.epoch, uncommitted=self.written - committed)
                self.fenced = True
                self.stop()
                return
            except StorageUnavailable as exc:
                logs.event("upload.commit_failed", self.info.id, level=logging.ERROR,
                           error=str(exc), uncommitted=self.written - committed)
                self.failure = exc
                self.stop()
                return
            except OSError as exc:
                # The embedded store's record could not be written (a full disk): it still
                # holds the old offset, which is behind the synced bytes, never ahead.
                self._io_failed(exc, "commit")
                return
        self.last_checkpoint = time.monotonic()
        elapsed = max(time.monotonic() - self.started, 1e-6)
        logs.event("upload.checkpoint", self.info.id, offset=target,
                   mb_per_s=round((self.written - self.start) / elapsed / 1e6, 1))

    async def _still_holder(self) -> bool:
        """Before cutting the file back: is this transfer still the upload's holder?"""
        if self.fenced or self.failure or self.lease.lost.is_set():
            return False
        try:
            return await self.ctx.backend.locker.confirm(self.lease)
        except StorageUnavailable:
            return False  # cannot tell: leave the bytes alone

    async def salvage(self, *, keep_written: bool) -> None:
        """After an I/O error: commit what was fully written if it can be made durable
        (`keep_written`: the bytes need no checksum verification), then cut the file back
        to the committed offset, so the offset HEAD reports is exactly what is on disk.
        Cutting also gives the space of a half-written batch back to the volume."""
        if not await self._still_holder():
            return  # a newer holder may own the bytes past our offset: touch nothing
        data = self.ctx.backend.data
        failed, self.io_error = self.io_error, None
        try:
            if keep_written and not self.sync_failed and self.written > self.info.offset:
                await data.truncate(self.info.id, self.written)
                await self.checkpoint()  # sync + commit; records a new io_error on failure
        except OSError as exc:
            logs.event("upload.salvage_failed", self.info.id, level=logging.ERROR,
                       error=str(exc))
        finally:
            self.io_error = self.io_error or failed
        if self.fenced or self.failure:
            return
        try:
            await data.truncate(self.info.id, self.info.offset)
        except OSError as exc:
            # Harmless: the next PATCH truncates to the committed offset before writing.
            logs.event("upload.truncate_failed", self.info.id, level=logging.ERROR,
                       error=str(exc), offset=self.info.offset)
        self.written = self.info.offset


def _loop_clock() -> Callable[[], float]:
    """anyio.current_time without its per-call backend lookup (this runs per chunk)."""
    try:
        return asyncio.get_running_loop().time
    except RuntimeError:  # not on asyncio
        return anyio.current_time


async def _hand_over(send: MemoryObjectSendStream[list[bytes]], batch: list[bytes]) -> None:
    """Give one batch to the writer, exactly once.

    Shielded: anyio's send() can be cancelled (a release request) after the writer has
    already taken the item, and a batch re-sent after that would be written a second
    time at a later offset. The wait is bounded by one write of the batch before it.
    """
    with anyio.CancelScope(shield=True):
        await send.send(batch)


async def pump_body(
    ctx: Host,
    body: Body,
    info: UploadInfo,
    lease: Lease,
    release: anyio.CancelScope,
    *,
    limit: int,
    checksum: tuple[str, bytes] | None = None,
) -> AppendResult:
    """Store the body at info.offset; never more than `limit` bytes.

    `release` is cancelled by the locker when another request wants this
    upload; what arrived until then is saved and the lock let go.
    """
    settings = ctx.settings
    hasher: Hasher | None = new_hasher(checksum[0]) if checksum else None
    writer = _Writer(ctx, info, lease, release.cancel, checkpoints=hasher is None)
    outcome = Outcome.DONE
    received = 0
    buffers = ctx.buffers
    stream = body.chunks
    try:
        send, receive = anyio.create_memory_object_stream[list[bytes]](0)
        async with anyio.create_task_group() as tg:
            tg.start_soon(writer.run, receive)
            async with send:
                pending: list[bytes] = []
                pending_len = 0
                # One scope whose deadline moves as chunks arrive: cheaper than a new
                # timeout scope per chunk, and time spent waiting for the disk (send) does
                # not count as network idleness. Moving it re-arms a timer, so it moves
                # at most every `slack` seconds: the timeout fires between
                # network_timeout - slack and network_timeout after the last chunk.
                idle = anyio.CancelScope()
                timeout = settings.network_timeout
                slack = min(1.0, timeout / 10)
                clock = _loop_clock()
                armed_at = -math.inf
                try:
                    with release, idle:
                        while True:
                            now = clock()
                            if release.deadline != math.inf:
                                # Asked to let go: keep what is already on its way, but a
                                # body that pauses is given up at once (DRAIN_IDLE_SECONDS).
                                idle.deadline = now + DRAIN_IDLE_SECONDS
                            elif now - armed_at >= slack:
                                idle.deadline, armed_at = now + timeout, now
                            chunk = await anext(stream, b"")
                            if not chunk:
                                break
                            if received + len(chunk) > limit:
                                chunk = chunk[: limit - received]
                                outcome = Outcome.TOO_LARGE
                            received += len(chunk)
                            if hasher is not None:
                                hasher.update(chunk)
                            pending.append(chunk)
                            pending_len += len(chunk)
                            if pending_len >= buffers.size:
                                idle.deadline, armed_at = math.inf, -math.inf
                                batch, pending, pending_len = pending, [], 0
                                await _hand_over(send, batch)
                            if outcome is Outcome.TOO_LARGE:
                                break
                    if release.cancelled_caught or (
                            idle.cancelled_caught and release.deadline != math.inf):
                        outcome = Outcome.RELEASED
                    elif idle.cancelled_caught:
                        outcome = Outcome.TIMED_OUT
                except body.disconnect:
                    outcome = Outcome.DISCONNECTED
                if pending and (hasher is None or outcome is Outcome.DONE):
                    await _hand_over(send, pending)
    finally:
        # Shielded: the bytes that arrived must be saved even while we are being cancelled.
        with (anyio.CancelScope(shield=True),
              anyio.move_on_after(settings.request_completion_timeout)):
            if writer.io_error is None:
                if hasher is None:
                    await writer.checkpoint()
                elif outcome is Outcome.DONE and checksum is not None:
                    if hmac.compare_digest(hasher.digest(), checksum[1]):
                        await writer.checkpoint()
                    else:
                        outcome = Outcome.CHECKSUM_MISMATCH
            if writer.io_error is not None:
                await writer.salvage(keep_written=hasher is None)
            if (hasher is not None and writer.info.offset == info.offset
                    and await writer._still_holder()):
                # Unverified or mismatching bytes are dropped; the offset never moved.
                await ctx.backend.data.truncate(info.id, info.offset)
    if writer.failure is not None:
        raise writer.failure  # the HTTP layer answers 503; the bytes are re-sent on resume
    if writer.fenced:
        outcome = Outcome.RELEASED
    elif writer.io_error is not None:
        outcome = (Outcome.STORAGE_FULL if is_disk_full(writer.io_error)
                   else Outcome.STORAGE_FAILED)
    return AppendResult(outcome, writer.info, writer.written - info.offset, writer.io_error)
