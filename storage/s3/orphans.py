"""The orphan sweep: multipart uploads that no live upload uses are aborted."""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import anyio

from ..base import Locker, StateStore, UploadNotFound
from .keys import part_key, upload_id_of
from .objects import Bucket
from .part_object import PartObjects

if TYPE_CHECKING:
    from .data import S3DataStore

log = logging.getLogger(__name__)

ORPHAN_INTERVAL = 3600.0
ORPHAN_GRACE = 6 * 3600.0  # far longer than any gap between a part and the next sync


async def sweep_orphans(bucket: Bucket, part_objects: PartObjects, state: StateStore,
                        local_mpu: Callable[[str], str | None], *,
                        older_than: float) -> int:
    """Abort multipart uploads that no live upload uses; returns how many.

    An upload's multipart upload is created with its first part and listed in its
    manifest by the next sync, seconds later: one older than `older_than` that no
    manifest lists (nor this instance's view, `local_mpu`) was left by a crash, a
    cut, or an upload whose record is gone.
    """
    prefix = bucket.conn.options.prefix
    now = datetime.now(UTC)
    aborted = 0
    for key, mpu, initiated in await bucket.list_multipart_uploads(prefix):
        upload_id = upload_id_of(prefix, key)
        if upload_id is None:
            continue  # not an upload's key (a final object's multipart copy, say)
        if (now - initiated).total_seconds() < older_than:
            continue
        try:
            live = not (await state.get(upload_id)).state.gone
        except UploadNotFound:
            live = False
        if live:
            if local_mpu(upload_id) == mpu:
                continue
            manifest = await part_objects.get_manifest(upload_id)
            if manifest is not None and manifest.mpu == mpu:
                continue
        else:
            await bucket.delete(part_key(prefix, upload_id))
        await bucket.abort(key, mpu)
        aborted += 1
        log.info("s3: aborted orphan multipart upload %s of %s", mpu, key)
    return aborted


def orphan_sweeper(data: S3DataStore, state: StateStore, locker: Locker, *,
                   interval: float = ORPHAN_INTERVAL,
                   grace: float = ORPHAN_GRACE) -> Callable[[], Coroutine[Any, Any, None]]:
    """A service: one elected instance at a time aborts orphaned multipart uploads."""

    async def run() -> None:
        while True:
            await anyio.sleep(interval)
            try:
                if await locker.leader("s3-orphans", ttl=interval * 3):
                    await data.sweep_orphans(state, older_than=grace)
            except Exception:
                log.exception("s3: orphan sweep failed")

    return run
