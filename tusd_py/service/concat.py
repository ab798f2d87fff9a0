"""Concatenation's rules on partial uploads (the service runs the concatenation itself)."""

from __future__ import annotations

from collections.abc import Sequence

from storage import StateStore, UploadInfo, UploadNotFound

from ..errors import TusError


async def load_partials(state: StateStore, ids: Sequence[str]) -> list[UploadInfo]:
    out = []
    for upload_id in ids:
        try:
            info = await state.get(upload_id)
        except UploadNotFound:
            raise TusError.not_found(f"partial upload {upload_id}") from None
        if info.state.gone:
            raise TusError.gone(str(info.state), f"partial upload {upload_id}")
        if not info.partial:
            raise TusError.not_partial(upload_id)
        out.append(info)
    return out


def known_total(partials: Sequence[UploadInfo]) -> int | None:
    sizes = [p.size for p in partials]
    return None if any(s is None for s in sizes) else sum(s for s in sizes if s is not None)
