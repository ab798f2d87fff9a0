"""The embedded record store's files: how records are created and what a crash can leave."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from storage import FileStateStore, StorageError, UploadInfo, UploadState, new_upload_id

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.parametrize("shared", [False, True])
async def test_a_new_record_is_written_in_place_without_a_temporary_file(
    tmp_path: Path, shared: bool,
) -> None:
    store = FileStateStore(tmp_path, shared=shared)
    info = UploadInfo(id=new_upload_id(), size=5, created_at=time.time())
    await store.create(info)
    names = os.listdir(store.dir)
    assert f"{info.id}.info" in names
    assert not [n for n in names if n.endswith(".tmp")], names
    assert (await store.get(info.id)).size == 5


@pytest.mark.parametrize("shared", [False, True])
async def test_creating_an_existing_id_fails_and_keeps_the_record(
    tmp_path: Path, shared: bool,
) -> None:
    store = FileStateStore(tmp_path, shared=shared)
    info = UploadInfo(id=new_upload_id(), size=5, created_at=time.time())
    await store.create(info)
    before = (store.dir / f"{info.id}.info").read_bytes()
    with pytest.raises(StorageError):
        await store.create(info.evolve(size=99))
    assert (store.dir / f"{info.id}.info").read_bytes() == before
    assert (await store.get(info.id)).size == 5


async def test_a_torn_new_record_from_a_crash_is_skipped_by_scans(tmp_path: Path) -> None:
    """A crash while a record is first written can leave it torn; its upload was never
    acknowledged (201 comes after the record is durable), so it must simply not count."""
    store = FileStateStore(tmp_path)
    good = UploadInfo(id=new_upload_id(), size=3, offset=3, state=UploadState.COMPLETED,
                      created_at=time.time())
    await store.create(good)
    torn_id = new_upload_id()
    whole = (store.dir / f"{good.id}.info").read_bytes().replace(good.id.encode(),
                                                                 torn_id.encode())
    (store.dir / f"{torn_id}.info").write_bytes(whole[: len(whole) // 2])
    (store.dir / f"{new_upload_id()}.info").write_bytes(b"")
    fresh = FileStateStore(tmp_path)  # as after a restart
    found = await fresh.scan()
    assert [i.id for i in found] == [good.id]
    with pytest.raises(StorageError):
        await fresh.get(torn_id)
