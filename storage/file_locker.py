"""Upload locks shared by the processes of one host: flock(2) plus unix-socket signalling.

Layout under `<root>/locks/`::

    <id>.lock       the upload's lock while someone holds or wants it (empty)
    jobs/<id>.lock  a completion job being processed (see `FileLocker.claim`)
    .epoch          the fencing-token counter, shared by every process
    .leader-<name>  a leadership lock (the expiry sweeper's)
    .s/<token>      each process's unix datagram socket (release requests and "freed" news)
    .s/<token>.alive  flock-held for the process's lifetime: a free one marks a dead process

The kernel drops a dead process's flocks, so a SIGKILLed holder never blocks anyone.
A released lock file is unlinked by its holder before it lets go (no file per upload
lingers); whoever then locks the old, unlinked inode notices and starts over.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.to_thread

from .base import Lease, LockTimeout
from .ids import is_valid_upload_id

log = logging.getLogger(__name__)

POLL_SECONDS = 0.025  # a lost datagram costs at most this much: waiters also poll
REQUEST_EVERY = 0.5  # ask the holder again this often while waiting
_SUN_PATH_MAX = 100  # sockaddr_un holds 107 bytes; longer paths use the abstract namespace


def try_lock_file(path: Path) -> tuple[int | None, bytes]:
    """Exclusively lock `path` (created if needed) without blocking.

    Returns (fd, b"") when locked, or (None, content) when someone else holds it: the
    content is what the holder wrote into it. Call from a worker thread.
    """
    for _ in range(16):  # each retry means a holder unlinked the file meanwhile
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                return None, os.pread(fd, 128, 0)
            finally:
                os.close(fd)
        except BaseException:
            os.close(fd)
            raise
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        mine = os.fstat(fd)
        if current is not None and (current.st_ino, current.st_dev) == (mine.st_ino,
                                                                         mine.st_dev):
            return fd, b""
        os.close(fd)  # we locked an inode its holder had already unlinked: start over
    return None, b""


def unlock_file(path: Path, fd: int) -> None:
    """Unlink, then let go: a waiter holding the old inode sees it is stale."""
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    finally:
        os.close(fd)


@dataclass
class _Holder:
    """A task of this process that holds, or is acquiring, an upload's lock."""

    on_release_requested: Callable[[], None]
    released: anyio.Event = field(default_factory=anyio.Event)
    lease: Lease | None = None  # set once the cross-process lock is ours
    fd: int | None = None
    requesters: set[str] = field(default_factory=set)  # tokens to tell when we let go


class FileLocker:
    """The Locker of several server processes sharing one upload dir on one host.

    Inside a process a newer request asks the holder to let go directly (as
    MemoryLocker does); across processes it sends "release <id>" to the socket of
    every other process using the directory (a few: the workers of one host), and
    the one holding the lock calls the holder's on_release_requested. Once it has let
    go, the holder answers "freed <id>" so the waiter retries at once. Epochs (fencing
    tokens) come from one counter file shared by every process, floored at the wall
    clock in microseconds, so they stay above any epoch already committed even if the
    counter is lost or was another locker's.
    """

    def __init__(self, root: Path) -> None:
        self.dir = root / "locks"
        self.jobs_dir = self.dir / "jobs"
        self.sock_dir = self.dir / ".s"
        for d in (self.dir, self.jobs_dir, self.sock_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.token = secrets.token_hex(8)
        self._holders: dict[str, _Holder] = {}
        self._freed: dict[str, anyio.Event] = {}
        self._leaders: dict[str, int] = {}
        self._claims: dict[str, int] = {}
        self._epoch_fd: int | None = None
        self._epoch_mutex = threading.Lock()
        self._sock: socket.socket | None = None
        self._alive_fd: int | None = None
        self._pid = os.getpid()
        st = os.stat(self.sock_dir)
        self._abstract_prefix = "\0tusd-py/" + hashlib.sha256(
            f"{st.st_dev}:{st.st_ino}".encode()).hexdigest()[:16] + "/"

    # --- signalling ------------------------------------------------------------------
    def _address(self, token: str) -> str:
        path = str(self.sock_dir / token)
        if len(path.encode()) <= _SUN_PATH_MAX:
            return path
        return self._abstract_prefix + token

    def _socket(self) -> socket.socket:
        """This process's socket, bound on first use (after a fork, a fresh one)."""
        if self._sock is not None and self._pid == os.getpid():
            return self._sock
        self._pid = os.getpid()
        self._holders.clear()
        self._leaders.clear()
        self._claims.clear()
        self._epoch_fd = None
        self.token = secrets.token_hex(8)
        self._reap_dead()
        alive = self.sock_dir / f"{self.token}.alive"
        fd = os.open(alive, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._alive_fd = fd
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        address = self._address(self.token)
        if not address.startswith("\0"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(address)
        sock.bind(address)
        sock.setblocking(False)
        self._sock = sock
        return sock

    def _reap_dead(self) -> None:
        """Remove the sockets of processes that are gone (their .alive lock is free)."""
        try:
            names = os.listdir(self.sock_dir)
        except FileNotFoundError:
            return
        for name in names:
            if not name.endswith(".alive"):
                continue
            path = self.sock_dir / name
            fd, _ = try_lock_file(path)
            if fd is None:
                continue  # alive
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.sock_dir / name.removesuffix(".alive"))
            unlock_file(path, fd)

    def _send(self, token: str, message: str) -> None:
        if not token or token == self.token:
            return
        try:
            self._socket().sendto(message.encode(), self._address(token))
        except OSError as exc:
            # Gone (ENOENT / ECONNREFUSED) or its queue is full: waiters also poll.
            if exc.errno not in (errno.ENOENT, errno.ECONNREFUSED, errno.EAGAIN,
                                 errno.ENOBUFS):
                log.warning("lock.signal_failed", extra={"fields": {"error": str(exc)}})

    def _handle(self, message: bytes) -> None:
        try:
            kind, upload_id, *rest = message.decode().split()
        except ValueError:
            return
        if kind == "release":
            holder = self._holders.get(upload_id)
            # Requests go to every process; only the holder's acts on them.
            if holder is not None and holder.lease is not None:
                if rest:
                    holder.requesters.add(rest[0])
                holder.on_release_requested()
        elif kind == "freed":
            event = self._freed.pop(upload_id, None)
            if event is not None:
                event.set()

    async def listen(self) -> None:
        """Background service: turn other processes' messages into callbacks and wake-ups."""
        while True:
            sock = self._socket()
            await anyio.wait_readable(sock)
            while True:
                try:
                    message = sock.recv(512)
                except (BlockingIOError, InterruptedError):
                    break
                self._handle(message)

    # --- epochs ------------------------------------------------------------------------
    def _next_epoch(self) -> int:
        with self._epoch_mutex:  # flock does not exclude threads sharing one fd
            if self._epoch_fd is None:
                self._epoch_fd = os.open(self.dir / ".epoch",
                                         os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
            fd = self._epoch_fd
            fcntl.flock(fd, fcntl.LOCK_EX)  # held by anyone for a few microseconds
            try:
                raw = os.pread(fd, 32, 0).strip()
                stored = int(raw) if raw.isdigit() else 0
                epoch = max(stored + 1, time.time_ns() // 1000)
                os.pwrite(fd, f"{epoch:020d}\n".encode(), 0)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
            return epoch

    # --- Locker protocol -------------------------------------------------------------
    def _lock_path(self, upload_id: str) -> Path:
        if not is_valid_upload_id(upload_id):
            raise ValueError(f"invalid upload id {upload_id!r}")
        return self.dir / f"{upload_id}.lock"

    def _peers(self) -> list[str]:
        """Tokens of the other processes using this directory (live or not yet reaped)."""
        return [name.removesuffix(".alive") for name in os.listdir(self.sock_dir)
                if name.endswith(".alive") and name != f"{self.token}.alive"]

    def _try_take(self, path: Path, ask: bool) -> tuple[int, int] | list[str]:
        """In a thread: (fd, epoch) when locked, else whom to ask (if `ask`).

        Lock files stay empty: writing the holder's name into each would cost a block
        allocation per lock; a release request goes to every process instead (a few).
        """
        fd, _ = try_lock_file(path)
        if fd is None:
            return self._peers() if ask else []
        try:
            epoch = self._next_epoch()
        except BaseException:
            unlock_file(path, fd)
            raise
        return fd, epoch

    async def _acquire(self, upload_id: str, mine: _Holder, path: Path) -> None:
        last_request = -REQUEST_EVERY
        while True:
            ask = anyio.current_time() - last_request >= REQUEST_EVERY
            got = await anyio.to_thread.run_sync(self._try_take, path, ask)
            if isinstance(got, tuple):
                mine.fd, epoch = got
                mine.lease = Lease(upload_id, epoch)
                return
            freed = self._freed.setdefault(upload_id, anyio.Event())
            if ask:
                for token in got:
                    self._send(token, f"release {upload_id} {self.token}")
                last_request = anyio.current_time()
            with anyio.move_on_after(POLL_SECONDS):
                await freed.wait()

    async def confirm(self, lease: Lease) -> bool:
        """A flock is held until this process lets go: only our own record can be stale."""
        holder = self._holders.get(lease.upload_id)
        return holder is not None and holder.lease is lease and not lease.lost.is_set()

    @asynccontextmanager
    async def hold(
        self, upload_id: str, *, on_release_requested: Callable[[], None], timeout: float,
    ) -> AsyncIterator[Lease]:
        path = self._lock_path(upload_id)
        self._socket()
        mine = _Holder(on_release_requested)
        with anyio.move_on_after(timeout):
            # This process first: the newest request asks the current one to let go.
            while (other := self._holders.get(upload_id)) is not None:
                other.on_release_requested()
                await other.released.wait()
            self._holders[upload_id] = mine  # no await since the check: atomic
            try:
                await self._acquire(upload_id, mine, path)
            finally:
                if mine.lease is None:
                    self._forget(upload_id, mine)
        if mine.lease is None:
            raise LockTimeout(upload_id)
        try:
            yield mine.lease
        finally:
            fd, mine.fd = mine.fd, None
            try:
                if fd is not None:
                    with anyio.CancelScope(shield=True):
                        await anyio.to_thread.run_sync(unlock_file, path, fd)
            finally:
                self._forget(upload_id, mine)
                for token in mine.requesters:
                    self._send(token, f"freed {upload_id}")

    def _forget(self, upload_id: str, mine: _Holder) -> None:
        if self._holders.get(upload_id) is mine:
            del self._holders[upload_id]
        mine.released.set()

    async def leader(self, name: str, ttl: float) -> bool:
        """Leadership lasts as long as the process: the kernel frees it when it dies."""
        self._socket()  # (re)initialise after a fork
        if name in self._leaders:
            return True

        def take() -> int | None:
            path = self.dir / f".leader-{name}"
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return None
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {self.token}\n".encode())
            return fd

        fd = await anyio.to_thread.run_sync(take)
        if fd is None:
            return False
        self._leaders[name] = fd
        return True

    # --- job claims (the outbox queue's) -----------------------------------------------
    async def claim(self, upload_id: str) -> bool:
        """Take the upload's processing claim without waiting; False if anyone has it."""
        self._socket()
        if upload_id in self._claims:
            return False
        path = self.jobs_dir / f"{upload_id}.lock"
        fd, _ = await anyio.to_thread.run_sync(try_lock_file, path)
        if fd is None:
            return False
        if upload_id in self._claims:  # another task of ours won meanwhile (cannot, but)
            await anyio.to_thread.run_sync(os.close, fd)
            return False
        self._claims[upload_id] = fd
        return True

    async def unclaim(self, upload_id: str) -> None:
        fd = self._claims.pop(upload_id, None)
        if fd is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(unlock_file,
                                               self.jobs_dir / f"{upload_id}.lock", fd)

    async def aclose(self) -> None:
        for fd in [*self._leaders.values(), *self._claims.values()]:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._leaders.clear()
        self._claims.clear()
        if self._sock is not None and self._pid == os.getpid():
            self._sock.close()
            address = self._address(self.token)
            if not address.startswith("\0"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(address)
            if self._alive_fd is not None:
                unlock_file(self.sock_dir / f"{self.token}.alive", self._alive_fd)
            self._sock = self._alive_fd = None
        if self._epoch_fd is not None:
            os.close(self._epoch_fd)
            self._epoch_fd = None
