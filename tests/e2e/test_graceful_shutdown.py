"""Graceful shutdown on SIGTERM: stop accepting, let every in-flight PATCH save its bytes
and answer, release the upload locks, exit 0 -- within --shutdown-timeout.

Real `tusd-py serve` processes (one, two sharing Redis and an upload dir, or `--workers 2`)
receive a real SIGTERM while a raw-socket client is streaming a body. What is asserted is
what a tus client and an operator can observe: the 503 answer and its Upload-Offset, the
process exit codes, the log, the HEAD offset after the restart, the bytes on disk and the
sha256 of the finished upload.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import pytest

from tests.conftest import ServerProcess
from tests.e2e.rawhttp import (
    KiB,
    MiB,
    Pattern,
    RawConn,
    Response,
    create_upload,
    download_sha256,
    head_offset,
    patch,
    resume_and_check,
    upload_id,
    wait_state,
)
from tests.e2e.support import Start, on, process_marker
from tests.tusd_py.helpers import LogWatch, wait_for

SHUTDOWN_TIMEOUT = 5.0
EXIT_BOUND = SHUTDOWN_TIMEOUT + 10.0  # liveness bound for the exit, not a performance claim


# --------------------------------------------------------------------------- helpers


class PacedSender:
    """Streams a PATCH body from a thread, a chunk every `pause` seconds, until the body
    ends, the server stops listening, or stop() is called. `sent` counts bytes handed to
    the kernel in full."""

    def __init__(self, conn: RawConn, chunks: Iterable[bytes], pause: float) -> None:
        self.conn = conn
        self.sent = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._progress = threading.Condition()
        self._chunks = chunks
        self._pause = pause
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for c in self._chunks:
                if self._stop.is_set():
                    return
                self.conn.sock.sendall(c)
                with self._progress:
                    self.sent += len(c)
                    self._progress.notify_all()
                self._stop.wait(self._pause)  # the pacing is the behaviour (a steady client)
        except OSError as exc:  # the server answered and closed: expected after SIGTERM
            self.error = exc
        finally:
            with self._progress:
                self._progress.notify_all()

    def wait_sent(self, at_least: int, timeout: float = 30.0) -> None:
        with self._progress:
            self._progress.wait_for(
                lambda: self.sent >= at_least or not self._thread.is_alive(), timeout)
        assert self.sent >= at_least, (
            f"only {self.sent} bytes sent (sender alive: {self._thread.is_alive()}, "
            f"error: {self.error!r})")

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(10)
        assert not self._thread.is_alive(), "sender thread hung"
        return self.sent


def sigterm(server: ServerProcess) -> float:
    """Send SIGTERM; returns when it was sent."""
    assert server.proc is not None and server.proc.poll() is None
    t0 = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    return t0


def wait_exit(server: ServerProcess, t0: float,
              timeout: float = EXIT_BOUND) -> tuple[int, float]:
    """The exit code, and the seconds from SIGTERM (sent at t0) to the exit."""
    assert server.proc is not None
    try:
        code = server.proc.wait(max(t0 + timeout - time.monotonic(), 0.1))
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()
        pytest.fail(f"server still running {timeout}s after SIGTERM "
                    f"(--shutdown-timeout {SHUTDOWN_TIMEOUT}):\n{server.log()[-4000:]}")
    return code, time.monotonic() - t0


def read_answer(conn: RawConn, timeout: float = 15.0) -> Response | None:
    """The server's answer to an interrupted PATCH, or None if the connection closed
    (or was reset) before one could be read."""
    try:
        return conn.read_response(timeout)
    except (ConnectionError, OSError):
        return None


def assert_shutting_down(r: Response) -> int:
    """A 503 ERR_SERVER_SHUTTING_DOWN with the saved offset; returns that offset."""
    assert r.status == 503, (r.status, r.headers, r.body)
    assert r.headers.get("tus-resumable") == "1.0.0", r.headers
    assert r.body.startswith(b"ERR_SERVER_SHUTTING_DOWN: "), r.body
    assert r.body.rstrip(b"\n").count(b"\n") == 0, r.body
    assert r.headers.get("retry-after", "").isdigit(), r.headers
    return int(r.headers["upload-offset"])


def log_lines(log: str, name: str, uid: str | None = None) -> list[str]:
    pattern = rf"\s{re.escape(name)}\s" + (rf".*\bupload_id={uid}\b" if uid else "")
    return [line for line in log.splitlines() if re.search(pattern, line)]


def assert_drained(log: str, uid: str) -> None:
    """The log tells the story: draining, the transfer interrupted (shutting_down), its 503."""
    draining = log_lines(log, "server.draining")
    assert draining, f"no server.draining in the log:\n{log[-4000:]}"
    # One line per process; with workers, the one holding the PATCH had a transfer.
    assert any(re.search(r"\btransfers=[1-9]", line) for line in draining), draining
    interrupted = log_lines(log, "upload.interrupted", uid)
    assert any("reason=shutting_down" in line for line in interrupted), interrupted
    failed = log_lines(log, "request.failed", uid)
    assert any("status=503" in line and "ERR_SERVER_SHUTTING_DOWN" in line
               for line in failed), failed
    assert "Traceback" not in log, log[-4000:]
    print("\n".join(draining + interrupted + failed))


def stored_size(upload_dir: Path, uid: str) -> int:
    """Size of the upload's data file on disk (the file named by the upload id)."""
    files = [p for p in upload_dir.rglob(uid) if p.is_file()]
    assert len(files) == 1, files
    return files[0].stat().st_size


# ----------------------------------------------------- 1. SIGTERM mid-PATCH, one process


@pytest.mark.parametrize("client", ["streaming", "stalled"])
def test_sigterm_mid_patch_saves_answers_and_exits_0(start_server: Start, client: str) -> None:
    """`streaming`: the body is still arriving when SIGTERM lands. `stalled`: the client
    sent part of the body and went quiet (a half-open PATCH that would otherwise hold the
    process until --network-timeout)."""
    server = start_server("--shutdown-timeout", str(SHUTDOWN_TIMEOUT),
                          "--network-timeout", "60")
    data = Pattern(128 * MiB, seed=f"sigterm-{client}")
    url = create_upload(server, data.size)
    uid = upload_id(url)

    conn = RawConn(url, timeout=30)
    conn.start_patch(0, data.size)
    # ~8 MiB/s: SIGTERM lands before the first 32 MiB checkpoint, after a 2 s one at most.
    sender = PacedSender(conn, data.chunks(chunk=256 * KiB), pause=0.03)
    sender.wait_sent(12 * MiB)
    if client == "stalled":
        sender.stop()
        conn.wait_delivered()  # the server has taken in everything; the client says nothing

    t0 = sigterm(server)
    answer = read_answer(conn)
    sent = sender.stop()
    conn.close()
    code, took = wait_exit(server, t0)
    print(f"[{client}] sent {sent}; answer {answer.status if answer else None} "
          f"{answer.headers.get('upload-offset') if answer else ''}; "
          f"exit code {code} {took:.2f}s after SIGTERM; sender error {sender.error!r}")
    log = server.log()
    assert_drained(log, uid)

    # Bytes durably stored == the committed offset (the drain checkpointed and trimmed).
    on_disk = stored_size(server.upload_dir, uid)
    server.start()
    offset = head_offset(url)
    print(f"[{client}] after restart: offset {offset}, {on_disk} bytes on disk")
    assert 0 < offset <= sent, (offset, sent)
    assert offset == on_disk, (offset, on_disk)
    if answer is not None:
        assert assert_shutting_down(answer) == offset
    if client == "stalled":
        assert answer is not None, "an idle connection must hear the 503"
        assert offset == sent, "a quiet client's bytes were all received, all must be kept"
    resume_and_check(server, url, data, offset)

    assert code == 0, (
        f"server exited with {code} after SIGTERM, not 0 (a negative code is death by that "
        f"signal); log tail:\n{log[-1500:]}")


# ------------------------------------------- 2. rolling restart of one of two instances


def test_rolling_restart_client_resumes_on_other_instance(
    start_server: Start, redis_url: str, tmp_path: Path,
) -> None:
    """Two instances share Redis and an upload dir. A client uploads in 8 MiB PATCHes
    through A; A gets SIGTERM in the middle of one. The client hears 503, asks B for the
    offset (HEAD) and finishes there, like tus-js-client behind a load balancer."""
    shared = tmp_path / "shared"
    flags = ("--redis-url", redis_url, "--shutdown-timeout", str(SHUTDOWN_TIMEOUT),
             "--network-timeout", "60")
    a = start_server(*flags, upload_dir=shared)
    b = start_server(*flags, upload_dir=shared)
    data = Pattern(48 * MiB, seed="rolling")
    chunk = 8 * MiB
    url = create_upload(a, data.size)
    uid = upload_id(url)

    # Two whole chunks through A.
    for start in (0, chunk):
        r = patch(on(a, url), start, data.chunks(start, start + chunk), chunk, timeout=30)
        assert r.status == 204, (r.status, r.headers, r.body)
    # The third is streaming through A when A is told to stop.
    conn = RawConn(on(a, url), timeout=30)
    conn.start_patch(2 * chunk, chunk)
    sender = PacedSender(conn, data.chunks(2 * chunk, 3 * chunk, chunk=128 * KiB), pause=0.03)
    sender.wait_sent(3 * MiB)
    t0 = sigterm(a)
    answer = read_answer(conn)
    sent = 2 * chunk + sender.stop()
    conn.close()

    # The client moves to B: HEAD, then PATCH from there (A may still be exiting).
    t1 = time.monotonic()
    offset = head_offset(on(b, url), timeout=15)
    head_s = time.monotonic() - t1
    code, took = wait_exit(a, t0)
    print(f"A answered {answer.status if answer else None}, exited {code} in {took:.2f}s; "
          f"HEAD on B {head_s * 1000:.0f} ms after A's answer: offset {offset} of {sent} sent")
    assert_drained(a.log(), uid)
    assert 2 * chunk < offset <= sent, (offset, sent)
    if answer is not None:
        assert assert_shutting_down(answer) == offset

    r = patch(on(b, url), offset, data.chunks(offset), data.size - offset, timeout=60)
    assert r.status == 204, (r.status, r.headers, r.body)
    assert int(r.headers["upload-offset"]) == data.size
    assert head_offset(on(b, url)) == data.size
    assert download_sha256(on(b, url)) == (data.sha256(), data.size)
    info = wait_state(b, url, {"processed"}, timeout=20)
    assert info["offset"] == data.size, info
    # B keeps serving; restarting A on the same dir sees the same finished upload.
    a.start()
    assert head_offset(on(a, url)) == data.size
    process_marker([a, b])  # a duplicate processing run would show up by now
    done = [line for s in (a, b) for line in log_lines(s.log(), "processing.done", uid)]
    assert len(done) == 1, done

    assert code == 0, f"A exited with {code} after SIGTERM, not 0; log tail:\n{a.log()[-1500:]}"


# --------------------------------------------------- 3. --workers 2: SIGTERM the master


# Instrumentation only: makes uvicorn's master log each worker's exit code (it joins its
# workers, so nobody else can see them). Behaviour is unchanged.
SITECUSTOMIZE = '''
import multiprocessing.process as _mp
import sys as _sys

_join = _mp.BaseProcess.join


def join(self, timeout=None):
    _join(self, timeout)
    if self.exitcode is not None and not getattr(self, "_exit_reported", False):
        self._exit_reported = True
        print(f"test.child_exit pid={self.pid} exitcode={self.exitcode}", file=_sys.stderr,
              flush=True)


_mp.BaseProcess.join = join
'''


def children(pid: int) -> dict[int, str]:
    """The processes whose parent is `pid`, with their command lines."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(
                    b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
    return found


def test_workers_sigterm_master_all_exit_0_bytes_kept(
    start_server: Start, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(site), *filter(None, [os.environ.get("PYTHONPATH")])]))
    shared = tmp_path / "shared"
    server = start_server("--workers", "2", "--redis-url", redis_url,
                          "--shutdown-timeout", str(SHUTDOWN_TIMEOUT), "--network-timeout", "60",
                          upload_dir=shared)
    assert server.proc is not None
    # The port answers once the master listens; wait until both workers serve.
    LogWatch(server, from_start=True).wait("Application startup complete", count=2,
                                           timeout=20)
    spawned = children(server.proc.pid)  # the workers, and multiprocessing's tracker
    workers = [pid for pid, cmd in spawned.items() if "spawn_main" in cmd]
    print(f"master {server.proc.pid}, workers {workers}, all children {list(spawned)}")
    assert len(workers) == 2, spawned

    data = Pattern(96 * MiB, seed="workers")
    url = create_upload(server, data.size)
    uid = upload_id(url)
    conn = RawConn(url, timeout=30)
    conn.start_patch(0, data.size)
    sender = PacedSender(conn, data.chunks(chunk=256 * KiB), pause=0.03)
    sender.wait_sent(12 * MiB)

    t0 = sigterm(server)
    answer = read_answer(conn)
    sent = sender.stop()
    conn.close()
    code, took = wait_exit(server, t0)
    log = server.log()
    # The resource tracker exits when it sees EOF; no event tells: the shared poll.
    wait_for(lambda: not [pid for pid in spawned if Path(f"/proc/{pid}").exists()],
             timeout=5, interval=0.05)
    still = [pid for pid in spawned if Path(f"/proc/{pid}").exists()]
    exits = dict(re.findall(r"test\.child_exit pid=(\d+) exitcode=(-?\d+)", log))
    print(f"answer {answer.status if answer else None}; master exited {code} in {took:.2f}s; "
          f"workers' exit codes {exits}")
    print("\n".join(line for line in log.splitlines()
                    if re.search(r"draining|interrupted|request\.failed|child|Finished", line)))
    assert not still, f"children still running after the master exited: {still}"
    assert_drained(log, uid)

    # The in-flight PATCH's bytes are kept: a fresh (single-process) server sees them.
    server.args = ["--redis-url", redis_url]
    server.start()
    offset = head_offset(url)
    print(f"sent {sent}, offset after restart {offset}")
    assert 0 < offset <= sent, (offset, sent)
    if answer is not None:
        assert assert_shutting_down(answer) == offset
    resume_and_check(server, url, data, offset)

    assert code == 0, f"master exited with {code}, not 0; log tail:\n{log[-1500:]}"
    assert sorted(int(p) for p in exits) == sorted(workers), (exits, workers)
    bad = {pid: c for pid, c in exits.items() if c != "0"}
    assert not bad, (
        f"workers exited with {bad} after SIGTERM, not 0 (negative: killed by that signal)")
