"""Upload records as `<id>.info` JSON files beside the data, replaced atomically."""

from __future__ import annotations

import fcntl
import os
import threading
import weakref
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import anyio.to_thread

from . import records
from .base import StorageError, UploadInfo, UploadNotFound, UploadState
from .fsync import DirectorySync, fsync_path
from .ids import is_valid_upload_id

CACHE_SIZE = 10_000
STRIPES = 256  # record locks of a shared store: flocked files <dir>/.locks/00 .. ff


class FileStateStore(records.DocumentRecords):
    """The embedded state store.

    Every change is written to a temp file, fsynced and renamed over the old one,
    so a crash leaves either the old or the new record, never a torn one.

    By default one process owns the directory: read-modify-write cycles are
    serialised per upload by an in-process lock and records are cached. With
    `shared=True` several processes of one host use the directory at once: each
    change (read, check, write) is one worker-thread call under an flock on the
    record's stripe file, and every read goes to the file (no cache could know what
    another process wrote).
    """

    def __init__(self, root: Path, *, fsync: bool = True, shared: bool = False) -> None:
        self.dir = root / "uploads"
        self.fsync = fsync
        self.shared = shared
        self.dir.mkdir(parents=True, exist_ok=True)
        self._stripes = _Stripes(self.dir / ".locks") if shared else None
        self._dir_sync = DirectorySync(self.dir)  # concurrent creations share its fsyncs
        # Weak values: a lock lives only while some task holds or waits for it.
        self._locks: weakref.WeakValueDictionary[str, anyio.Lock] = (
            weakref.WeakValueDictionary())
        # Enough threads that concurrent creations can meet in one directory fsync.
        self._limiter = anyio.CapacityLimiter(8)
        # The process owns the directory, so recently written records can be served from
        # memory: saves a thread hop and a JSON parse on every commit and HEAD.
        self._cache: OrderedDict[str, UploadInfo] = OrderedDict()

    def _path(self, upload_id: str) -> Path:
        if not is_valid_upload_id(upload_id):
            raise UploadNotFound(upload_id)
        return self.dir / f"{upload_id}.info"

    def _lock(self, upload_id: str) -> anyio.Lock:
        lock = self._locks.get(upload_id)
        if lock is None:
            lock = self._locks[upload_id] = anyio.Lock()
        return lock

    def _remember(self, info: UploadInfo) -> None:
        self._cache[info.id] = info
        self._cache.move_to_end(info.id)
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)

    async def _read(self, upload_id: str) -> UploadInfo:
        path = self._path(upload_id)
        if self.shared:
            return await anyio.to_thread.run_sync(_load, path, upload_id,
                                                  limiter=self._limiter)
        cached = self._cache.get(upload_id)
        if cached is not None:
            return cached
        info = await anyio.to_thread.run_sync(_load, path, upload_id, limiter=self._limiter)
        if upload_id not in self._cache:
            # A write that finished while we read is newer: never put the old record back.
            self._remember(info)
        return info

    async def _update(self, upload_id: str,
                      change: Callable[[UploadInfo], UploadInfo]) -> UploadInfo:
        """Read, change (which may raise) and write the record, atomically."""
        if self._stripes is not None:
            path, stripes, fsync = self._path(upload_id), self._stripes, self.fsync

            def _locked() -> UploadInfo:
                with stripes.hold(upload_id):
                    info = change(_load(path, upload_id))
                    _atomic_write(path, records.dump(info), fsync)
                    return info

            return await anyio.to_thread.run_sync(_locked, limiter=self._limiter)
        async with self._lock(upload_id):
            info = change(await self._read(upload_id))
            await self._write(info)
            return info

    async def _write(self, info: UploadInfo, *, new: bool = False) -> None:
        path = self._path(info.id)
        payload = records.dump(info)
        self._cache.pop(info.id, None)  # a failed write must not leave a phantom record
        await anyio.to_thread.run_sync(_atomic_write, path, payload, self.fsync, new,
                                       self._dir_sync, limiter=self._limiter)
        self._remember(info)

    async def create(self, info: UploadInfo) -> None:
        if self._stripes is not None:
            path, stripes, fsync = self._path(info.id), self._stripes, self.fsync
            sync_dir = self._dir_sync

            def _create() -> None:
                with stripes.hold(info.id):
                    _atomic_write(path, records.dump(info), fsync, True, sync_dir)

            try:
                await anyio.to_thread.run_sync(_create, limiter=self._limiter)
            except FileExistsError:
                raise StorageError(f"upload {info.id} exists") from None
            return
        async with self._lock(info.id):
            try:
                await self._write(info, new=True)
            except FileExistsError:
                raise StorageError(f"upload {info.id} exists") from None

    async def get(self, upload_id: str) -> UploadInfo:
        return await self._read(upload_id)

    async def scan(self, states: frozenset[UploadState] | None = None) -> list[UploadInfo]:
        if self.shared:
            found = await anyio.to_thread.run_sync(_load_all, self.dir, limiter=self._limiter)
            return [i for i in found if states is None or i.state in states]
        names = await anyio.to_thread.run_sync(os.listdir, self.dir)
        out: list[UploadInfo] = []
        for name in names:
            if not name.endswith(".info"):
                continue
            try:
                info = await self._read(name[: -len(".info")])
            except StorageError:
                continue
            if states is None or info.state in states:
                out.append(info)
        return out

    async def purge(self, upload_id: str) -> None:
        path = self._path(upload_id)
        if self._stripes is not None:
            stripes = self._stripes

            def _purge() -> None:
                with stripes.hold(upload_id):
                    path.unlink(missing_ok=True)

            await anyio.to_thread.run_sync(_purge, limiter=self._limiter)
            return
        async with self._lock(upload_id):
            self._cache.pop(upload_id, None)
            await anyio.to_thread.run_sync(lambda: path.unlink(missing_ok=True))


def _load(path: Path, upload_id: str) -> UploadInfo:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UploadNotFound(upload_id) from None
    return records.parse(raw, f"state file {path}")


def _load_all(directory: Path) -> list[UploadInfo]:
    out: list[UploadInfo] = []
    for name in os.listdir(directory):
        if name.endswith(".info") and not name.startswith("."):
            upload_id = name[: -len(".info")]
            if not is_valid_upload_id(upload_id):
                continue
            try:
                out.append(_load(directory / name, upload_id))
            except StorageError:
                continue
    return out


class _Stripes:
    """Record locks shared by processes: upload ids hash onto STRIPES flocked files.

    A stripe is held for one read-check-write (microseconds to an fsync), so two
    uploads sharing one rarely wait; and there is no lock file per upload to clean up.
    flock is per open file, so threads of one process sharing a stripe's descriptor
    also take its threading.Lock.
    """

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.dir = directory
        self._mutexes = [threading.Lock() for _ in range(STRIPES)]
        self._fds: dict[int, int] = {}

    def _fd(self, stripe: int) -> int:
        fd = self._fds.get(stripe)
        if fd is None:
            fd = self._fds[stripe] = os.open(self.dir / f"{stripe:02x}",
                                             os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        return fd

    @contextmanager
    def hold(self, upload_id: str) -> Iterator[None]:
        """In a worker thread: exclusive across this process's threads and other processes."""
        stripe = zlib.crc32(upload_id.encode()) % STRIPES
        with self._mutexes[stripe]:
            fd = self._fd(stripe)
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)


def _atomic_write(path: Path, payload: bytes, fsync: bool = True, new: bool = False,
                  sync_dir: Callable[[], None] | None = None) -> None:
    if new:
        # O_EXCL: the existence check and the creation are one step. Written in place, not
        # through a temporary name: a temporary file costs ext4 a second inode allocation
        # and a deletion per upload (measured: the largest kernel cost of small uploads).
        # A crash mid-write can leave a torn record only for an upload whose creation was
        # never acknowledged; it fails to parse and is skipped.
        fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o640)
        try:
            _write_all(fd, payload)
            if fsync:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)  # a full disk leaves no record behind
            raise
        os.close(fd)
    else:
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o640)
        try:
            _write_all(fd, payload)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    if fsync and new:
        # A new record exists only once the directory is synced. An update needs no such
        # sync: if a power cut loses the rename, the old record comes back, whose offset is
        # behind the bytes on disk, never ahead; the client re-sends the difference.
        (sync_dir or (lambda: fsync_path(path.parent)))()


def _write_all(fd: int, payload: bytes) -> None:
    view = memoryview(payload)
    while view:
        view = view[os.write(fd, view):]
