"""What every handler needs: settings, the storage backend, the extension list."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio.to_thread
from starlette.requests import Request

from storage import (
    Backend,
    FinalFiles,
    InvalidTransition,
    Lease,
    LockTimeout,
    ObjectOutputs,
    UploadInfo,
    UploadNotFound,
    UploadState,
    is_valid_upload_id,
)

from . import logs, metrics
from .auth import current_subject
from .buffers import WriteBuffers
from .concat import finish_waiting_finals
from .errors import TusError
from .hooks import Hooks
from .limits import UploadSlots
from .protocol import CHECKSUM_ALGORITHMS, TUS_VERSION
from .proxy import public_origin
from .settings import Settings

_TERMINABLE = frozenset(s for s in UploadState if not s.gone)
# How long a transfer asked to let go of its upload may go on reading what is in flight.
RELEASE_DRAIN_SECONDS = 0.05


@dataclass(frozen=True)
class TusContext:
    settings: Settings
    backend: Backend
    final: FinalFiles
    hooks: Hooks | None = None
    slots: UploadSlots = field(default_factory=lambda: UploadSlots(0))
    buffers: WriteBuffers = field(default_factory=WriteBuffers)
    # Release scopes of the requests holding an upload lock: cancelled on shutdown.
    _holding: set[anyio.CancelScope] = field(default_factory=set)
    _draining: list[bool] = field(default_factory=lambda: [False])

    @property
    def draining(self) -> bool:
        return self._draining[0]

    def begin_shutdown(self) -> None:
        """SIGTERM: every body transfer saves what it has and answers, so locks go free."""
        self._draining[0] = True
        logs.event("server.draining", transfers=len(self._holding))
        for scope in list(self._holding):
            scope.cancel()

    def owns(self, info: UploadInfo) -> bool:
        """With auth on, an upload belongs to the subject that created it."""
        return not self.settings.auth_enabled or info.owner == current_subject()

    async def read_output(self, relative: str) -> bytes | None:
        data = self.backend.data
        if isinstance(data, ObjectOutputs):
            # The object store holds every instance's outputs; the local copy only the
            # processing instance's.
            return await data.read_output(relative)
        return await anyio.to_thread.run_sync(self.final.read_output, relative)

    async def discard_outputs(self, info: UploadInfo) -> None:
        """Termination frees the finalized copy and thumbnails too."""
        if info.result and info.result.get("file"):
            namespace = info.result["file"]["path"].split("/", 1)[0]
            await anyio.to_thread.run_sync(self.final.remove, namespace, info.id)
            if isinstance(self.backend.data, ObjectOutputs):
                await self.backend.data.delete_outputs(f"{namespace}/{info.id}")

    @property
    def extensions(self) -> list[str]:
        ext = [
            "creation", "creation-with-upload", "creation-defer-length", "termination",
            "concatenation", "concatenation-unfinished", "checksum",
        ]
        if self.settings.expiration > 0:
            ext.append("expiration")
        return ext

    def tus_headers(self) -> dict[str, str]:
        """Headers OPTIONS advertises (discovery)."""
        headers = {
            "Tus-Resumable": TUS_VERSION,
            "Tus-Version": TUS_VERSION,
            "Tus-Extension": ",".join(self.extensions),
            "Tus-Checksum-Algorithm": ",".join(CHECKSUM_ALGORITHMS),
        }
        if self.settings.max_size:
            headers["Tus-Max-Size"] = str(self.settings.max_size)
        return headers

    def upload_url(self, request: Request, upload_id: str) -> str:
        origin = public_origin(request, behind_proxy=self.settings.behind_proxy)
        return f"{origin}{self.settings.base_path}{upload_id}"

    def next_expiry(self) -> float | None:
        exp = self.settings.expiration
        return time.time() + exp if exp > 0 else None

    async def load(self, upload_id: str) -> UploadInfo:
        """The record, or the tus error a client should see for it."""
        if not is_valid_upload_id(upload_id):
            raise TusError.not_found()
        try:
            info = await self.backend.state.get(upload_id)
        except UploadNotFound:
            raise TusError.not_found() from None
        if not self.owns(info):
            # 404, not 403: someone else's id must look like no id at all.
            raise TusError.not_found()
        if info.state.gone:
            raise TusError.gone(info.state.value)
        if (info.state is UploadState.UPLOADING and info.expires_at is not None
                and info.expires_at <= time.time()):
            raise TusError.gone("expired")
        return info

    @asynccontextmanager
    async def hold(self, upload_id: str) -> AsyncIterator[tuple[Lease, anyio.CancelScope]]:
        """Hold the upload's lock; a newer request for it cancels the returned scope.

        A body transfer runs inside that scope, so it saves what it received and lets go
        when asked. A lock that stays busy answers 423, which clients retry.
        """
        release = anyio.CancelScope()
        if self.draining:
            release.cancel()

        def release_requested() -> None:
            # A dropped connection's last bytes are still in the socket: read them, then
            # let go (RELEASE_DRAIN_SECONDS at most, less once the body stalls).
            release.deadline = min(release.deadline,
                                   anyio.current_time() + RELEASE_DRAIN_SECONDS)

        try:
            async with self.backend.locker.hold(upload_id, on_release_requested=release_requested,
                                                timeout=self.settings.lock_timeout) as lease:
                self._holding.add(release)
                try:
                    yield lease, release
                finally:
                    self._holding.discard(release)
        except LockTimeout:
            raise TusError.locked() from None

    async def load_settled(self, upload_id: str) -> UploadInfo:
        """The record read under the upload's lock.

        Taking the lock makes a stale PATCH save its bytes and let go first, so the
        offset reported is the one a client must resume from (tusd does the same).
        """
        await self.load(upload_id)  # 404/410 without waiting for the lock
        async with self.hold(upload_id):
            return await self.load(upload_id)

    async def terminate(self, upload_id: str, **log_fields: Any) -> UploadInfo:
        """Stop any transfer, remove bytes and outputs, keep a tombstone (410 afterwards)."""
        await self.load(upload_id)
        async with self.hold(upload_id):
            info = await self.load(upload_id)
            await self.backend.data.delete(upload_id)
            await self.discard_outputs(info)
            try:
                await self.backend.state.transition(upload_id, UploadState.TERMINATED,
                                                    expect=_TERMINABLE)
            except InvalidTransition:
                raise TusError.gone("terminated") from None
        logs.event("upload.terminated", upload_id, offset=info.offset, size=info.size,
                   **log_fields)
        metrics.uploads_terminated.inc()
        return info

    async def completed(self, info: UploadInfo) -> None:
        """After a commit that completed an upload: queue it, or finish finals waiting on it."""
        logs.event("upload.completed", info.id, size=info.size, partial=info.partial,
                   final=info.is_final)
        metrics.uploads_finished.inc()
        if info.partial:
            await finish_waiting_finals(self, info.id)
        else:
            await self.backend.queue.notify(info.id)
            logs.event("processing.queued", info.id)


def require_tus_resumable(request: Request) -> None:
    """'The Server MUST NOT process the request' without a supported Tus-Resumable."""
    if request.headers.get("tus-resumable") != TUS_VERSION:
        raise TusError.unsupported_version()


def get_context(request: Request) -> TusContext:
    ctx: TusContext = request.app.state.tus
    return ctx
