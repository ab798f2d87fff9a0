"""Local spool files: the bytes of one part (or the tail) on their way to S3.

Appends run in worker threads and keep a running MD5, sent as Content-MD5 so
the server rejects a part that was damaged on the way.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path

import anyio
import anyio.to_thread

COPY_CHUNK = 1 << 20


def _md5() -> hashlib._Hash:
    return hashlib.md5(usedforsecurity=False)


class Segment:
    """An append-only local file with its size and MD5."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = 0
        self._md5 = _md5()
        path.touch()

    def digest(self) -> bytes:
        return self._md5.copy().digest()

    def _append(self, views: Sequence[memoryview]) -> None:
        with self.path.open("ab") as f:
            for view in views:
                f.write(view)
                self._md5.update(view)
            self.size += sum(len(v) for v in views)

    async def append(self, views: Sequence[memoryview], limiter: anyio.CapacityLimiter) -> None:
        await anyio.to_thread.run_sync(self._append, views, limiter=limiter)

    def _cut(self, length: int) -> None:
        os.truncate(self.path, length)
        self.size = length
        self._md5 = _md5()
        with self.path.open("rb") as f:
            while chunk := f.read(COPY_CHUNK):
                self._md5.update(chunk)

    async def cut(self, length: int, limiter: anyio.CapacityLimiter) -> None:
        """Keep the first `length` bytes (and recompute the MD5 over them)."""
        await anyio.to_thread.run_sync(self._cut, length, limiter=limiter)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


class Spool:
    """A private directory of segment files for one server process.

    Nothing in it is needed after a restart (what S3 confirmed is in S3), so
    directories left by dead processes are removed when a new one starts.
    """

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        for old in root.iterdir():
            pid = old.name.split("-", 1)[0]
            if old.is_dir() and pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(old, ignore_errors=True)
        self.dir = root / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.dir.mkdir()

    def segment(self, upload_id: str) -> Segment:
        return Segment(self.dir / f"{upload_id}.{uuid.uuid4().hex[:12]}")

    def temp_path(self, upload_id: str) -> Path:
        return self.dir / f"{upload_id}.{uuid.uuid4().hex[:12]}.tmp"

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
