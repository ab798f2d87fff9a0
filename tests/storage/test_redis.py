"""Redis-only behaviour the conformance suite cannot see: fencing after lease expiry,
release requests and takeover across instances, the completion stream, outages,
the expiry index and Sentinel URLs. Always against a real redis-server."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import pytest
import redis.asyncio as aioredis

from storage import (
    Fenced,
    InvalidTransition,
    Job,
    LockTimeout,
    StorageUnavailable,
    UploadInfo,
    UploadNotFound,
    UploadState,
    new_upload_id,
)
from storage.redis import (
    RedisConnection,
    RedisLocker,
    RedisStateStore,
    RedisStreamQueue,
    connect,
    redis_backend,
)
from storage.redis.client import (
    DEAD,
    EXPIRY,
    GROUP,
    HEARTBEAT_PREFIX,
    RELEASE_CHANNEL,
    RETRY,
    STREAM,
    epoch_key,
    info_key,
    lock_key,
)

from ..conftest import RedisServer, free_port
from ..tusd_py.helpers import wait_for

pytestmark = pytest.mark.anyio

NOOP: Callable[[], None] = lambda: None  # noqa: E731


# --- helpers ---------------------------------------------------------------------------


@dataclass
class Instance:
    """One `tusd-py serve` process as far as Redis can tell: its own connection and id."""

    name: str
    conn: RedisConnection
    locker: RedisLocker
    state: RedisStateStore
    queue: RedisStreamQueue
    services: anyio.CancelScope = field(default_factory=anyio.CancelScope)

    def kill(self) -> None:
        """Stop heartbeat and pub/sub as a SIGKILL would: nothing is released or cleaned."""
        self.services.cancel()


@asynccontextmanager
async def instance(
    url: str, name: str, *, lease_seconds: float = 10.0, heartbeat_seconds: float = 3.0,
    services: bool = True, reclaim_idle_seconds: float = 300.0,
    tombstone_seconds: float = 7 * 86400,
) -> AsyncIterator[Instance]:
    conn = RedisConnection(url, instance=name)
    locker = RedisLocker(conn, lease_seconds=lease_seconds,
                         heartbeat_seconds=heartbeat_seconds)
    inst = Instance(
        name, conn, locker, RedisStateStore(conn, tombstone_seconds=tombstone_seconds),
        RedisStreamQueue(conn, reclaim_idle_seconds=reclaim_idle_seconds, block_seconds=0.1),
    )

    async def run_services() -> None:
        with inst.services:
            async with anyio.create_task_group() as inner:
                inner.start_soon(locker.heartbeat)
                inner.start_soon(locker.listen)

    try:
        async with anyio.create_task_group() as tg:
            if services:
                tg.start_soon(run_services)
            yield inst
            tg.cancel_scope.cancel()
    finally:
        await conn.aclose()


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[Any]:
    """A plain client to look at (and tamper with) the keys directly."""
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def eventually(check: Callable[[], Any], timeout: float, what: str) -> None:
    """Poll an (async) check until it is truthy: the one poll of this module, for Redis
    state that has no event to wait on (a key appearing, a subscriber count)."""
    with anyio.move_on_after(timeout):
        while True:
            if await check():
                return
            await anyio.sleep(0.02)
    pytest.fail(f"not within {timeout}s: {what}")


async def services_up(raw: Any, *names: str) -> None:
    """Wait until every named instance heart-beats and listens for release requests."""
    async def ready() -> bool:
        beats = [await raw.exists(HEARTBEAT_PREFIX + n) for n in names]
        (_, subscribers), = await raw.pubsub_numsub(RELEASE_CHANNEL)
        return all(beats) and subscribers >= len(names)

    await eventually(ready, 5, f"services of {names} running")


async def make(state: RedisStateStore, size: int | None = 10, **fields: Any) -> UploadInfo:
    info = UploadInfo(id=new_upload_id(), size=size, created_at=time.time(),
                      updated_at=time.time(), **fields)
    await state.create(info)
    return info


async def commit(inst: Instance, upload_id: str, expected: int, new: int) -> UploadInfo:
    async with inst.locker.hold(upload_id, on_release_requested=NOOP, timeout=2) as lease:
        return await inst.state.commit(upload_id, epoch=lease.epoch, expected=expected,
                                       new=new)


async def pending(raw: Any) -> int:
    return int((await raw.xpending(STREAM, GROUP))["pending"])


# --- 1. fencing after lease expiry; renewal keeps the lock --------------------------------


async def test_late_commit_after_lease_expiry_is_fenced(redis_url: str, raw: Any) -> None:
    async with instance(redis_url, "inst-a", lease_seconds=1.0, services=False) as a, \
            instance(redis_url, "inst-b", lease_seconds=1.0) as b:
        # A's process looks alive (heartbeat key present) but nothing renews A's lease:
        # a stalled holder. B may only get the lock once the 1 s lease has lapsed.
        await raw.set(HEARTBEAT_PREFIX + "inst-a", "1", px=60_000)
        info = await make(a.state)
        with anyio.fail_after(10):
            async with AsyncExitStack() as a_holding:
                old = await a_holding.enter_async_context(
                    a.locker.hold(info.id, on_release_requested=NOOP, timeout=1))
                await a.state.commit(info.id, epoch=old.epoch, expected=0, new=2)
                started = anyio.current_time()
                async with b.locker.hold(info.id, on_release_requested=NOOP,
                                         timeout=5) as new:
                    waited = anyio.current_time() - started
                    assert 0.6 < waited < 3, f"B waited {waited:.2f}s for a 1 s lease"
                    assert new.epoch > old.epoch
                    await b.state.commit(info.id, epoch=new.epoch, expected=2, new=6)
                    # A wakes up and commits what it believes: fenced, not an offset error.
                    with pytest.raises(Fenced):
                        await a.state.commit(info.id, epoch=old.epoch, expected=2, new=4)
                    with pytest.raises(Fenced):
                        await a.state.commit(info.id, epoch=old.epoch, expected=6, new=8)
                    await a_holding.aclose()  # A leaves: it must not free B's lock
                    assert (await raw.get(lock_key(info.id))).startswith(b"inst-b/")
                    got = await a.state.get(info.id)
                    assert got.offset == 6 and got.epoch == new.epoch


async def test_renewed_lease_makes_waiter_time_out(redis_url: str, raw: Any) -> None:
    requests = 0

    def asked() -> None:
        nonlocal requests
        requests += 1

    async with instance(redis_url, "inst-a", lease_seconds=1.0) as a, \
            instance(redis_url, "inst-b", lease_seconds=1.0) as b:
        await services_up(raw, "inst-a", "inst-b")
        upload_id = new_upload_id()
        with anyio.fail_after(10):
            async with a.locker.hold(upload_id, on_release_requested=asked,
                                     timeout=1) as lease:
                started = anyio.current_time()
                # Longer than the lease: only renewal by A's heartbeat keeps B out.
                with pytest.raises(LockTimeout):
                    async with b.locker.hold(upload_id, on_release_requested=NOOP,
                                             timeout=2.5):
                        pass
                assert anyio.current_time() - started >= 2.5
                assert not lease.lost.is_set()
                assert requests >= 1  # B asked; A chose not to let go
                assert (await raw.get(lock_key(upload_id))).startswith(b"inst-a/")
            async with b.locker.hold(upload_id, on_release_requested=NOOP, timeout=1) as new:
                assert new.epoch > lease.epoch


async def test_an_epoch_lost_in_a_failover_is_never_handed_out_again(redis_url: str,
                                                                      raw: Any) -> None:
    """A replica promoted before it saw the last acquisition has the previous epoch: the
    next holder must still get a newer one, or the old holder's commits would pass."""
    async with instance(redis_url, "inst-a") as a, instance(redis_url, "inst-b") as b:
        upload_id = new_upload_id()
        await a.state.create(UploadInfo(id=upload_id, size=10))
        async with a.locker.hold(upload_id, on_release_requested=NOOP, timeout=1) as old:
            # The failover: the lock and the last increment of the epoch are gone.
            await raw.delete(lock_key(upload_id))
            await raw.set(epoch_key(upload_id), str(old.epoch - 1))
            async with b.locker.hold(upload_id, on_release_requested=NOOP,
                                     timeout=1) as new:
                assert new.epoch > old.epoch
                with pytest.raises(Fenced):
                    await a.state.commit(upload_id, epoch=old.epoch, expected=0, new=4)
                info = await b.state.commit(upload_id, epoch=new.epoch, expected=0, new=4)
                assert info.offset == 4


async def test_many_leases_are_renewed_in_one_round_trip(redis_url: str) -> None:
    """Hundreds of held leases over a slow link (5 ms each way) all survive: renewing them
    one round trip each took longer than a lease, so they lapsed under load."""
    from tests.faultproxy import Faults, ProxyThread

    port = urlsplit(redis_url).port
    assert port is not None
    with ProxyThread(port, Faults(latency=0.005), seed=1) as proxy:
        slow_url = redis_url.replace(f":{port}/", f":{proxy.port}/")
        async with instance(slow_url, "inst-slow", lease_seconds=1.5,
                            heartbeat_seconds=3.0) as a, AsyncExitStack() as held:
            leases = []
            with anyio.fail_after(60):
                for _ in range(300):
                    leases.append(await held.enter_async_context(a.locker.hold(
                        new_upload_id(), on_release_requested=NOOP, timeout=5)))
                # 300 sequential renewals at >= 10 ms each would take 3 s: two leases long.
                await anyio.sleep(4.0)  # the behaviour under test: time passing
            assert not [lease for lease in leases if lease.lost.is_set()]


# --- 2. release request across instances -------------------------------------------------


async def test_release_request_crosses_instances(redis_url: str, raw: Any) -> None:
    async with instance(redis_url, "inst-a") as a, instance(redis_url, "inst-b") as b:
        await services_up(raw, "inst-a", "inst-b")
        upload_id = new_upload_id()
        asked = anyio.Event()
        holding = anyio.Event()
        left = anyio.Event()

        first: list[int] = []

        async def holder() -> None:
            async with a.locker.hold(upload_id, on_release_requested=asked.set,
                                     timeout=1) as held:
                first.append(held.epoch)
                holding.set()
                await asked.wait()
            left.set()

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(holder)
                await holding.wait()
                started = anyio.current_time()
                with anyio.fail_after(1.5):
                    async with b.locker.hold(upload_id, on_release_requested=NOOP,
                                             timeout=5) as lease:
                        waited = anyio.current_time() - started
                        assert asked.is_set() and left.is_set()
                        assert lease.epoch > first[0]  # the fencing token moved on
        assert waited < 1.0, f"hand-over took {waited:.2f}s"


# --- 3. dead-instance takeover -------------------------------------------------------------


async def test_killed_instance_lock_is_taken_over_before_lease(redis_url: str,
                                                               raw: Any) -> None:
    async with instance(redis_url, "inst-a", lease_seconds=30, heartbeat_seconds=1.0) as a, \
            instance(redis_url, "inst-b", lease_seconds=30) as b:
        await services_up(raw, "inst-a", "inst-b")
        upload_id = new_upload_id()
        # Enter A's hold and never leave it: a SIGKILLed process runs no finally blocks.
        a_hold = a.locker.hold(upload_id, on_release_requested=NOOP, timeout=1)
        old = await a_hold.__aenter__()
        try:
            with anyio.fail_after(10):
                with pytest.raises(LockTimeout):  # alive: A's heartbeat protects it
                    async with b.locker.hold(upload_id, on_release_requested=NOOP,
                                             timeout=0.5):
                        pass
                a.kill()
                killed = anyio.current_time()
                async with b.locker.hold(upload_id, on_release_requested=NOOP,
                                         timeout=10) as new:
                    waited = anyio.current_time() - killed
                    assert new.epoch > old.epoch
                    assert (await raw.get(lock_key(upload_id))).startswith(b"inst-b/")
                # heartbeat TTL is 1 s; the lease (30 s) had not lapsed
                assert waited < 2.0, f"takeover took {waited:.2f}s"
        finally:
            await a_hold.__aexit__(None, None, None)


# --- 4. lease lost is signalled ------------------------------------------------------------


@pytest.mark.parametrize("tamper", ["deleted", "stolen"])
async def test_lost_lease_is_signalled(redis_url: str, raw: Any, tamper: str) -> None:
    lease_seconds = 1.5
    async with instance(redis_url, "inst-a", lease_seconds=lease_seconds) as a:
        await services_up(raw, "inst-a")
        upload_id = new_upload_id()
        asked = anyio.Event()
        with anyio.fail_after(10):
            async with a.locker.hold(upload_id, on_release_requested=asked.set,
                                     timeout=1) as lease:
                # Marker: the lease has been renewed once (its TTL went up), still not lost.
                lowest = [await raw.pttl(lock_key(upload_id))]

                async def renewed() -> bool:
                    ttl = await raw.pttl(lock_key(upload_id))
                    lowest[0] = min(lowest[0], ttl)
                    return bool(ttl > lowest[0] + 100)  # a renewal adds ~lease/3

                await eventually(renewed, lease_seconds, "the lease renewed")
                assert not lease.lost.is_set()
                if tamper == "deleted":
                    await raw.delete(lock_key(upload_id))
                else:
                    await raw.set(lock_key(upload_id), "inst-z/other", px=60_000)
                started = anyio.current_time()
                with anyio.fail_after(lease_seconds / 3 + 0.3):
                    await lease.lost.wait()
                assert asked.is_set()
                assert anyio.current_time() - started <= lease_seconds / 3 + 0.3
            if tamper == "stolen":  # leaving must not free someone else's lock
                assert await raw.get(lock_key(upload_id)) == b"inst-z/other"


# --- 5. completion stream ------------------------------------------------------------------


async def test_completion_adds_exactly_one_stream_entry(redis_url: str, raw: Any) -> None:
    async with instance(redis_url, "inst-a") as a:
        with anyio.fail_after(10):
            info = await make(a.state, size=10)
            await commit(a, info.id, 0, 4)
            assert await raw.xlen(STREAM) == 0  # not complete yet
            done = await commit(a, info.id, 4, 10)
            assert done.state is UploadState.COMPLETED
            assert await raw.xlen(STREAM) == 1
            with pytest.raises(InvalidTransition):
                await commit(a, info.id, 10, 10)
            part = await make(a.state, size=3, partial=True)
            assert (await commit(a, part.id, 0, 3)).state is UploadState.COMPLETED
            deferred = await make(a.state, size=None)
            await commit(a, deferred.id, 0, 2)
            assert await raw.xlen(STREAM) == 1  # partials are never processed
            async with a.locker.hold(deferred.id, on_release_requested=NOOP,
                                     timeout=2) as lease:
                await a.state.declare_length(deferred.id, epoch=lease.epoch, size=2)
            entries = await raw.xrange(STREAM)
            assert [e[1][b"id"].decode() for e in entries] == [info.id, deferred.id]


async def test_receive_then_ack_removes_job(redis_url: str, raw: Any) -> None:
    async with instance(redis_url, "inst-a") as a:
        with anyio.fail_after(10):
            info = await make(a.state, size=0)
            await commit(a, info.id, 0, 0)
            job = await a.queue.receive()
            assert isinstance(job, Job)
            assert job.upload_id == info.id and job.delivery == 1 and job.token
            assert await pending(raw) == 1
            await a.queue.ack(job)
            assert await pending(raw) == 0
            assert await raw.xlen(STREAM) == 0
            with anyio.move_on_after(0.5) as nothing:
                await a.queue.receive()
            assert nothing.cancelled_caught


async def test_unacked_job_is_reclaimed_by_another_consumer(redis_url: str,
                                                            raw: Any) -> None:
    async with instance(redis_url, "c1", reclaim_idle_seconds=0.3) as c1, \
            instance(redis_url, "c2", reclaim_idle_seconds=0.3) as c2:
        with anyio.fail_after(10):
            info = await make(c1.state, size=0)
            await commit(c1, info.id, 0, 0)
            job = await c1.queue.receive()
            assert job.delivery == 1
            # c1 dies holding the job; c2 takes it once it is idle long enough.
            again = await c2.queue.receive()
            assert again.upload_id == info.id
            assert again.delivery == 2
            assert again.token == job.token
            (entry,) = await raw.xpending_range(STREAM, GROUP, min="-", max="+", count=10)
            assert entry["consumer"] == b"c2" and entry["times_delivered"] == 2
            await c2.queue.ack(again)
            assert await pending(raw) == 0


async def test_extend_prevents_reclaim(redis_url: str, raw: Any) -> None:
    async with instance(redis_url, "c1", reclaim_idle_seconds=0.4) as c1, \
            instance(redis_url, "c2", reclaim_idle_seconds=0.4) as c2:
        with anyio.fail_after(15):
            info = await make(c1.state, size=0)
            await commit(c1, info.id, 0, 0)
            job = await c1.queue.receive()
            stop = anyio.Event()

            async def keep_extending() -> None:
                while not stop.is_set():
                    await c1.queue.extend(job)
                    await anyio.sleep(0.1)  # the behaviour: a long job extends its claim

            async with anyio.create_task_group() as tg:
                tg.start_soon(keep_extending)
                with anyio.move_on_after(1.5) as nothing:
                    stolen = await c2.queue.receive()
                    pytest.fail(f"reclaimed while extended: {stolen}")
                stop.set()
            assert nothing.cancelled_caught
            (entry,) = await raw.xpending_range(STREAM, GROUP, min="-", max="+", count=10)
            assert entry["consumer"] == b"c1"
            # c1 stops extending (dies): now c2 gets it.
            again = await c2.queue.receive()
            assert again.upload_id == info.id and again.delivery == 2
            await c2.queue.ack(again)


async def test_retry_redelivers_after_delay(redis_url: str, raw: Any) -> None:
    async with instance(redis_url, "inst-a") as a:
        with anyio.fail_after(10):
            info = await make(a.state, size=0)
            await commit(a, info.id, 0, 0)
            job = await a.queue.receive()
            started = anyio.current_time()
            await a.queue.retry(job, 0.3)
            assert await pending(raw) == 0
            assert await raw.zscore(RETRY, info.id) is not None
            again = await a.queue.receive()
            assert anyio.current_time() - started >= 0.29
            assert again.upload_id == info.id
            await a.queue.ack(again)
            assert await pending(raw) == 0 and await raw.zcard(RETRY) == 0


async def test_dead_job_keeps_error_and_is_never_redelivered(redis_url: str,
                                                             raw: Any) -> None:
    async with instance(redis_url, "c1", reclaim_idle_seconds=0.1) as c1, \
            instance(redis_url, "c2", reclaim_idle_seconds=0.1) as c2:
        with anyio.fail_after(10):
            info = await make(c1.state, size=0)
            await commit(c1, info.id, 0, 0)
            job = await c1.queue.receive()
            await c1.queue.dead(job, "boom")
            (entry,) = await raw.xrange(DEAD)
            assert entry[1][b"id"].decode() == info.id and entry[1][b"error"] == b"boom"
            assert await pending(raw) == 0 and await raw.xlen(STREAM) == 0
            for queue in (c1.queue, c2.queue):
                with anyio.move_on_after(0.6) as nothing:
                    await queue.receive()
                assert nothing.cancelled_caught


# --- 6. Redis outage ------------------------------------------------------------------------


@pytest.fixture
def stoppable(redis_server: RedisServer, redis_url: str) -> Iterator[RedisServer]:
    """The session redis-server, restarted after the test whatever happens."""
    if redis_server.external_url:
        pytest.skip("outage tests need our own redis-server, not REDIS_URL")
    try:
        yield redis_server
    finally:
        if redis_server.proc is None or redis_server.proc.poll() is not None:
            redis_server.start()


async def unavailable(call: Callable[[], Any], what: str) -> None:
    started = anyio.current_time()
    with anyio.fail_after(15), pytest.raises(StorageUnavailable):
        await call()
    elapsed = anyio.current_time() - started
    assert elapsed < 15, f"{what} took {elapsed:.1f}s to fail"


async def test_outage_raises_storage_unavailable_and_state_survives(
        stoppable: RedisServer, redis_url: str) -> None:
    async with instance(redis_url, "inst-a", services=False) as a:
        info = await make(a.state)
        committed = await commit(a, info.id, 0, 3)
        async with a.locker.hold(info.id, on_release_requested=NOOP, timeout=2) as lease:
            await anyio.to_thread.run_sync(stoppable.stop)
            await unavailable(lambda: a.state.get(info.id), "get")
            await unavailable(lambda: a.state.commit(info.id, epoch=lease.epoch, expected=3,
                                                     new=5), "commit")
            await unavailable(lambda: make(a.state), "create")
            await unavailable(lambda: a.state.expired(time.time()), "expired")
            await unavailable(lambda: commit(a, new_upload_id(), 0, 1), "hold")
        await anyio.to_thread.run_sync(stoppable.start)
        with anyio.fail_after(15):
            got = await a.state.get(info.id)  # from the AOF
            assert got.offset == 3 and got.state is UploadState.UPLOADING
            assert got.epoch == committed.epoch
            done = await commit(a, info.id, 3, 10)
            assert done.offset == 10 and done.state is UploadState.COMPLETED


async def test_idle_connections_survive_a_redis_restart(stoppable: RedisServer,
                                                        redis_url: str) -> None:
    """A restart the server never saw (no request during it) costs no failed request."""
    async with instance(redis_url, "inst-a", services=False) as a:
        info = await make(a.state)
        async with anyio.create_task_group() as tg:  # several pooled connections
            for _ in range(4):
                tg.start_soon(a.state.get, info.id)
        await anyio.to_thread.run_sync(stoppable.stop)
        await anyio.to_thread.run_sync(stoppable.start)
        with anyio.fail_after(15):
            for _ in range(4):
                assert (await a.state.get(info.id)).id == info.id
            assert (await commit(a, info.id, 0, 2)).offset == 2


async def test_services_survive_outage_and_drop_leases(stoppable: RedisServer,
                                                       redis_url: str, raw: Any) -> None:
    async with instance(redis_url, "inst-a", lease_seconds=1.5, heartbeat_seconds=1.0) as a:
        await services_up(raw, "inst-a")
        asked = anyio.Event()
        with anyio.fail_after(30):
            async with a.locker.hold(new_upload_id(), on_release_requested=asked.set,
                                     timeout=1) as lease:
                await anyio.to_thread.run_sync(stoppable.stop)
                # Leases lapse unrenewed during the outage: writers must be told to stop.
                with anyio.fail_after(3):
                    await lease.lost.wait()
                assert asked.is_set()
                await anyio.to_thread.run_sync(stoppable.start)
            # The heartbeat and the pub/sub listener came back by themselves.
            await raw.connection_pool.disconnect()  # our own socket died with the server
            await raw.delete(HEARTBEAT_PREFIX + "inst-a")
            await services_up(raw, "inst-a")


# --- 7. expiry index ------------------------------------------------------------------------


async def test_expiry_index_and_tombstone_ttl(redis_url: str, raw: Any) -> None:
    async with instance(redis_url, "inst-a", tombstone_seconds=60) as a:
        with anyio.fail_after(10):
            now = time.time()
            done = await make(a.state, size=4, expires_at=now - 5)
            gone = await make(a.state, size=4, expires_at=now - 5)
            expired = {i.id for i in await a.state.expired(now)}
            assert expired == {done.id, gone.id}
            await commit(a, done.id, 0, 4)
            assert done.id not in {i.id for i in await a.state.expired(now)}
            assert await raw.zscore(EXPIRY, done.id) is None
            assert await raw.pttl(info_key(done.id)) == -1  # a live record never expires
            await a.state.transition(gone.id, UploadState.TERMINATED,
                                     expect=frozenset({UploadState.UPLOADING}))
            assert await a.state.expired(now) == []
            assert await raw.zscore(EXPIRY, gone.id) is None
            assert 0 < await raw.pttl(info_key(gone.id)) <= 60_000
            assert (await a.state.get(gone.id)).state is UploadState.TERMINATED


async def test_tombstone_leaves_no_key_without_ttl(redis_url: str, raw: Any) -> None:
    async with instance(redis_url, "inst-a", tombstone_seconds=60) as a:
        with anyio.fail_after(10):
            info = await make(a.state)
            await commit(a, info.id, 0, 3)
            await a.state.transition(info.id, UploadState.TERMINATED,
                                     expect=frozenset({UploadState.UPLOADING}))
            keys = [k async for k in raw.scan_iter(match=f"tus:{{{info.id}}}:*")]
            assert keys, "the tombstone must exist"
            forever = [k.decode() for k in keys if await raw.pttl(k) == -1]
            assert epoch_key(info.id) in {k.decode() for k in keys}
            assert forever == [], f"keys that outlive the tombstone: {forever}"


async def test_expired_forgets_index_entries_without_record(redis_url: str,
                                                            raw: Any) -> None:
    async with instance(redis_url, "inst-a", services=False) as a:
        ghost = new_upload_id()
        await raw.zadd(EXPIRY, {ghost: time.time() - 5})
        assert await a.state.expired(time.time()) == []
        assert await raw.zscore(EXPIRY, ghost) is None
        with pytest.raises(UploadNotFound):
            await a.state.get(ghost)


# --- 8. Sentinel -----------------------------------------------------------------------------


def test_sentinel_url_is_parsed_without_connecting() -> None:
    client = connect("redis+sentinel://127.0.0.1:26379,127.0.0.2:26380/mymaster/2")
    pool = client.connection_pool
    assert pool.service_name == "mymaster"
    assert pool.connection_kwargs["db"] == 2
    sentinels = [s.connection_pool.connection_kwargs for s in pool.sentinel_manager.sentinels]
    assert [(s["host"], s["port"]) for s in sentinels] == [("127.0.0.1", 26379),
                                                           ("127.0.0.2", 26380)]
    with_password = connect("redis+sentinel://:s%40cret@h1:1,h2:2/other")
    assert with_password.connection_pool.service_name == "other"
    assert with_password.connection_pool.connection_kwargs["db"] == 0
    assert with_password.connection_pool.connection_kwargs["password"] == "s@cret"


@pytest.mark.parametrize("url", ["redis+sentinel://127.0.0.1:26379",
                                 "redis+sentinel://127.0.0.1:26379/",
                                 "redis+sentinel://:pw@h1:1,h2:2"])
def test_sentinel_url_without_master_name_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="master name"):
        connect(url)


def test_sentinel_host_without_port_uses_default_port() -> None:
    # client.py means a missing port to be 26379 (`int(port or 26379)`).
    client = connect("redis+sentinel://h1,h2:26380/mymaster")
    hosts = [(s.connection_pool.connection_kwargs["host"],
              s.connection_pool.connection_kwargs["port"])
             for s in client.connection_pool.sentinel_manager.sentinels]
    assert hosts == [("h1", 26379), ("h2", 26380)]


@pytest.fixture
def sentinel(redis_server: RedisServer, tmp_path: Path) -> Iterator[int]:
    """A real Sentinel watching the session redis-server; always terminated."""
    target = urlsplit(redis_server.url)
    port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\nlogfile {tmp_path / 'sentinel.log'}\n"
        f"sentinel monitor mymaster {target.hostname} {target.port} 1\n"
        "sentinel down-after-milliseconds mymaster 60000\n")
    proc = subprocess.Popen(["redis-server", str(conf), "--sentinel"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        def up() -> bool:
            assert proc.poll() is None, (tmp_path / "sentinel.log").read_text()
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                    s.sendall(b"SENTINEL get-master-addr-by-name mymaster\r\n")
                    return str(target.port).encode() in s.recv(128)
            except OSError:
                return False

        # A child process's readiness has no event to block on: the shared poll.
        assert wait_for(up, timeout=10, interval=0.05), "sentinel did not come up"
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def test_connection_through_real_sentinel(redis_url: str, sentinel: int,
                                                tmp_path: Path, raw: Any) -> None:
    db = urlsplit(redis_url).path.strip("/") or "0"
    url = f"redis+sentinel://127.0.0.1:{sentinel}/mymaster/{db}"
    backend = redis_backend(url, tmp_path)
    with anyio.fail_after(10):
        try:
            info = await make(backend.state)  # type: ignore[arg-type]
            got = await backend.state.get(info.id)
            assert got.id == info.id and got.offset == 0
            assert await raw.exists(info_key(info.id))  # it really is the monitored master
            async with backend.locker.hold(info.id, on_release_requested=NOOP,
                                           timeout=2) as lease:
                done = await backend.state.commit(info.id, epoch=lease.epoch, expected=0,
                                                  new=10)
            assert done.state is UploadState.COMPLETED
        finally:
            await backend.aclose()
