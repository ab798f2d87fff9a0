"""The seams between the tus server and where bytes and upload state live.

Exception tree::

    StorageError
    ├── UploadNotFound        no record for this id
    ├── OffsetMismatch        commit's expected offset is not the stored one
    ├── Fenced                a newer lock holder has committed (stale epoch)
    ├── InvalidTransition     state change not allowed from the current state
    ├── LockTimeout           the upload stayed locked for the whole wait
    └── StorageUnavailable    the state store (e.g. Redis) cannot be reached
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import anyio


class UploadState(enum.StrEnum):
    UPLOADING = "uploading"
    COMPLETED = "completed"  # all bytes stored, processing queued
    PROCESSING = "processing"
    PROCESSED = "processed"
    FAILED = "failed"
    TERMINATED = "terminated"
    EXPIRED = "expired"

    @property
    def gone(self) -> bool:
        return self in (UploadState.TERMINATED, UploadState.EXPIRED)

    @property
    def finished(self) -> bool:
        """All bytes are stored (whatever processing did with them)."""
        return self in (
            UploadState.COMPLETED, UploadState.PROCESSING, UploadState.PROCESSED,
            UploadState.FAILED,
        )


@dataclass(frozen=True, slots=True)
class UploadInfo:
    id: str
    size: int | None  # None while the length is deferred
    offset: int = 0  # committed offset: the only one HEAD ever reports
    # Upload-Metadata as received: key -> base64 text (None for a key without value).
    metadata: Mapping[str, str | None] = field(default_factory=dict)
    state: UploadState = UploadState.UPLOADING
    epoch: int = 0  # highest lock epoch that committed (fencing token)
    created_at: float = 0.0
    updated_at: float = 0.0
    expires_at: float | None = None
    partial: bool = False
    parts: tuple[str, ...] = ()  # for a final concatenation: the partial ids, in order
    completed_at: float | None = None  # when the last byte was committed
    attempts: int = 0  # processing attempts so far
    started_at: float | None = None  # processing: last attempt's start and end
    finished_at: float | None = None
    error: str | None = None
    result: Mapping[str, Any] | None = None  # what the processor produced
    owner: str | None = None  # who created it (the authenticated subject), when auth is on

    @property
    def is_final(self) -> bool:
        return bool(self.parts)

    @property
    def complete(self) -> bool:
        return self.size is not None and self.offset == self.size

    def evolve(self, **changes: Any) -> UploadInfo:
        return replace(self, **changes)


class StorageError(Exception):
    """Base of every error the storage layer raises."""


class UploadNotFound(StorageError):
    pass


class OffsetMismatch(StorageError):
    def __init__(self, current: int) -> None:
        super().__init__(f"offset is {current}")
        self.current = current


class Fenced(StorageError):
    pass


class InvalidTransition(StorageError):
    pass


class LockTimeout(StorageError):
    pass


class StorageUnavailable(StorageError):
    pass


class DataStore(Protocol):
    """Bytes of uploads. Writes land at an offset; nothing is durable before sync()."""

    async def create(self, upload_id: str, content: bytes = b"") -> None:
        """Create the upload's (empty) bytes; with content, also write it at offset 0 and
        make it durable, as write() + sync() would (a small upload stored in one step)."""
        ...

    async def write(self, upload_id: str, offset: int, chunks: Sequence[bytes]) -> int:
        """Write chunks back to back starting at offset; return the bytes written."""
        ...

    async def sync(self, upload_id: str) -> None:
        """Make every byte written so far durable."""
        ...

    async def truncate(self, upload_id: str, length: int) -> None:
        """Drop bytes past length (uncommitted tail left by a crash or a bad checksum)."""
        ...

    async def size(self, upload_id: str) -> int: ...

    def read(self, upload_id: str, start: int, end: int) -> AsyncIterator[bytes]:
        """Yield bytes [start, end) in bounded chunks."""
        ...

    async def concat(self, upload_id: str, sources: Sequence[str]) -> int:
        """Write the sources' bytes back to back into upload_id; return its size.

        The sources are finished uploads; afterwards upload_id is finished too.
        """
        ...

    async def finish(self, upload_id: str, size: int) -> None:
        """All `size` bytes are committed: assemble them for read(). Idempotent.

        Called before processing and before a download; read() of an upload is
        only valid after it (object stores cannot read back an unfinished one).
        """
        ...

    async def delete(self, upload_id: str) -> None: ...


class StateStore(Protocol):
    """Upload records. commit() is the only way an offset advances, except at creation."""

    async def create(self, info: UploadInfo) -> None:
        """Store a new record; StorageError if the id exists.

        A record may be created already COMPLETED (a small upload whose bytes were stored
        before its record): it is then queued for processing in the same atomic step,
        as commit() does.
        """
        ...

    async def get(self, upload_id: str) -> UploadInfo:
        """Raises UploadNotFound; a gone upload is returned (callers decide)."""
        ...

    async def commit(
        self, upload_id: str, *, epoch: int, expected: int, new: int,
        expires_at: float | None = None,
    ) -> UploadInfo:
        """Fenced compare-and-set of the offset.

        When new reaches the size, the same atomic step marks the upload
        COMPLETED, which is the durable outbox of the completion queue.
        """
        ...

    async def declare_length(self, upload_id: str, *, epoch: int, size: int) -> UploadInfo: ...

    async def transition(
        self, upload_id: str, to: UploadState, *, expect: frozenset[UploadState],
        **fields: Any,
    ) -> UploadInfo:
        """Move to state `to` if the current state is in `expect`, else InvalidTransition."""
        ...

    async def scan(self, states: frozenset[UploadState] | None = None) -> list[UploadInfo]: ...

    async def expired(self, now: float) -> list[UploadInfo]:
        """Unfinished uploads whose expires_at has passed."""
        ...

    async def purge_tombstones(self, before: float) -> int:
        """Forget terminated/expired uploads last changed before `before`."""
        ...

    async def purge(self, upload_id: str) -> None:
        """Remove the record entirely (tombstones included)."""
        ...


@dataclass
class Lease:
    """Proof of holding an upload's lock; epoch is the fencing token."""

    upload_id: str
    epoch: int
    lost: anyio.Event = field(default_factory=anyio.Event)


class Locker(Protocol):
    async def leader(self, name: str, ttl: float) -> bool:
        """Take or keep a named leadership lease (e.g. the expiry sweeper's)."""
        ...

    def hold(
        self, upload_id: str, *, on_release_requested: Callable[[], None], timeout: float,
    ) -> AbstractAsyncContextManager[Lease]:
        """Acquire the upload's lock, first asking a current holder to let go.

        Raises LockTimeout when the lock is still held after `timeout` seconds.
        """
        ...

    async def confirm(self, lease: Lease) -> bool:
        """Is `lease` still the upload's lock holder? Asked right before a step that could
        destroy another holder's bytes (cutting a file back): a holder that stalled can
        have been taken over without having noticed yet."""
        ...


@dataclass(frozen=True, slots=True)
class Job:
    """One delivery of a completed upload to a worker."""

    upload_id: str
    delivery: int = 1  # how many times this job has been handed out, this one included
    token: str = ""  # the queue's own handle (e.g. a stream entry id)


class CompletionQueue(Protocol):
    """At-least-once delivery of completed uploads to the processor.

    The durable enqueue is the commit that marks an upload COMPLETED (the
    state store is the outbox); notify() is only a hint that wakes a worker.
    """

    async def notify(self, upload_id: str) -> None: ...

    async def receive(self) -> Job: ...

    async def ack(self, job: Job) -> None:
        """The job is done; never deliver it again."""
        ...

    async def extend(self, job: Job) -> None:
        """Still working on it: do not hand the job to another worker yet."""
        ...

    async def requeue(self, upload_id: str) -> None:
        """Durably queue a completed upload again (reprocessing on request)."""
        ...

    async def retry(self, job: Job, delay: float) -> None:
        """Deliver the job again after `delay` seconds."""
        ...

    async def dead(self, job: Job, error: str) -> None:
        """Give up on the job, keeping the error where operators can see it."""
        ...

    async def recover(self, state: StateStore) -> int:
        """Re-queue uploads that completed but were never processed; return how many."""
        ...


class PermanentProcessingError(Exception):
    """Retrying cannot help (corrupt image, wrong length): fail the upload at once."""


@runtime_checkable
class LocalFiles(Protocol):
    """A data store whose uploads are plain local files (the processor reads them)."""

    def path(self, upload_id: str) -> Path: ...


@runtime_checkable
class ObjectOutputs(Protocol):
    """A data store that keeps processed uploads and their outputs as objects (S3).

    `relative` is the final layout's path, `<namespace>/<upload id>/<name>`.
    """

    async def place_final(self, upload_id: str, relative: str, size: int) -> str:
        """Copy the finished upload to its final place (idempotent); return where it is."""
        ...

    async def put_output(self, relative: str, content: bytes | Path,
                         content_type: str = "application/octet-stream") -> str: ...

    async def read_output(self, relative: str) -> bytes | None: ...

    async def delete_outputs(self, relative_dir: str) -> int:
        """Remove everything under `<relative_dir>/` (termination); return how many."""
        ...


class Processor(Protocol):
    """Finalizes a completed upload. Must be idempotent: it may run twice."""

    async def process(self, info: UploadInfo, data: DataStore) -> Mapping[str, Any]: ...


async def _nothing() -> None:
    return None


@dataclass(frozen=True)
class Backend:
    data: DataStore
    state: StateStore
    locker: Locker
    queue: CompletionQueue
    # Background loops to run for the server's lifetime (e.g. lock renewal, pub/sub).
    services: Sequence[Callable[[], Coroutine[Any, Any, None]]] = ()
    aclose: Callable[[], Awaitable[None]] = _nothing
