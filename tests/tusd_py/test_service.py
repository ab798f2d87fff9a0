"""The upload service in-process: protocol-independent rules without sockets or sleeps.

The tus and IETF adapters are thin; what an upload does (creation, appends and their
outcomes, deferred lengths, concatenation, termination, hooks) is checked here once, with
a real embedded backend on disk and a recording hook transport.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import anyio
import pytest

from storage import FinalFiles, UploadInfo, UploadState, embedded_backend, new_upload_id
from tusd_py.config import Settings
from tusd_py.errors import HookAnswer, TusError
from tusd_py.hooks import HookFailed, HookResponse, Hooks, parse_events
from tusd_py.service import NOBODY, Body, Caller, Outcome, UploadService

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Recorder:
    """A hook transport that records events and answers from a table (or fails)."""

    def __init__(self, answers: Mapping[str, HookResponse] | None = None,
                 failures: int = 0) -> None:
        self.events: list[dict[str, Any]] = []
        self.answers = dict(answers or {})
        self.failures = failures

    def describe(self) -> str:
        return "recorder"

    async def call(self, hook_type: str, body: Mapping[str, Any]) -> HookResponse:
        self.events.append(dict(body))
        if self.failures:
            self.failures -= 1
            raise HookFailed("receiver down", retry=True)
        return self.answers.get(hook_type, HookResponse())

    async def aclose(self) -> None:
        pass

    def types(self) -> list[str]:
        return [e["Type"] for e in self.events]


def service(tmp_path: Path, hooks: Hooks | None = None, **settings: Any) -> UploadService:
    config = Settings(upload_dir=tmp_path, fsync=False, **settings)
    return UploadService(config, embedded_backend(tmp_path, fsync=False),
                         FinalFiles(tmp_path / "final"), hooks=hooks)


def body(*chunks: bytes, length: int | None = None) -> Body:
    async def stream() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    total = sum(map(len, chunks))
    return Body(stream(), total if length is None else length)


def stored(tmp_path: Path, upload_id: str) -> bytes:
    return (tmp_path / "uploads" / upload_id).read_bytes()


async def append(svc: UploadService, upload_id: str, *chunks: bytes,
                 checksum: tuple[str, bytes] | None = None, chunked: bool = False) -> Any:
    async with svc.hold(upload_id) as hold:
        info = await svc.load(upload_id)
        content = body(*chunks)
        if chunked:  # no Content-Length: the length is only known at the end
            content = Body(content.chunks, None)
        return await svc.append(info, hold, content, NOBODY, checksum)


async def test_appends_complete_an_upload_and_queue_it(tmp_path: Path) -> None:
    svc = service(tmp_path)
    created = await svc.create(svc.new_upload(10, {}), NOBODY)
    first = await append(svc, created.info.id, b"hello")
    assert (first.outcome, first.info.offset, first.info.state) == (
        Outcome.DONE, 5, UploadState.UPLOADING)
    last = await append(svc, created.info.id, b"wor", b"ld")
    assert (last.outcome, last.info.offset, last.info.state) == (
        Outcome.DONE, 10, UploadState.COMPLETED)
    assert stored(tmp_path, created.info.id) == b"helloworld"
    with anyio.fail_after(5):
        job = await svc.backend.queue.receive()
    assert job.upload_id == created.info.id


async def test_a_body_longer_than_the_upload_keeps_only_what_fits(tmp_path: Path) -> None:
    svc = service(tmp_path)
    created = await svc.create(svc.new_upload(4, {}), NOBODY)
    with pytest.raises(TusError) as declared:  # a Content-Length says so up front
        await append(svc, created.info.id, b"ab", b"cdef")
    assert declared.value.status == 413
    result = await append(svc, created.info.id, b"ab", b"cdef", chunked=True)
    assert result.outcome is Outcome.TOO_LARGE
    assert stored(tmp_path, created.info.id) == b"abcd"
    with pytest.raises(TusError) as caught:
        svc.raise_for(result)
    assert (caught.value.status, caught.value.headers["Upload-Offset"]) == (413, "4")


async def test_a_checksum_mismatch_stores_nothing(tmp_path: Path) -> None:
    svc = service(tmp_path)
    created = await svc.create(svc.new_upload(6, {}), NOBODY)
    wrong = ("sha256", hashlib.sha256(b"other!").digest())
    result = await append(svc, created.info.id, b"abc", checksum=wrong)
    assert (result.outcome, result.info.offset) == (Outcome.CHECKSUM_MISMATCH, 0)
    assert stored(tmp_path, created.info.id) == b""
    right = ("sha256", hashlib.sha256(b"abc").digest())
    assert (await append(svc, created.info.id, b"abc", checksum=right)).info.offset == 3


async def test_a_deferred_length_is_declared_once(tmp_path: Path) -> None:
    svc = service(tmp_path, max_size=100)
    created = await svc.create(svc.new_upload(None, {}), NOBODY)
    await append(svc, created.info.id, b"12345")
    async with svc.hold(created.info.id) as hold:
        info = await svc.load(created.info.id)
        with pytest.raises(TusError) as too_big:
            await svc.declare_length(info, hold, 101, NOBODY)
        assert too_big.value.status == 413
        with pytest.raises(TusError) as too_small:
            await svc.declare_length(info, hold, 4, NOBODY)
        assert too_small.value.code == "ERR_INVALID_UPLOAD_LENGTH"
        info = await svc.declare_length(info, hold, 5, NOBODY)
        assert info.state is UploadState.COMPLETED  # the length equals what is stored
        with pytest.raises(TusError) as changed:
            await svc.declare_length(info, hold, 6, NOBODY)
        assert changed.value.message == "Upload-Length cannot be changed once set"


async def test_a_final_upload_waits_for_its_partials(tmp_path: Path) -> None:
    svc = service(tmp_path)
    a = (await svc.create(svc.new_upload(3, {}, partial=True), NOBODY)).info
    b = (await svc.create(svc.new_upload(None, {}, partial=True), NOBODY)).info
    final = (await svc.create_final([a.id, b.id], {}, NOBODY)).info
    assert (final.size, final.state) == (None, UploadState.UPLOADING)
    await append(svc, a.id, b"abc")
    async with svc.hold(b.id) as hold:
        info = await svc.declare_length(await svc.load(b.id), hold, 2, NOBODY)
        await svc.append(info, hold, body(b"de"), NOBODY)
    final = await svc.load(final.id)
    assert (final.size, final.offset, final.state) == (5, 5, UploadState.COMPLETED)
    assert stored(tmp_path, final.id) == b"abcde"
    with pytest.raises(TusError) as not_partial:
        await svc.create_final([final.id], {}, NOBODY)
    assert not_partial.value.code == "ERR_INVALID_CONCAT"


async def test_a_small_whole_upload_is_created_complete(tmp_path: Path) -> None:
    svc = service(tmp_path)
    new = svc.new_upload(3, {})
    content = body(b"xyz")
    assert svc.fits_in_one_write(new, content)
    created = await svc.create_complete(new, NOBODY, content)
    assert (created.info.offset, created.info.state) == (3, UploadState.COMPLETED)
    assert stored(tmp_path, created.info.id) == b"xyz"
    short = svc.new_upload(5, {})
    with pytest.raises(TusError) as caught:
        await svc.create_complete(short, NOBODY, body(b"xy", length=5))
    assert caught.value.code == "ERR_BODY_INCOMPLETE"
    with pytest.raises(TusError):
        await svc.load(short.id)  # nothing was created


async def test_termination_leaves_a_tombstone(tmp_path: Path) -> None:
    svc = service(tmp_path)
    created = await svc.create(svc.new_upload(5, {}), NOBODY)
    await append(svc, created.info.id, b"abc")
    await svc.terminate(created.info.id, NOBODY)
    with pytest.raises(TusError) as caught:
        await svc.load(created.info.id)
    assert (caught.value.status, caught.value.message) == (410, "upload was terminated")
    assert not (tmp_path / "uploads" / created.info.id).exists()


async def test_disabled_features_refuse_before_touching_anything(tmp_path: Path) -> None:
    svc = service(tmp_path, disable_termination=True, disable_concatenation=True,
                  disable_download=True)
    created = await svc.create(svc.new_upload(2, {}), NOBODY)
    await append(svc, created.info.id, b"ok")
    for attempt in (lambda: svc.terminate(created.info.id, NOBODY),
                    lambda: svc.create_final([created.info.id], {}, NOBODY),
                    lambda: svc.download(created.info)):
        with pytest.raises(TusError) as caught:
            await attempt()
        assert (caught.value.status, caught.value.code) == (501, "ERR_NOT_IMPLEMENTED")
    with pytest.raises(TusError):
        svc.new_upload(1, {}, partial=True)
    assert stored(tmp_path, created.info.id) == b"ok"


# --- hooks: one sender, its gate and its retries ---------------------------------------
async def test_pre_create_can_refuse_or_rename(tmp_path: Path) -> None:
    recorder = Recorder({"pre-create": HookResponse(
        reject_upload=True, status=403, body="no quota")})
    svc = service(tmp_path, Hooks(recorder, parse_events("pre-create")))
    with pytest.raises(HookAnswer) as refused:
        await svc.create(svc.new_upload(1, {}), Caller(method="POST", uri="/files/"))
    assert (refused.value.status, refused.value.body) == (403, "no quota")
    assert recorder.events[0]["Event"]["HTTPRequest"]["URI"] == "/files/"
    assert recorder.events[0]["Event"]["Upload"]["ID"] is None

    recorder.answers["pre-create"] = HookResponse(change_id="chosen-id",
                                                  change_metadata={"filename": "b.txt"})
    created = await svc.create(svc.new_upload(1, {}), NOBODY)
    assert created.info.id == "chosen-id"
    assert created.info.metadata == {"filename": "Yi50eHQ="}


async def test_a_blocking_hook_is_retried_then_fails_closed(tmp_path: Path) -> None:
    recorder = Recorder(failures=2)
    svc = service(tmp_path, Hooks(recorder, parse_events("pre-create"), retries=2,
                                  backoff=0.001))
    created = await svc.create(svc.new_upload(1, {}), NOBODY)  # third attempt answers
    assert recorder.types() == ["pre-create"] * 3
    recorder.failures = 3
    with pytest.raises(TusError) as caught:
        await svc.create(svc.new_upload(1, {}), NOBODY)
    assert (caught.value.status, caught.value.code) == (500, "ERR_HOOK_FAILED")
    assert created.info.id  # the first creation went through


async def test_only_enabled_events_are_queued(tmp_path: Path) -> None:
    recorder = Recorder()
    hooks = Hooks(recorder, parse_events("post-terminate"))
    svc = service(tmp_path, hooks)
    async with anyio.create_task_group() as tg:
        tg.start_soon(hooks.run)
        created = await svc.create(svc.new_upload(2, {}), NOBODY)
        await append(svc, created.info.id, b"ok")  # post-create/-receive: not enabled
        await svc.terminate(created.info.id, NOBODY)
        with anyio.fail_after(5):
            while not recorder.events:
                await anyio.wait_all_tasks_blocked()
        tg.cancel_scope.cancel()
    assert recorder.types() == ["post-terminate"]
    assert recorder.events[0]["Event"]["Upload"]["Storage"] == {"Type": "filestore"}


async def test_pre_finish_answer_comes_back_with_the_completing_append(tmp_path: Path) -> None:
    answer = HookResponse(status=200, body='{"url":"x"}')
    svc = service(tmp_path, Hooks(Recorder({"pre-finish": answer}),
                                  parse_events("pre-finish")))
    created = await svc.create(svc.new_upload(4, {}), NOBODY)
    assert (await append(svc, created.info.id, b"ab")).answer is None
    assert (await append(svc, created.info.id, b"cd")).answer == answer


async def test_a_stalled_holder_taken_over_never_cuts_the_new_holders_bytes(
        tmp_path: Path, redis_url: str) -> None:
    """Instance A holds an upload's lock, then stalls past its heartbeat; B takes the lock
    over, stores and commits bytes. When A wakes up and goes on with its PATCH, it must
    not cut the file back to the offset it read before the stall (it once did: zeros in
    committed bytes under heavy load)."""
    import redis.asyncio as aioredis

    from storage.redis import redis_backend
    from storage.redis.client import HEARTBEAT_PREFIX

    config = Settings(upload_dir=tmp_path, fsync=False)
    a = UploadService(config, redis_backend(redis_url, tmp_path, fsync=False),
                      FinalFiles(tmp_path / "final"))
    b = UploadService(config, redis_backend(redis_url, tmp_path, fsync=False),
                      FinalFiles(tmp_path / "final"))
    raw = aioredis.from_url(redis_url)
    try:
        created = await a.create(a.new_upload(8, {}), NOBODY)
        uid = created.info.id
        async with a.hold(uid) as stale:
            before = await a.load(uid)  # A read offset 0, then stalls
            # A's heartbeat has lapsed (its event loop stalled; here its heartbeat task
            # does not run at all): B takes the lock over at once.
            assert not [k async for k in raw.scan_iter(HEARTBEAT_PREFIX + "*")]
            async with b.hold(uid) as fresh:
                result = await b.append(await b.load(uid), fresh, body(b"abcd"), NOBODY)
                assert result.info.offset == 4
                with pytest.raises(TusError) as caught:
                    await a.append(before, stale, body(b"xyzw"), NOBODY)
                assert (caught.value.status, caught.value.code) == (423, "ERR_UPLOAD_INTERRUPTED")
                assert stale.lease.lost.is_set()
            assert stored(tmp_path, uid) == b"abcd"
    finally:
        await raw.aclose()
        await a.backend.aclose()
        await b.backend.aclose()


async def test_one_sweep_expires_more_than_one_listing(tmp_path: Path, redis_url: str) -> None:
    """The Redis store lists 200 expired uploads at a time; a sweep goes on listing until
    none is left (it once stopped after the first 200: abandoned uploads piled up)."""
    import time

    from storage.redis import redis_backend
    from tusd_py.service.expiry import sweep_once

    backend = redis_backend(redis_url, tmp_path, fsync=False)
    config = Settings(upload_dir=tmp_path, fsync=False)
    try:
        past = time.time() - 10
        for _ in range(250):
            info = UploadInfo(id=new_upload_id(), size=10, expires_at=past)
            await backend.data.create(info.id)
            await backend.state.create(info)
        assert await sweep_once(backend, config) == 250
        assert await backend.state.expired(time.time()) == []
    finally:
        await backend.aclose()
