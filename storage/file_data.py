"""Partial files on local disk, written at their offset from worker threads."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import anyio
import anyio.to_thread

from .base import UploadNotFound
from .fsync import fsync_path
from .ids import is_valid_upload_id

READ_CHUNK = 256 << 10  # one download holds at most one chunk, however slow its reader
_IOV_MAX = 512


class FileDataStore:
    """One file per upload under <root>/uploads/<id>."""

    def __init__(self, root: Path, *, max_threads: int = 8, fsync: bool = True) -> None:
        self.dir = root / "uploads"
        # fsync=False trusts the page cache: bytes survive a killed process, not a power cut.
        self.fsync = fsync
        self.dir.mkdir(parents=True, exist_ok=True)
        # Disk I/O gets its own limiter so uploads cannot starve other to_thread users.
        self._limiter = anyio.CapacityLimiter(max_threads)

    def path(self, upload_id: str) -> Path:
        if not is_valid_upload_id(upload_id):
            raise UploadNotFound(upload_id)
        return self.dir / upload_id

    async def create(self, upload_id: str, content: bytes = b"") -> None:
        path = self.path(upload_id)
        fsync = self.fsync

        def _create() -> None:
            # One thread hop for a small upload's create + write + sync: each hop costs
            # the event loop more than the 64 KiB write itself.
            fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o640)
            try:
                if content:
                    _pwrite_all(fd, [memoryview(content)], 0)
                    if fsync:
                        os.fdatasync(fd)
            except BaseException:
                os.close(fd)
                path.unlink(missing_ok=True)  # e.g. a full disk: leave nothing behind
                raise
            os.close(fd)

        await anyio.to_thread.run_sync(_create, limiter=self._limiter)

    async def write(self, upload_id: str, offset: int, chunks: Sequence[bytes]) -> int:
        path = self.path(upload_id)
        return await anyio.to_thread.run_sync(_pwritev, path, offset, chunks,
                                              limiter=self._limiter)

    async def sync(self, upload_id: str) -> None:
        path = self.path(upload_id)
        if not self.fsync:
            return
        await anyio.to_thread.run_sync(fsync_path, path, limiter=self._limiter)

    async def truncate(self, upload_id: str, length: int) -> None:
        path = self.path(upload_id)

        def _truncate() -> None:
            if path.stat().st_size > length:
                os.truncate(path, length)
                fsync_path(path)

        await anyio.to_thread.run_sync(_truncate, limiter=self._limiter)

    async def size(self, upload_id: str) -> int:
        path = self.path(upload_id)

        def _size() -> int:
            try:
                return path.stat().st_size
            except FileNotFoundError:
                raise UploadNotFound(upload_id) from None

        return await anyio.to_thread.run_sync(_size, limiter=self._limiter)

    async def read(self, upload_id: str, start: int, end: int) -> AsyncIterator[bytes]:
        path = self.path(upload_id)
        try:
            fd = await anyio.to_thread.run_sync(os.open, path, os.O_RDONLY)
        except FileNotFoundError:
            raise UploadNotFound(upload_id) from None
        try:
            pos = start
            while pos < end:
                n = min(READ_CHUNK, end - pos)
                chunk = await anyio.to_thread.run_sync(os.pread, fd, n, pos,
                                                       limiter=self._limiter)
                if not chunk:
                    raise UploadNotFound(f"{upload_id} is shorter than {end}")
                pos += len(chunk)
                yield chunk
        finally:
            os.close(fd)

    async def concat(self, upload_id: str, sources: Sequence[str]) -> int:
        target = self.path(upload_id)
        paths = [self.path(s) for s in sources]
        return await anyio.to_thread.run_sync(_concat, target, paths, limiter=self._limiter)

    async def finish(self, upload_id: str, size: int) -> None:
        """Nothing to assemble: the file is the upload."""
        self.path(upload_id)

    async def delete(self, upload_id: str) -> None:
        path = self.path(upload_id)
        await anyio.to_thread.run_sync(lambda: path.unlink(missing_ok=True),
                                       limiter=self._limiter)


def _pwritev(path: Path, offset: int, chunks: Sequence[bytes]) -> int:
    fd = os.open(path, os.O_WRONLY)
    try:
        return _pwrite_all(fd, [memoryview(c) for c in chunks if c], offset)
    finally:
        os.close(fd)


def _pwrite_all(fd: int, pending: list[memoryview], offset: int) -> int:
    total = 0
    while pending:
        batch = pending[:_IOV_MAX]
        n = os.pwritev(fd, batch, offset + total)
        total += n
        # A short write (e.g. a signal) leaves a tail: resume from where it stopped.
        rest: list[memoryview] = []
        for view in pending:
            if n >= len(view):
                n -= len(view)
                continue
            rest.append(view[n:])
            n = 0
        pending = rest
    return total


def _concat(target: Path, sources: Sequence[Path]) -> int:
    # Restartable: the target is rewritten from scratch, so a crash mid-copy is harmless.
    with target.open("r+b") as out:
        out.truncate(0)
        pos = 0
        for src in sources:
            with src.open("rb") as inp:
                size = os.fstat(inp.fileno()).st_size
                copied = 0
                while copied < size:
                    n = os.copy_file_range(inp.fileno(), out.fileno(), size - copied,
                                           copied, pos + copied)
                    if n == 0:
                        raise OSError(f"short copy from {src}")
                    copied += n
                pos += size
        out.flush()
        os.fsync(out.fileno())
        return pos
