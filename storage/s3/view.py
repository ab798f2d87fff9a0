"""An instance's local view of one upload it writes: its parts, its spool, its manifest ETag."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import anyio

from .spool import Segment


@dataclass(eq=False)
class Part:
    number: int
    start: int
    size: int
    md5: bytes
    segment: Segment | None  # the local copy, kept until a manifest lists the part
    etag: str | None = None  # set once S3 confirmed the part
    synced: bool = False  # listed in the `.part` manifest S3 holds
    done: anyio.Event = field(default_factory=anyio.Event)
    scope: anyio.CancelScope | None = None  # of its background upload, if one runs

    @property
    def end(self) -> int:
        return self.start + self.size

    @property
    def uploading(self) -> bool:
        return self.scope is not None and not self.done.is_set()


@dataclass(eq=False)
class UploadView:
    id: str
    seg: Segment  # bytes after the last part: the tail
    parts: list[Part] = field(default_factory=list)
    mpu: str | None = None
    manifest_etag: str | None = None  # of the `.part` object this view matches
    pos: int = 0  # the next write offset
    dirty: bool = False  # written or cut since the last manifest
    touched: float = field(default_factory=time.monotonic)
    mpu_lock: anyio.Lock = field(default_factory=anyio.Lock)

    @property
    def seg_start(self) -> int:
        return self.parts[-1].end if self.parts else 0

    @property
    def local_end(self) -> int:
        return self.seg_start + self.seg.size

    async def stop_part_uploads(self) -> None:
        """Cancel the background part uploads still running and wait until they end."""
        running = [p for p in self.parts if p.uploading]
        for part in running:
            assert part.scope is not None
            part.scope.cancel()
        for part in running:
            await part.done.wait()

    def remove_spool(self) -> None:
        for part in self.parts:
            if part.segment is not None:
                part.segment.remove()
        self.seg.remove()


def split_views(views: list[memoryview], n: int) -> tuple[list[memoryview], list[memoryview]]:
    """The first n bytes of views, and the rest."""
    head: list[memoryview] = []
    for i, view in enumerate(views):
        if n <= 0:
            return head, views[i:]
        if len(view) <= n:
            head.append(view)
            n -= len(view)
        else:
            head.append(view[:n])
            return head, [view[n:], *views[i + 1:]]
    return head, []
