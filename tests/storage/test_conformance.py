"""One suite every storage backend must pass (tus-node-server's stores.ts pattern)."""

from __future__ import annotations

import time

import anyio
import pytest

from storage import (
    Backend,
    Fenced,
    InvalidTransition,
    LockTimeout,
    OffsetMismatch,
    UploadInfo,
    UploadNotFound,
    UploadState,
    new_upload_id,
)

pytestmark = pytest.mark.anyio


async def make(backend: Backend, size: int | None = 10, **fields: object) -> UploadInfo:
    info = UploadInfo(id=new_upload_id(), size=size, created_at=time.time(), **fields)  # type: ignore[arg-type]
    await backend.data.create(info.id)
    await backend.state.create(info)
    return info


async def commit(backend: Backend, upload_id: str, expected: int, new: int) -> UploadInfo:
    async with backend.locker.hold(upload_id, on_release_requested=lambda: None,
                                   timeout=2) as lease:
        return await backend.state.commit(upload_id, epoch=lease.epoch, expected=expected,
                                          new=new)


async def declare(backend: Backend, upload_id: str, size: int) -> UploadInfo:
    async with backend.locker.hold(upload_id, on_release_requested=lambda: None,
                                   timeout=2) as lease:
        return await backend.state.declare_length(upload_id, epoch=lease.epoch, size=size)


async def read_all(backend: Backend, upload_id: str, start: int, end: int) -> bytes:
    return b"".join([chunk async for chunk in backend.data.read(upload_id, start, end)])


async def test_create_and_get_roundtrip_keeps_metadata(backend: Backend) -> None:
    meta = {"filename": "c8WCb8WEY2UucGRm", "empty": None}
    info = await make(backend, size=None, metadata=meta, partial=True)
    got = await backend.state.get(info.id)
    assert got.size is None and got.offset == 0 and got.partial
    assert dict(got.metadata) == meta
    assert got.state is UploadState.UPLOADING


async def test_unknown_upload_is_not_found(backend: Backend) -> None:
    with pytest.raises(UploadNotFound):
        await backend.state.get(new_upload_id())
    with pytest.raises(UploadNotFound):
        await backend.state.get("../../etc/passwd")


async def test_write_sync_commit_and_read_back(backend: Backend) -> None:
    info = await make(backend)
    assert await backend.data.write(info.id, 0, [b"hel", b"lo"]) == 5
    await backend.data.sync(info.id)
    after = await commit(backend, info.id, 0, 5)
    assert after.offset == 5 and after.state is UploadState.UPLOADING
    assert await backend.data.size(info.id) == 5
    assert await backend.data.write(info.id, 5, [b" world"]) == 6
    await backend.data.sync(info.id)
    await commit(backend, info.id, 5, 10)
    # read() is valid once finish() assembled the committed bytes (a no-op for files).
    await backend.data.finish(info.id, 11)
    await backend.data.finish(info.id, 11)  # idempotent
    assert await read_all(backend, info.id, 0, 11) == b"hello world"
    assert await read_all(backend, info.id, 1, 3) == b"el"
    assert await backend.data.size(info.id) == 11


async def test_create_with_content_stores_a_whole_small_upload(backend: Backend) -> None:
    body = bytes(range(256)) * 300  # 76,800 bytes: more than one S3 checkpoint tail
    info = UploadInfo(id=new_upload_id(), size=len(body), offset=len(body),
                      state=UploadState.COMPLETED, created_at=time.time())
    await backend.data.create(info.id, body)
    await backend.state.create(info)
    assert await backend.data.size(info.id) == len(body)
    await backend.data.finish(info.id, len(body))
    assert await read_all(backend, info.id, 0, len(body)) == body
    got = await backend.state.get(info.id)
    assert got.offset == len(body) and got.state is UploadState.COMPLETED


async def test_zero_length_upload_finishes_empty(backend: Backend) -> None:
    info = await make(backend, size=0)
    await commit(backend, info.id, 0, 0)
    await backend.data.finish(info.id, 0)
    assert await read_all(backend, info.id, 0, 0) == b""
    assert await backend.data.size(info.id) == 0


async def test_many_tiny_synced_writes(backend: Backend) -> None:
    info = await make(backend, size=300)
    data = bytes(range(256)) + b"x" * 44
    offset = 0
    for step in (1, 1, 100, 1, 97, 100):
        await backend.data.truncate(info.id, offset)  # what every PATCH starts with
        await backend.data.write(info.id, offset, [data[offset:offset + step]])
        await backend.data.sync(info.id)
        await commit(backend, info.id, offset, offset + step)
        offset += step
    await backend.data.finish(info.id, 300)
    assert await read_all(backend, info.id, 0, 300) == data


async def test_commit_to_size_completes_atomically(backend: Backend) -> None:
    info = await make(backend, size=4)
    await backend.data.write(info.id, 0, [b"abcd"])
    done = await commit(backend, info.id, 0, 4)
    assert done.state is UploadState.COMPLETED and done.expires_at is None
    pending = await backend.state.scan(frozenset({UploadState.COMPLETED}))
    assert info.id in {p.id for p in pending}
    with pytest.raises(InvalidTransition):
        await commit(backend, info.id, 4, 4)


async def test_commit_with_wrong_expected_offset_changes_nothing(backend: Backend) -> None:
    info = await make(backend)
    await commit(backend, info.id, 0, 3)
    with pytest.raises(OffsetMismatch) as caught:
        await commit(backend, info.id, 0, 6)
    assert caught.value.current == 3
    assert (await backend.state.get(info.id)).offset == 3


async def test_stale_epoch_is_fenced(backend: Backend) -> None:
    info = await make(backend)
    async with backend.locker.hold(info.id, on_release_requested=lambda: None,
                                   timeout=2) as old:
        pass
    async with backend.locker.hold(info.id, on_release_requested=lambda: None,
                                   timeout=2) as new:
        assert new.epoch > old.epoch
        await backend.state.commit(info.id, epoch=new.epoch, expected=0, new=2)
    with pytest.raises(Fenced):
        await backend.state.commit(info.id, epoch=old.epoch, expected=2, new=3)
    assert (await backend.state.get(info.id)).offset == 2


async def test_truncate_drops_uncommitted_tail(backend: Backend) -> None:
    info = await make(backend)
    await backend.data.write(info.id, 0, [b"0123456789"])
    await commit(backend, info.id, 0, 4)
    await backend.data.truncate(info.id, 4)
    assert await backend.data.size(info.id) == 4
    await backend.data.write(info.id, 4, [b"XYZ"])
    await backend.data.sync(info.id)
    await backend.data.finish(info.id, 7)
    assert await read_all(backend, info.id, 0, 7) == b"0123XYZ"


async def test_declare_length_once(backend: Backend) -> None:
    info = await make(backend, size=None)
    await commit(backend, info.id, 0, 3)
    with pytest.raises(InvalidTransition):
        await declare(backend, info.id, 2)
    got = await declare(backend, info.id, 8)
    assert got.size == 8
    with pytest.raises(InvalidTransition):
        await declare(backend, info.id, 9)


async def test_declare_length_equal_to_offset_completes(backend: Backend) -> None:
    info = await make(backend, size=None)
    await commit(backend, info.id, 0, 3)
    got = await declare(backend, info.id, 3)
    assert got.state is UploadState.COMPLETED


async def test_transition_checks_current_state(backend: Backend) -> None:
    info = await make(backend)
    with pytest.raises(InvalidTransition):
        await backend.state.transition(info.id, UploadState.PROCESSED,
                                       expect=frozenset({UploadState.PROCESSING}))
    got = await backend.state.transition(info.id, UploadState.TERMINATED,
                                         expect=frozenset({UploadState.UPLOADING}),
                                         error="bye")
    assert got.state is UploadState.TERMINATED and got.error == "bye"
    assert (await backend.state.get(info.id)).state.gone


async def test_expired_lists_only_unfinished_past_deadline(backend: Backend) -> None:
    now = time.time()
    old = await make(backend, expires_at=now - 5)
    fresh = await make(backend, expires_at=now + 500)
    done = await make(backend, size=0, expires_at=now - 5)
    await commit(backend, done.id, 0, 0)
    expired = {i.id for i in await backend.state.expired(now)}
    assert old.id in expired
    assert fresh.id not in expired and done.id not in expired


async def test_concat_joins_sources_in_order(backend: Backend) -> None:
    a, b, final = await make(backend, size=3), await make(backend, size=2), await make(backend)
    await backend.data.write(a.id, 0, [b"abc"])
    await backend.data.write(b.id, 0, [b"de"])
    assert await backend.data.concat(final.id, [a.id, b.id, a.id]) == 8
    assert await read_all(backend, final.id, 0, 8) == b"abcdeabc"


async def test_delete_and_purge(backend: Backend) -> None:
    info = await make(backend)
    await backend.data.delete(info.id)
    with pytest.raises(UploadNotFound):
        await backend.data.size(info.id)
    await backend.state.purge(info.id)
    with pytest.raises(UploadNotFound):
        await backend.state.get(info.id)


async def test_lock_release_request_hands_over(backend: Backend) -> None:
    upload_id = new_upload_id()
    released = anyio.Event()
    held = anyio.Event()
    order: list[str] = []

    async def holder() -> None:
        stop = anyio.Event()
        async with backend.locker.hold(upload_id, on_release_requested=stop.set,
                                       timeout=1) as lease:
            order.append(f"holder:{lease.epoch}")
            held.set()
            await stop.wait()
            order.append("holder:released")
        released.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(holder)
        await held.wait()
        with anyio.fail_after(2):
            async with backend.locker.hold(upload_id, on_release_requested=lambda: None,
                                           timeout=2) as lease:
                order.append(f"newcomer:{lease.epoch}")
    assert released.is_set()
    assert order[1] == "holder:released" and order[2].startswith("newcomer:")
    first, second = int(order[0].split(":")[1]), int(order[2].split(":")[1])
    assert second > first  # epochs grow: they are fencing tokens


async def test_lock_timeout_when_holder_does_not_let_go(backend: Backend) -> None:
    upload_id = new_upload_id()
    async with backend.locker.hold(upload_id, on_release_requested=lambda: None, timeout=1):
        with pytest.raises(LockTimeout):
            async with backend.locker.hold(upload_id, on_release_requested=lambda: None,
                                           timeout=0.2):
                pass
    async with backend.locker.hold(upload_id, on_release_requested=lambda: None, timeout=0.2):
        pass  # free again after the holder left


async def test_queue_recovers_completed_uploads(backend: Backend) -> None:
    info = await make(backend, size=0)
    await commit(backend, info.id, 0, 0)
    partial = await make(backend, size=0, partial=True)
    await commit(backend, partial.id, 0, 0)
    assert await backend.queue.recover(backend.state) == 1
    with anyio.fail_after(1):
        job = await backend.queue.receive()
    assert job.upload_id == info.id
    await backend.queue.ack(job)


async def test_queue_retry_redelivers_after_delay(backend: Backend) -> None:
    info = await make(backend, size=0)
    await commit(backend, info.id, 0, 0)
    await backend.queue.notify(info.id)
    with anyio.fail_after(2):
        job = await backend.queue.receive()
    started = anyio.current_time()
    await backend.queue.retry(job, 0.3)
    with anyio.fail_after(5):
        again = await backend.queue.receive()
    assert again.upload_id == info.id
    assert anyio.current_time() - started >= 0.25
    await backend.queue.ack(again)
