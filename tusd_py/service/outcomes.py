"""What the upload service hands back: plain values, no HTTP."""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from storage import UploadInfo

if TYPE_CHECKING:
    from ..hooks import HookResponse


class Outcome(enum.Enum):
    DONE = "done"  # the body ended normally
    DISCONNECTED = "disconnected"
    TIMED_OUT = "timed_out"
    RELEASED = "released"  # a newer request asked for the lock
    SHUTTING_DOWN = "shutting_down"  # released because the server is draining (SIGTERM)
    STOPPED = "stopped"  # a post-receive hook answered StopUpload
    TOO_LARGE = "too_large"
    CHECKSUM_MISMATCH = "checksum_mismatch"
    STORAGE_FULL = "storage_full"  # ENOSPC / EDQUOT: nothing unsynced was committed
    STORAGE_FAILED = "storage_failed"  # any other I/O error of the data store


@dataclass
class AppendResult:
    """What storing one request's content did."""

    outcome: Outcome
    info: UploadInfo  # the record after the last commit
    received: int = 0
    error: OSError | None = None  # the disk error behind STORAGE_FULL / STORAGE_FAILED
    # pre-finish hook's answer, which shapes the response to the request that completed
    # the upload (tusd's HTTPResponse).
    answer: HookResponse | None = None


@dataclass(frozen=True)
class Body:
    """A request's content as the service reads it.

    `disconnect`: the exceptions the chunk iterator raises when the client goes away
    (the HTTP layer's own; the service needs no HTTP import to catch them).
    """

    chunks: AsyncIterator[bytes]
    length: int | None  # Content-Length, None when chunked
    disconnect: tuple[type[BaseException], ...] = ()


@dataclass(frozen=True)
class Download:
    """A finished upload's bytes: a local file the kernel can send (`file`), or read
    through the process in chunks (`read(id, start, end)`)."""

    upload_id: str
    size: int
    file: Path | None
    read: Callable[[str, int, int], AsyncIterator[bytes]]


@dataclass
class Created:
    """A new upload, the headers a pre-create hook added, and (when its whole content
    came with the request) the pre-finish hook's answer."""

    info: UploadInfo
    headers: Mapping[str, str] = field(default_factory=dict)
    answer: HookResponse | None = None
