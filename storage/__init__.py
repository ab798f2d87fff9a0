"""Where upload bytes and upload state live. Knows nothing of HTTP."""

from __future__ import annotations

from pathlib import Path

from .base import (
    Backend,
    CompletionQueue,
    DataStore,
    Fenced,
    InvalidTransition,
    Job,
    Lease,
    LocalFiles,
    Locker,
    LockTimeout,
    ObjectOutputs,
    OffsetMismatch,
    PermanentProcessingError,
    Processor,
    StateStore,
    StorageError,
    StorageUnavailable,
    UploadInfo,
    UploadNotFound,
    UploadState,
)
from .file_data import FileDataStore
from .file_locker import FileLocker
from .file_state import FileStateStore
from .final_files import FinalFiles, sanitize_component
from .ids import is_valid_upload_id, new_upload_id
from .memory_locker import MemoryLocker
from .outbox_queue import OutboxQueue

__all__ = [
    "Backend",
    "CompletionQueue",
    "DataStore",
    "Fenced",
    "FileDataStore",
    "FileLocker",
    "FileStateStore",
    "FinalFiles",
    "InvalidTransition",
    "Job",
    "Lease",
    "LocalFiles",
    "LockTimeout",
    "Locker",
    "MemoryLocker",
    "ObjectOutputs",
    "OffsetMismatch",
    "OutboxQueue",
    "PermanentProcessingError",
    "Processor",
    "StateStore",
    "StorageError",
    "StorageUnavailable",
    "UploadInfo",
    "UploadNotFound",
    "UploadState",
    "embedded_backend",
    "is_valid_upload_id",
    "new_upload_id",
    "sanitize_component",
]


def embedded_backend(upload_dir: Path, *, fsync: bool = True, shared: bool = False) -> Backend:
    """The default: files + `.info` JSON + in-process locks and queue. No Redis.

    shared=True: several processes of one host use upload_dir at once (`--workers N`):
    flock-based upload locks with release requests over unix sockets, records changed
    under cross-process locks and never cached, job claims for the completion queue.
    """
    if shared:
        locker = FileLocker(upload_dir)
        return Backend(
            data=FileDataStore(upload_dir, fsync=fsync),
            state=FileStateStore(upload_dir, fsync=fsync, shared=True),
            locker=locker,
            queue=OutboxQueue(claims=locker),
            services=(locker.listen,),
            aclose=locker.aclose,
        )
    return Backend(
        data=FileDataStore(upload_dir, fsync=fsync),
        state=FileStateStore(upload_dir, fsync=fsync),
        locker=MemoryLocker(),
        queue=OutboxQueue(),
    )
