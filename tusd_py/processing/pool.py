"""A warm pool of thumbnail worker processes (`python -m thumbnailer.worker`).

Starting `python -m thumbnailer` per image costs an interpreter, Pillow, libheif and libavif
every time; a pool keeps `--processors` workers alive and sends each one image job at a time
over a JSON-lines pipe (the protocol is described in thumbnailer/worker.py). The isolation of
a child process stays:

* each worker sets RLIMIT_AS (--processing-memory-mb) on itself before importing anything,
  so its whole life is bounded; a job that runs out of memory fails with that reason and the
  worker is replaced;
* each job runs under an alarm in the worker (--processing-timeout: the image's fault, a
  permanent failure) and a hard deadline here (a little longer): a worker that overruns it
  is killed and replaced, and the job is retried like any crash;
* a worker that dies mid-job (a codec segfault, kill -9) is replaced, and the job fails
  with a retryable error naming the signal: the completion runner retries it on a fresh
  worker and dead-letters it after --processing-attempts;
* workers are recycled after --thumbnail-jobs-per-worker jobs, and when their resident
  memory after a job (heap trimmed) stays above half the limit.

Everything here is async (anyio processes and streams): the event loop is never blocked,
and no upload lock is held (the completion runner holds none while processing).
Workers are started with the processors (`run`), and a job that finds none (the pool not
started, or one being replaced) starts its own.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream

from ..ops import logs, metrics

START_TIMEOUT = 60.0  # seconds a worker may take to import its decoders and say ready
KILL_GRACE = 5.0  # seconds past the job's own alarm before the worker is killed
MAX_REPLY = 16 << 20  # bytes of one reply line
RSS_RECYCLE_FRACTION = 0.5  # of the address-space limit, resident after a job


class WorkerDied(RuntimeError):
    """The worker process ended (or broke the protocol) during a job."""


class JobTimeout(TimeoutError):
    """The worker ran past the job's hard deadline and was killed."""


class WorkerStartFailed(RuntimeError):
    """A worker process could not be started or did not get ready."""


@dataclass(eq=False)
class _Worker:
    proc: anyio.abc.Process
    replies: BufferedByteReceiveStream
    started: float = field(default_factory=time.monotonic)
    jobs: int = 0
    closed: bool = False

    @property
    def pid(self) -> int:
        return self.proc.pid


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


class ThumbnailPool:
    def __init__(self, size: int, memory_mb: int, timeout: float, jobs_per_worker: int,
                 command: Callable[[int], list[str]] | None = None,
                 grace: float = KILL_GRACE) -> None:
        self.size = max(1, size)
        self.memory_mb = memory_mb
        self.timeout = timeout
        self.jobs_per_worker = jobs_per_worker
        self.grace = grace
        self._command = command or self._default_command
        self._idle: list[_Worker] = []
        self._busy: set[_Worker] = set()
        self._starting = 0
        self._changed = anyio.Event()
        self._tg: anyio.abc.TaskGroup | None = None
        self._closed = False
        self._ids = 0

    # --- lifecycle ---------------------------------------------------------------------

    def _default_command(self, parent: int) -> list[str]:
        return [sys.executable, "-m", "thumbnailer.worker", "--memory-mb", str(self.memory_mb),
                "--parent-pid", str(parent)]

    @property
    def alive(self) -> int:
        return len(self._idle) + len(self._busy) + self._starting

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
                  ) -> None:
        """Runs beside the processors: warms `size` workers, replaces retired ones in the
        background, and stops every worker when cancelled (server shutdown)."""
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                for _ in range(self.size - self.alive):
                    tg.start_soon(self._replenish)
                task_status.started()
                await anyio.sleep_forever()
        finally:
            self._tg = None
            with anyio.CancelScope(shield=True):
                await self.aclose()

    async def aclose(self) -> None:
        self._closed = True
        workers = [*self._idle, *self._busy]
        self._idle.clear()
        for worker in workers:
            await self._stop(worker, kill=True)
        self._gauges()

    async def _replenish(self) -> None:
        if self._closed or self.alive >= self.size:
            return
        try:
            worker = await self._spawn()
        except WorkerStartFailed:
            return  # logged; the next job that needs a worker tries again and reports it
        if self._closed:
            await self._stop(worker, kill=True)
            return
        self._idle.append(worker)
        self._notify()

    async def _spawn(self) -> _Worker:
        self._starting += 1
        self._gauges()
        started = time.monotonic()
        try:
            proc = await anyio.open_process(self._command(os.getpid()), stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, stderr=None)
        except OSError as exc:
            self._starting -= 1
            self._gauges()
            logs.event("thumbnail.worker_start_failed", level=logging.ERROR, error=str(exc))
            raise WorkerStartFailed(f"cannot start a thumbnail worker: {exc}") from exc
        assert proc.stdout is not None
        worker = _Worker(proc, BufferedByteReceiveStream(proc.stdout))
        try:
            with anyio.fail_after(START_TIMEOUT):
                hello = await self._read(worker)
            if not hello.get("ready"):
                raise WorkerDied(f"unexpected first line {hello!r}")
        except (WorkerDied, TimeoutError) as exc:
            code = await self._stop(worker, kill=True)
            self._starting -= 1
            self._gauges()
            why = (f"not ready in {START_TIMEOUT:g} s" if isinstance(exc, TimeoutError)
                   else _describe_exit(code) if code else str(exc))
            logs.event("thumbnail.worker_start_failed", level=logging.ERROR, pid=worker.pid,
                       error=why, memory_mb=self.memory_mb)
            raise WorkerStartFailed(
                f"thumbnail worker could not start ({why}; address-space limit "
                f"{self.memory_mb} MB, --processing-memory-mb)") from None
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._stop(worker, kill=True)
            self._starting -= 1
            self._gauges()
            raise
        self._starting -= 1
        logs.event("thumbnail.worker_started", pid=worker.pid, memory_mb=self.memory_mb,
                   vm_mb=hello.get("vm_mb"), rss_mb=hello.get("rss_mb"),
                   seconds=round(time.monotonic() - started, 3))
        return worker

    async def _stop(self, worker: _Worker, kill: bool) -> int | None:
        """End a worker: EOF on its stdin (it leaves after its current reply) or SIGKILL."""
        proc = worker.proc
        self._busy.discard(worker)
        if worker in self._idle:
            self._idle.remove(worker)
        if proc.returncode is None:
            if not kill and proc.stdin is not None:
                with contextlib.suppress(OSError, anyio.BrokenResourceError,
                                         anyio.ClosedResourceError):
                    await proc.stdin.aclose()
                with anyio.move_on_after(2.0):
                    await proc.wait()
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        code = await proc.wait()
        if not worker.closed:
            worker.closed = True
            await proc.aclose()
        return code

    async def _retire(self, worker: _Worker, reason: str, how: str) -> None:
        """Take a worker out of service ("kill", "close": EOF, it leaves by itself; "gone":
        already stopped) and start its replacement, in the background when the pool runs;
        without it the stop happens here and the next job starts a worker."""
        self._busy.discard(worker)
        metrics.thumbnail_workers_restarted.labels(reason).inc()
        logs.event("thumbnail.worker_retired", level=logging.INFO if reason == "recycled"
                   else logging.WARNING, pid=worker.pid, reason=reason, jobs=worker.jobs,
                   seconds=round(time.monotonic() - worker.started, 1))
        if how != "gone":
            if self._tg is not None:
                self._tg.start_soon(self._stop, worker, how == "kill")
            else:
                with anyio.CancelScope(shield=True):
                    await self._stop(worker, how == "kill")
        if self._tg is not None:
            self._tg.start_soon(self._replenish)
        self._notify()

    # --- jobs --------------------------------------------------------------------------

    async def _checkout(self) -> _Worker:
        metrics.thumbnail_queue_depth.inc()
        try:
            while True:
                if self._closed:
                    raise RuntimeError("the thumbnail pool is shut down")
                while self._idle:
                    worker = self._idle.pop()
                    if worker.proc.returncode is None:
                        self._busy.add(worker)
                        return worker
                    await self._retire(worker, "crashed", "kill")  # died while idle
                if self.alive < self.size:
                    worker = await self._spawn()
                    self._busy.add(worker)
                    return worker
                changed = self._changed
                await changed.wait()
        finally:
            metrics.thumbnail_queue_depth.dec()
            self._gauges()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()
        self._gauges()

    def _gauges(self) -> None:
        metrics.thumbnail_workers.labels("idle").set(len(self._idle))
        metrics.thumbnail_workers.labels("busy").set(len(self._busy))
        metrics.thumbnail_workers.labels("starting").set(self._starting)

    async def _read(self, worker: _Worker) -> dict[str, Any]:
        import json

        try:
            line = await worker.replies.receive_until(b"\n", MAX_REPLY)
        except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError,
                anyio.ClosedResourceError) as exc:
            raise WorkerDied("its output ended") from exc
        except anyio.DelimiterNotFound as exc:
            raise WorkerDied("a reply line too long") from exc
        try:
            doc: dict[str, Any] = json.loads(line)
        except ValueError as exc:
            raise WorkerDied(f"not a JSON reply: {line[:200]!r}") from exc
        return doc

    async def submit(self, job: dict[str, Any], upload_id: str | None = None) -> dict[str, Any]:
        """Run one job in a worker; the worker's reply ({"ok": ..., ...}).

        Raises WorkerDied (the worker ended mid-job: retryable), JobTimeout (killed past the
        hard deadline: retryable) or WorkerStartFailed."""
        import json

        worker = await self._checkout()
        self._ids += 1
        job = {**job, "id": str(self._ids), "timeout": self.timeout}
        worker.jobs += 1
        logs.event("thumbnail.job_started", upload_id, pid=worker.pid, job=worker.jobs)
        deadline = self.timeout + self.grace if self.timeout > 0 else None
        try:
            assert worker.proc.stdin is not None
            with anyio.move_on_after(deadline) as scope:
                try:
                    await worker.proc.stdin.send(json.dumps(job).encode() + b"\n")
                except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
                    raise WorkerDied("its input is closed") from exc
                reply = await self._read(worker)
        except WorkerDied as exc:
            with anyio.CancelScope(shield=True):
                code = await self._stop(worker, kill=True)
                await self._retire(worker, "crashed", "gone")
            metrics.thumbnail_jobs.labels("crashed").inc()
            how = _describe_exit(code) if code is not None and code != 0 else str(exc)
            raise WorkerDied(f"thumbnail worker pid={worker.pid} {how} during the job "
                             f"(its job number {worker.jobs})") from None
        except BaseException:  # cancelled (shutdown): the worker is mid-job, unusable
            with anyio.CancelScope(shield=True):
                await self._stop(worker, kill=True)
                await self._retire(worker, "cancelled", "gone")
            raise
        if scope.cancelled_caught:
            with anyio.CancelScope(shield=True):
                await self._stop(worker, kill=True)
                await self._retire(worker, "timeout", "gone")
            metrics.thumbnail_jobs.labels("killed").inc()
            raise JobTimeout(f"thumbnailer ran over {self.timeout:g} s; its worker "
                             f"pid={worker.pid} was killed")
        if reply.get("id") != job["id"]:
            with anyio.CancelScope(shield=True):
                await self._stop(worker, kill=True)
                await self._retire(worker, "crashed", "gone")
            raise WorkerDied(f"thumbnail worker pid={worker.pid} answered job "
                             f"{reply.get('id')!r} for job {job['id']!r}")
        kind = "ok" if reply.get("ok") else str(reply.get("kind") or "crash")
        metrics.thumbnail_jobs.labels(kind).inc()
        rss = reply.get("rss_mb") or 0
        if reply.get("exit"):
            await self._retire(worker, {"timeout": "timeout", "memory": "memory"}.get(
                kind, "crashed"), "close")
        elif self.memory_mb > 0 and rss > self.memory_mb * RSS_RECYCLE_FRACTION:
            await self._retire(worker, "memory", "close")
        elif self.jobs_per_worker > 0 and worker.jobs >= self.jobs_per_worker:
            await self._retire(worker, "recycled", "close")
        else:
            self._busy.discard(worker)
            self._idle.append(worker)
            self._notify()
        return reply
