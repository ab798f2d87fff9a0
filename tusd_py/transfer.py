"""The body pump: request stream -> coalesced writes -> checkpoint commits.

Bytes are always durable before the offset says so: every checkpoint is
DataStore.sync() followed by StateStore.commit(). tus-js-client sends a whole
file in one PATCH by default, so without checkpoints a drop at 9.9 GB of
10 GB would lose everything.
"""

from __future__ import annotations

import enum
import hmac
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import anyio
from starlette.requests import ClientDisconnect

from storage import Lease, UploadInfo

from . import logs
from .context import TusContext
from .protocol import Hasher, new_hasher

# Bound on the final save after an interruption (tusd: request-completion-timeout).
FINAL_SAVE_SECONDS = 10.0


class Outcome(enum.Enum):
    DONE = "done"  # the body ended normally
    DISCONNECTED = "disconnected"
    TIMED_OUT = "timed_out"
    RELEASED = "released"  # a newer request asked for the lock
    TOO_LARGE = "too_large"
    CHECKSUM_MISMATCH = "checksum_mismatch"


@dataclass
class PumpResult:
    outcome: Outcome
    info: UploadInfo  # the record after the last commit
    received: int = 0


@dataclass
class _Progress:
    info: UploadInfo
    written: int  # bytes written to the data store (maybe not yet durable)
    pending: list[bytes] = field(default_factory=list)
    pending_len: int = 0
    last_checkpoint: float = field(default_factory=time.monotonic)


async def pump_body(
    ctx: TusContext,
    stream: AsyncIterator[bytes],
    info: UploadInfo,
    lease: Lease,
    release: anyio.CancelScope,
    *,
    limit: int,
    checksum: tuple[str, bytes] | None = None,
) -> PumpResult:
    """Store the body at info.offset; never more than `limit` bytes.

    `release` is cancelled by the locker when another request wants this
    upload; what arrived until then is saved and the lock let go.
    """
    settings = ctx.settings
    data, state = ctx.backend.data, ctx.backend.state
    start = info.offset
    progress = _Progress(info=info, written=start)
    hasher: Hasher | None = new_hasher(checksum[0]) if checksum else None
    outcome = Outcome.DONE
    started = time.monotonic()

    async def flush() -> None:
        if progress.pending:
            n = await data.write(info.id, progress.written, progress.pending)
            progress.written += n
            progress.pending = []
            progress.pending_len = 0

    async def checkpoint() -> None:
        await flush()
        committed = progress.info.offset
        if progress.written == committed:
            return
        # A commit cancelled half-way could be applied without us knowing it.
        with anyio.CancelScope(shield=True):
            await data.sync(info.id)
            progress.info = await state.commit(
                info.id, epoch=lease.epoch, expected=committed, new=progress.written,
                expires_at=ctx.next_expiry(),
            )
        progress.last_checkpoint = time.monotonic()
        logs.event("upload.checkpoint", info.id, offset=progress.written,
                   mb_per_s=_rate(progress.written - start, started))

    try:
        with release:
            received = 0
            while True:
                try:
                    with anyio.fail_after(settings.network_timeout):
                        chunk = await stream.__anext__()
                except StopAsyncIteration:
                    break
                if not chunk:
                    continue
                if received + len(chunk) > limit:
                    chunk = chunk[: limit - received]
                    outcome = Outcome.TOO_LARGE
                received += len(chunk)
                if hasher is not None:
                    hasher.update(chunk)
                progress.pending.append(chunk)
                progress.pending_len += len(chunk)
                if progress.pending_len >= settings.write_buffer_bytes:
                    await flush()
                # With a checksum nothing may be committed before the whole body is verified.
                if hasher is None and (
                    progress.written - progress.info.offset >= settings.checkpoint_bytes
                    or time.monotonic() - progress.last_checkpoint >= settings.checkpoint_seconds
                ):
                    await checkpoint()
                if outcome is Outcome.TOO_LARGE:
                    break
        if release.cancelled_caught:
            outcome = Outcome.RELEASED
    except ClientDisconnect:
        outcome = Outcome.DISCONNECTED
    except TimeoutError:
        outcome = Outcome.TIMED_OUT
    finally:
        # Shielded: the bytes that arrived must be saved even while we are being cancelled.
        with anyio.CancelScope(shield=True), anyio.move_on_after(FINAL_SAVE_SECONDS):
            if hasher is None:
                await checkpoint()
            elif outcome is Outcome.DONE and checksum is not None:
                if hmac.compare_digest(hasher.digest(), checksum[1]):
                    await checkpoint()
                else:
                    outcome = Outcome.CHECKSUM_MISMATCH
            if hasher is not None and progress.info.offset == start:
                # Unverified or mismatching bytes are dropped; the offset never moved.
                progress.pending = []
                await data.truncate(info.id, start)
    return PumpResult(outcome, progress.info, progress.written - start)


def _rate(nbytes: int, since: float) -> float:
    elapsed = max(time.monotonic() - since, 1e-6)
    return round(nbytes / elapsed / 1e6, 1)
