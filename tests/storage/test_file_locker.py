"""The embedded backend shared by several processes (`--workers N` without Redis).

Every test runs real child processes on one upload dir (no mocks): mutual exclusion and
fencing epochs across processes, release requests delivered from one process to
another, a SIGKILLed holder's lock freed by the kernel, leader election, record
read-modify-write atomic across processes, and completion jobs processed once.
"""

from __future__ import annotations

import itertools
import os
import select
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from storage import (
    FileLocker,
    FileStateStore,
    LockTimeout,
    OffsetMismatch,
    UploadInfo,
    UploadState,
    embedded_backend,
    new_upload_id,
)

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).parents[2]

# The child's program: one scenario per argv[1], in its own process and event loop.
CHILD = r'''
import sys
from pathlib import Path
import anyio
from storage import (FileLocker, FileStateStore, OffsetMismatch, UploadState,
                     embedded_backend)
from storage.outbox_queue import PENDING

root, what, arg = Path(sys.argv[1]), sys.argv[2], sys.argv[3]

def say(*parts):
    print(*parts, flush=True)

async def main():
    locker = FileLocker(root)
    async with anyio.create_task_group() as tg:
        tg.start_soon(locker.listen)
        if what == "count":  # arg: upload id; bump a shared counter under the lock N times
            counter = root / "counter"
            for _ in range(int(sys.argv[4])):
                async with locker.hold(arg, on_release_requested=lambda: None,
                                       timeout=60) as lease:
                    value = int(counter.read_text() or 0) + 1
                    await anyio.sleep(0)  # a lost update would show here
                    counter.write_text(str(value))
                    say("epoch", value, lease.epoch)
        elif what in ("hold", "hold-deaf"):  # hold until asked to let go (or forever)
            asked = anyio.Event()
            on_release = asked.set if what == "hold" else (lambda: say("asked-ignored"))
            async with locker.hold(arg, on_release_requested=on_release,
                                   timeout=10) as lease:
                say("held", lease.epoch)
                await asked.wait()
                say("asked")
            say("released")
        elif what == "leader":
            say("leader", await locker.leader(arg, ttl=1.0))
            await anyio.sleep_forever()
        elif what == "claim":
            say("claim", await locker.claim(arg))
            await anyio.sleep_forever()
        elif what == "commits":  # arg: upload id; unlocked CAS commits, retried on conflict
            state = FileStateStore(root, fsync=False, shared=True)
            done = 0
            while done < int(sys.argv[4]):
                info = await state.get(arg)
                try:
                    await state.commit(arg, epoch=1, expected=info.offset,
                                       new=info.offset + 1)
                    done += 1
                except OffsetMismatch:
                    pass
            say("commits", done)
        elif what == "process":  # recover and process completed uploads, as completion.py
            backend = embedded_backend(root, fsync=False, shared=True)
            tg.start_soon(backend.services[0])
            state, queue = backend.state, backend.queue
            say("recovered", await queue.recover(state))
            while True:
                job = None
                with anyio.move_on_after(float(sys.argv[4])):
                    job = await queue.receive()
                if job is None:
                    break
                info = await state.get(job.upload_id)
                if info.state in PENDING:
                    await state.transition(job.upload_id, UploadState.PROCESSING,
                                           expect=PENDING)
                    say("processing", job.upload_id)
                    await anyio.sleep(0.01)  # processing takes a while: the window for a twin
                    await state.transition(job.upload_id, UploadState.PROCESSED,
                                           expect=frozenset({UploadState.PROCESSING}))
                await queue.ack(job)
            say("idle")
        tg.cancel_scope.cancel()

anyio.run(main)
'''


class Child:
    """One child process running CHILD; lines() reads what it printed."""

    def __init__(self, root: Path, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(root), *args], cwd=ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def expect(self, prefix: str, timeout: float = 30.0) -> list[str]:
        """The next output line, which must start with prefix; its words after it."""
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            self.kill()
            pytest.fail(f"child printed nothing within {timeout}s (wanted {prefix!r})")
        line = self.proc.stdout.readline()
        if not line.startswith(prefix):
            self.kill()
            err = self.proc.stderr.read() if self.proc.stderr else ""
            pytest.fail(f"child said {line!r}, wanted {prefix!r}\n{err}")
        return line.split()[1:]

    def finish(self, timeout: float = 120.0) -> list[str]:
        out, err = self.proc.communicate(timeout=timeout)
        assert self.proc.returncode == 0, err
        return out.splitlines()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


@pytest.fixture
async def locker(tmp_path: Path) -> AsyncIterator[FileLocker]:
    lk = FileLocker(tmp_path)
    async with anyio.create_task_group() as tg:
        tg.start_soon(lk.listen)
        yield lk
        tg.cancel_scope.cancel()
    await lk.aclose()


def noop() -> None:
    pass


async def test_mutual_exclusion_and_epochs_across_processes(tmp_path: Path,
                                                            locker: FileLocker) -> None:
    upload_id = new_upload_id()
    (tmp_path / "counter").write_text("0")
    n = 150
    children = [Child(tmp_path, "count", upload_id, str(n)) for _ in range(2)]
    outputs = [await anyio.to_thread.run_sync(c.finish) for c in children]
    assert int((tmp_path / "counter").read_text()) == 2 * n, "an update was lost"
    seen: dict[int, int] = {}  # counter value -> epoch of the holder that wrote it
    for out in outputs:
        for line in out:
            _, value, epoch = line.split()
            assert int(value) not in seen, f"two holders at once wrote {value}"
            seen[int(value)] = int(epoch)
    epochs = [seen[v] for v in sorted(seen)]
    assert all(a < b for a, b in itertools.pairwise(epochs)), (
        "epochs did not grow in acquisition order across processes")
    owner = {int(line.split()[1]): i for i, out in enumerate(outputs) for line in out}
    turns = sum(owner[v] != owner[v + 1] for v in range(1, 2 * n))
    print(f"2 processes x {n} holds, {turns} hand-overs between them")
    async with locker.hold(upload_id, on_release_requested=noop, timeout=5) as lease:
        assert lease.epoch > epochs[-1]


async def test_release_request_reaches_the_holding_process(tmp_path: Path,
                                                           locker: FileLocker) -> None:
    upload_id = new_upload_id()
    child = Child(tmp_path, "hold", upload_id)
    try:
        (held_epoch,) = await anyio.to_thread.run_sync(child.expect, "held")
        t0 = time.monotonic()
        async with locker.hold(upload_id, on_release_requested=noop, timeout=10) as lease:
            print(f"lock handed over from another process in "
                  f"{(time.monotonic() - t0) * 1000:.1f} ms")
            assert lease.epoch > int(held_epoch)
        await anyio.to_thread.run_sync(child.expect, "asked")
        await anyio.to_thread.run_sync(child.expect, "released")
    finally:
        child.kill()


async def test_holder_that_ignores_requests_times_out_then_sigkill_frees(
    tmp_path: Path, locker: FileLocker,
) -> None:
    upload_id = new_upload_id()
    child = Child(tmp_path, "hold-deaf", upload_id)
    try:
        (held_epoch,) = await anyio.to_thread.run_sync(child.expect, "held")
        with pytest.raises(LockTimeout):
            async with locker.hold(upload_id, on_release_requested=noop, timeout=0.5):
                pass
        await anyio.to_thread.run_sync(child.expect, "asked-ignored")  # it was asked
    finally:
        child.kill()  # SIGKILL: nothing of the child runs, the kernel drops its flock
    async with locker.hold(upload_id, on_release_requested=noop, timeout=10) as lease:
        assert lease.epoch > int(held_epoch)
    # The dead process's socket is cleaned up by the next process that starts.
    sockets = {p.name for p in (tmp_path / "locks" / ".s").iterdir()}
    later = FileLocker(tmp_path)
    async with later.hold(new_upload_id(), on_release_requested=noop, timeout=5):
        pass
    remaining = {p.name for p in (tmp_path / "locks" / ".s").iterdir()}
    await later.aclose()
    assert len(remaining - {f"{later.token}.alive", later.token}) < len(sockets)


async def test_newer_request_in_one_process_and_holder_in_another_many_times(
    tmp_path: Path, locker: FileLocker,
) -> None:
    """Release requests keep working turn after turn (no lost datagram leaves one stuck)."""
    for _ in range(5):
        upload_id = new_upload_id()
        child = Child(tmp_path, "hold", upload_id)
        try:
            await anyio.to_thread.run_sync(child.expect, "held")
            async with locker.hold(upload_id, on_release_requested=noop, timeout=10):
                pass
            await anyio.to_thread.run_sync(child.expect, "asked")
        finally:
            child.kill()


async def test_leader_election_across_processes(tmp_path: Path, locker: FileLocker) -> None:
    child = Child(tmp_path, "leader", "sweeper")
    try:
        assert await anyio.to_thread.run_sync(child.expect, "leader") == ["True"]
        assert await locker.leader("sweeper", ttl=1.0) is False
        assert await locker.leader("other", ttl=1.0) is True
    finally:
        child.kill()
    assert await locker.leader("sweeper", ttl=1.0) is True  # the dead leader's lock is free
    assert await locker.leader("sweeper", ttl=1.0) is True  # and stays ours
    second = Child(tmp_path, "leader", "sweeper")
    try:
        assert await anyio.to_thread.run_sync(second.expect, "leader") == ["False"]
    finally:
        second.kill()


async def test_job_claims_across_processes(tmp_path: Path, locker: FileLocker) -> None:
    upload_id = new_upload_id()
    child = Child(tmp_path, "claim", upload_id)
    try:
        assert await anyio.to_thread.run_sync(child.expect, "claim") == ["True"]
        assert await locker.claim(upload_id) is False
    finally:
        child.kill()
    assert await locker.claim(upload_id) is True
    assert await locker.claim(upload_id) is False  # once, even within one process
    await locker.unclaim(upload_id)
    assert not (tmp_path / "locks" / "jobs" / f"{upload_id}.lock").exists()


async def test_record_changes_are_atomic_across_processes(tmp_path: Path) -> None:
    state = FileStateStore(tmp_path, fsync=False, shared=True)
    upload_id = new_upload_id()
    await state.create(UploadInfo(id=upload_id, size=None, created_at=time.time()))
    n = 150
    children = [Child(tmp_path, "commits", upload_id, str(n)) for _ in range(2)]
    for c in children:
        await anyio.to_thread.run_sync(c.finish)
    info = await state.get(upload_id)
    assert info.offset == 2 * n, f"{2 * n - info.offset} compare-and-set commits were lost"
    with pytest.raises(OffsetMismatch):
        await state.commit(upload_id, epoch=1, expected=info.offset - 1, new=info.offset + 5)


async def test_completed_uploads_processed_once_by_racing_processes(tmp_path: Path) -> None:
    backend = embedded_backend(tmp_path, fsync=False, shared=True)
    ids = []
    for _ in range(30):
        info = UploadInfo(id=new_upload_id(), size=0, state=UploadState.COMPLETED,
                          created_at=time.time())
        await backend.state.create(info)
        ids.append(info.id)
    children = [Child(tmp_path, "process", "-", "3") for _ in range(2)]
    outputs = [await anyio.to_thread.run_sync(c.finish) for c in children]
    processed = Counter(line.split()[1] for out in outputs for line in out
                        if line.startswith("processing"))
    print("processed per child:", [sum(line.startswith("processing") for line in out)
                                   for out in outputs])
    assert set(processed) == set(ids)
    assert set(processed.values()) == {1}, [k for k, v in processed.items() if v > 1]
    for upload_id in ids:
        assert (await backend.state.get(upload_id)).state is UploadState.PROCESSED
    assert not os.listdir(tmp_path / "locks" / "jobs")



async def test_deep_upload_dir_uses_abstract_sockets(tmp_path: Path) -> None:
    """sockaddr_un holds 107 bytes: a deeper dir signals through the abstract namespace."""
    deep = tmp_path / ("d" * 120)
    holder, waiter = FileLocker(deep), FileLocker(deep)  # two tokens, as two processes
    assert holder._address(holder.token).startswith("\0")
    upload_id = new_upload_id()
    asked = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(holder.listen)
        tg.start_soon(waiter.listen)
        async with holder.hold(upload_id, on_release_requested=asked.set, timeout=5):
            async def take() -> None:
                async with waiter.hold(upload_id, on_release_requested=noop, timeout=10):
                    pass
            tg.start_soon(take)
            with anyio.fail_after(10):  # the request crossed over the socket
                await asked.wait()
        tg.cancel_scope.cancel()
    await holder.aclose()
    await waiter.aclose()
