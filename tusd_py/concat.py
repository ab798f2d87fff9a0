"""Concatenation: finals built from partial uploads, including unfinished ones."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from storage import UploadInfo, UploadNotFound, UploadState, is_valid_upload_id

from . import logs
from .errors import TusError

if TYPE_CHECKING:
    from .context import TusContext


def part_ids(base_path: str, urls: Sequence[str]) -> list[str]:
    """Upload ids from Upload-Concat URLs (absolute or relative, under our base path)."""
    ids = []
    for url in urls:
        try:
            path = urlsplit(url).path
        except ValueError:  # e.g. 'http://[' (an unterminated IPv6 host)
            raise TusError.invalid_concat(url) from None
        if not path.startswith(base_path):
            raise TusError.invalid_concat(url)
        upload_id = path[len(base_path):]
        if not is_valid_upload_id(upload_id):
            raise TusError.invalid_concat(url)
        ids.append(upload_id)
    return ids


async def load_partials(ctx: TusContext, ids: Sequence[str]) -> list[UploadInfo]:
    out = []
    for upload_id in ids:
        try:
            info = await ctx.backend.state.get(upload_id)
        except UploadNotFound:
            raise TusError(404, "ERR_UPLOAD_NOT_FOUND",
                           f"partial upload {upload_id} not found") from None
        if info.state.gone:
            raise TusError(410, "ERR_UPLOAD_GONE", f"partial upload {upload_id} is {info.state}")
        if not info.partial:
            raise TusError.not_partial(upload_id)
        out.append(info)
    return out


def known_total(partials: Sequence[UploadInfo]) -> int | None:
    sizes = [p.size for p in partials]
    return None if any(s is None for s in sizes) else sum(s for s in sizes if s is not None)


async def try_finish_final(ctx: TusContext, final: UploadInfo) -> UploadInfo:
    """Concatenate when every partial is complete; otherwise leave the final waiting."""
    partials = await load_partials(ctx, final.parts)
    if not all(p.state.finished for p in partials):
        return final
    total = known_total(partials)
    max_size = ctx.settings.max_size
    if max_size and total is not None and total > max_size:
        # Partials whose lengths were deferred can add up past the limit only now.
        raise TusError.too_large(f"concatenated length {total} exceeds Tus-Max-Size {max_size}")
    backend = ctx.backend
    lock = backend.locker.hold(final.id, on_release_requested=lambda: None,
                               timeout=ctx.settings.lock_timeout)
    async with lock as lease:
        final = await backend.state.get(final.id)
        if final.state is not UploadState.UPLOADING:
            return final  # someone else finished it meanwhile
        total = await backend.data.concat(final.id, final.parts)
        if final.size is None:
            final = await backend.state.declare_length(final.id, epoch=lease.epoch, size=total)
        if final.state is UploadState.UPLOADING:
            final = await backend.state.commit(final.id, epoch=lease.epoch,
                                               expected=final.offset, new=total)
    logs.event("upload.concatenated", final.id, size=total, parts=len(final.parts))
    await ctx.completed(final)
    return final


async def finish_waiting_finals(ctx: TusContext, partial_id: str) -> None:
    """A partial completed: finish the finals that were created before it was done."""
    waiting = await ctx.backend.state.scan(frozenset({UploadState.UPLOADING}))
    for final in waiting:
        if partial_id in final.parts:
            try:
                await try_finish_final(ctx, final)
            except TusError as exc:
                logs.event("upload.concat_failed", final.id, level=40, error=exc.message)
            except OSError as exc:  # e.g. a full volume: the final waits, the partial is done
                logs.event("upload.concat_failed", final.id, level=40, error=str(exc))
