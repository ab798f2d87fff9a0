"""The upload service: every operation on an upload that both protocols need.

tus 1.0 and the IETF draft differ only in headers; what an upload *does* lives here,
once: create (also final uploads of a concatenation and deferred lengths), append
(the body pump, its checkpoints and outcomes), declare the length, finish (pre-finish
and post-finish hooks, the completion outbox), terminate and expire. Calls take plain
values (ids, lengths, a Caller, a Body) and return plain values or raise errors from
the one table (tusd_py/errors.py). Nothing here knows HTTP requests or responses.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from storage import (
    Backend,
    FinalFiles,
    InvalidTransition,
    Lease,
    LocalFiles,
    LockTimeout,
    ObjectOutputs,
    UploadInfo,
    UploadNotFound,
    UploadState,
    is_valid_upload_id,
    new_upload_id,
)

from ..config import Settings
from ..errors import HookAnswer, TusError
from ..ops import logs, metrics
from .buffers import WriteBuffers
from .caller import NOBODY, Caller
from .checksums import new_hasher
from .concat import known_total, load_partials
from .metadata import encoded, metadata_text
from .outcomes import AppendResult, Body, Created, Download, Outcome
from .slots import UploadSlots
from .transfer import pump_body

if TYPE_CHECKING:
    from ..hooks import HookResponse, Hooks

_TERMINABLE = frozenset(s for s in UploadState if not s.gone)
# How long a transfer asked to let go of its upload may go on reading what is in flight.
RELEASE_DRAIN_SECONDS = 0.05
UNLIMITED = 1 << 62
# A body up to this size that holds the whole upload is read before the upload's record is
# written, so the record is created once, already complete (no lock, no second write).
SMALL_UPLOAD_BYTES = 1 << 20


@dataclass
class Hold:
    """An upload's lock, held by one request."""

    lease: Lease
    # Cancelled when a newer request wants the upload, or on SIGTERM: a body transfer
    # runs inside it, so it saves what it received and lets go.
    release: anyio.CancelScope


class UploadService:
    def __init__(self, settings: Settings, backend: Backend, final: FinalFiles, *,
                 hooks: Hooks | None = None, slots: UploadSlots | None = None,
                 buffers: WriteBuffers | None = None) -> None:
        self.settings = settings
        self.backend = backend
        self.final = final
        self.hooks = hooks
        self.slots = slots or UploadSlots(settings.max_concurrent_uploads)
        self.buffers = buffers or WriteBuffers(settings.write_buffer_bytes,
                                               settings.write_buffer_total)
        self.subject: Callable[[], str | None] = lambda: None  # who is asking (auth)
        # Release scopes of the requests holding an upload lock: cancelled on shutdown.
        self._holding: set[anyio.CancelScope] = set()
        self.draining = False

    # --- the server's life -----------------------------------------------------------
    def begin_shutdown(self) -> None:
        """SIGTERM: every body transfer saves what it has and answers, so locks go free."""
        self.draining = True
        logs.event("server.draining", transfers=len(self._holding))
        for scope in list(self._holding):
            scope.cancel()

    def _hook(self, hook_type: str) -> Hooks | None:
        return self.hooks if self.hooks is not None and self.hooks.on(hook_type) else None

    # --- reading ---------------------------------------------------------------------
    def owns(self, info: UploadInfo) -> bool:
        """With auth on, an upload belongs to the subject that created it."""
        return not self.settings.auth_enabled or info.owner == self.subject()

    def next_expiry(self) -> float | None:
        exp = self.settings.expiration
        return time.time() + exp if exp > 0 else None

    async def find(self, upload_id: str) -> UploadInfo:
        """The record in any state (the /api views); 404 for someone else's."""
        if not is_valid_upload_id(upload_id):
            raise TusError.not_found()
        try:
            info = await self.backend.state.get(upload_id)
        except UploadNotFound:
            raise TusError.not_found() from None
        if not self.owns(info):
            # 404, not 403: someone else's id must look like no id at all.
            raise TusError.not_found()
        return info

    async def load(self, upload_id: str) -> UploadInfo:
        """A live upload's record, or the error a client should see for it."""
        info = await self.find(upload_id)
        if info.state.gone:
            raise TusError.gone(info.state.value)
        if (info.state is UploadState.UPLOADING and info.expires_at is not None
                and info.expires_at <= time.time()):
            raise TusError.gone("expired")
        return info

    async def load_settled(self, upload_id: str) -> UploadInfo:
        """The record read under the upload's lock.

        Taking the lock makes a stale PATCH save its bytes and let go first, so the
        offset reported is the one a client must resume from (tusd does the same).
        """
        await self.load(upload_id)  # 404/410 without waiting for the lock
        async with self.hold(upload_id):
            return await self.load(upload_id)

    async def read_output(self, relative: str) -> bytes | None:
        data = self.backend.data
        if isinstance(data, ObjectOutputs):
            # The object store holds every instance's outputs; the local copy only the
            # processing instance's.
            return await data.read_output(relative)
        return await anyio.to_thread.run_sync(self.final.read_output, relative)

    async def download(self, info: UploadInfo) -> Download:
        """Where a finished upload's bytes can be read from."""
        if self.settings.disable_download:
            raise TusError.feature_disabled("download")
        if not info.state.finished or info.size is None:
            raise TusError.not_finished()
        data = self.backend.data
        if info.state is not UploadState.PROCESSED:
            # Downloaded before processing ran: an object store assembles the parts now
            # (idempotent; processing does the same, and a no-op for files).
            await data.finish(info.id, info.size)
        return Download(info.id, info.size, data.path(info.id)
                        if isinstance(data, LocalFiles) else None, data.read)

    # --- locks -------------------------------------------------------------------------
    @asynccontextmanager
    async def hold(self, upload_id: str) -> AsyncIterator[Hold]:
        """Hold the upload's lock; a newer request for it cancels `release`.

        A lock that stays busy answers 423, which clients retry.
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
                    yield Hold(lease, release)
                finally:
                    self._holding.discard(release)
        except LockTimeout:
            raise TusError.locked() from None

    @asynccontextmanager
    async def appending(self, upload_id: str, caller: Caller
                        ) -> AsyncIterator[tuple[UploadInfo, Hold]]:
        """An upload held for an append: counted against the caller's transfers, locked,
        read again under the lock; a final upload of a concatenation is refused."""
        await self.load(upload_id)  # 404/410 without waiting for the lock
        with self.transfer_slot(caller, upload_id):
            async with self.hold(upload_id) as hold:
                info = await self.load(upload_id)
                if info.is_final:
                    raise TusError.modify_final()
                yield info, hold

    @contextlib.contextmanager
    def transfer_slot(self, caller: Caller, upload_id: str | None = None) -> Any:
        """--max-concurrent-uploads: one body transfer of this caller's."""
        with self.slots.take(caller.client_key, upload_id):
            yield

    # --- limits ------------------------------------------------------------------------
    def check_length(self, length: int | None, what: str = "Upload-Length") -> None:
        max_size = self.settings.max_size
        if max_size and length is not None and length > max_size:
            raise TusError.too_large(f"{what} {length} exceeds Tus-Max-Size {max_size}")

    def remaining(self, info: UploadInfo) -> int:
        if info.size is not None:
            return info.size - info.offset
        # A deferred length is still bounded by Tus-Max-Size.
        if self.settings.max_size:
            return max(self.settings.max_size - info.offset, 0)
        return UNLIMITED

    # --- create ------------------------------------------------------------------------
    def new_upload(self, size: int | None, metadata: dict[str, str | None], *,
                   partial: bool = False, parts: Sequence[str] = ()) -> UploadInfo:
        if (partial or parts) and self.settings.disable_concatenation:
            raise TusError.feature_disabled("concatenation")
        return UploadInfo(id=new_upload_id(), size=size, metadata=metadata, partial=partial,
                          parts=tuple(parts),
                          expires_at=None if size == 0 else self.next_expiry())

    async def create(self, new: UploadInfo, caller: Caller) -> Created:
        """Create an upload with no content yet (pre-create hook first)."""
        info, headers = await self._create_record(new, caller)
        if info.size == 0:
            # 'Upload-Length: 0' is complete at creation, and processed like any other.
            async with self.hold(info.id) as hold:
                info = await self.backend.state.commit(info.id, epoch=hold.lease.epoch,
                                                       expected=0, new=0)
            await self.completed(info, caller)
        return Created(info, headers)

    def fits_in_one_write(self, new: UploadInfo, body: Body | None) -> bool:
        """The whole upload comes with the creation request and is small."""
        return new.size == 0 or (body is not None and new.size is not None
                                 and new.size <= SMALL_UPLOAD_BYTES and body.length == new.size)

    async def create_complete(self, new: UploadInfo, caller: Caller, body: Body | None,
                              checksum: tuple[str, bytes] | None = None) -> Created:
        """An upload whose every byte is in this (small) request: bytes first, then the
        record, created already complete.

        Nobody else knows the id yet, so no lock is needed; a crash before the record is
        written leaves an orphan data file and no upload (the client never got a Location).
        """
        async def content() -> bytes:
            if not new.size or body is None:
                return b""
            return await self._read_whole(body, new.size, checksum)

        info, headers = await self._create_record(new, caller, content)
        answer = None
        if info.size:
            metrics.bytes_received.inc(info.offset)
            if (hooks := self._hook("post-receive")) is not None:
                hooks.tell("post-receive", info, caller)
            answer = await self._pre_finish(info, caller)
        await self.completed(info, caller)
        return Created(info, headers, answer)

    async def _read_whole(self, body: Body, size: int,
                          checksum: tuple[str, bytes] | None) -> bytes:
        chunks: list[bytes] = []
        timeout = self.settings.network_timeout
        with anyio.move_on_after(timeout) as idle:
            try:
                async for chunk in body.chunks:
                    chunks.append(chunk)
            except body.disconnect:
                # Nothing is created: the client never saw a Location to resume from.
                raise TusError.body_incomplete("client went away during the body") from None
        content = b"".join(chunks)
        if idle.cancelled_caught:
            raise TusError.read_timeout(timeout)
        if len(content) != size:
            raise TusError.body_incomplete(f"body has {len(content)} of its {size} bytes")
        if checksum is not None:
            hasher = new_hasher(checksum[0])
            hasher.update(content)
            if not hmac.compare_digest(hasher.digest(), checksum[1]):
                raise TusError.checksum_mismatch()
        return content

    async def _create_record(
        self, info: UploadInfo, caller: Caller,
        content: Callable[[], Awaitable[bytes]] | None = None,
    ) -> tuple[UploadInfo, dict[str, str]]:
        """Create the upload (after the pre-create hook); returns it and headers the hook
        set. With `content`, the upload's whole content is read (after the hook), stored
        and made durable first, and the record is created already complete."""
        info, answer = await self._pre_create(info, caller)
        now = time.time()
        info = info.evolve(created_at=now, updated_at=now, owner=self.subject())
        data = b""
        if content is not None:
            data = await content()
            info = info.evolve(offset=len(data), state=UploadState.COMPLETED, completed_at=now,
                               expires_at=None)
        await self._store_new(info, data)
        logs.event("upload.created", info.id, size=info.size, partial=info.partial,
                   final=info.is_final, filename=metadata_text(info.metadata, "filename"),
                   owner=info.owner)
        metrics.uploads_created.inc()
        if (hooks := self._hook("post-create")) is not None:
            hooks.tell("post-create", info, caller)
        return info, dict(answer.headers) if answer is not None else {}

    async def _store_new(self, info: UploadInfo, content: bytes = b"") -> None:
        """Bytes file (with the content, durable), then record. A disk error (a full
        volume: 507) leaves nothing behind."""
        created = False
        try:
            await self.backend.data.create(info.id, content)
            created = True
            await self.backend.state.create(info)
        except OSError as exc:
            logs.event("upload.create_failed", info.id, level=logging.ERROR, error=str(exc))
            if created:
                with contextlib.suppress(Exception):
                    await self.backend.data.delete(info.id)
                with contextlib.suppress(Exception):
                    await self.backend.state.purge(info.id)
            raise TusError.from_os_error(exc) from exc

    async def _pre_create(self, info: UploadInfo,
                          caller: Caller) -> tuple[UploadInfo, HookResponse | None]:
        """tusd's pre-create hook: it may refuse the upload, or choose its id and metadata."""
        hooks = self._hook("pre-create")
        if hooks is None:
            return info, None
        answer = await hooks.gate(
            "pre-create", info.evolve(id=""), caller,
            refused=lambda answer: answer.reject_upload)
        if answer.change_metadata is not None:
            info = info.evolve(metadata=encoded(answer.change_metadata))
        if answer.change_id is not None:
            if not is_valid_upload_id(answer.change_id):
                raise TusError.hook_failed(
                    "pre-create hook chose an upload id outside [A-Za-z0-9_-]{1,128}")
            try:
                await self.backend.state.get(answer.change_id)
            except UploadNotFound:
                info = info.evolve(id=answer.change_id)
            else:
                raise TusError.hook_failed(
                    f"pre-create hook chose upload id {answer.change_id}, which exists")
        return info, answer

    # --- concatenation -----------------------------------------------------------------
    async def create_final(self, part_ids: Sequence[str], metadata: dict[str, str | None],
                           caller: Caller) -> Created:
        """A final upload made of partial ones, finished at once when they all are."""
        if self.settings.disable_concatenation:
            raise TusError.feature_disabled("concatenation")
        partials = await load_partials(self.backend.state, part_ids)
        for partial in partials:
            if not self.owns(partial):
                # Someone else's partial looks like no upload at all.
                raise TusError.not_found(f"partial upload {partial.id}")
        total = known_total(partials)
        self.check_length(total, "concatenated length")
        info, headers = await self._create_record(
            self.new_upload(total, metadata, parts=part_ids), caller)
        info = await self._try_finish_final(info, caller)
        return Created(info, headers)

    async def _try_finish_final(self, final: UploadInfo, caller: Caller) -> UploadInfo:
        """Concatenate when every partial is complete; otherwise leave the final waiting."""
        partials = await load_partials(self.backend.state, final.parts)
        if not all(p.state.finished for p in partials):
            return final
        total = known_total(partials)
        # Partials whose lengths were deferred can add up past the limit only now.
        self.check_length(total, "concatenated length")
        backend = self.backend
        lock = backend.locker.hold(final.id, on_release_requested=lambda: None,
                                   timeout=self.settings.lock_timeout)
        async with lock as lease:
            final = await backend.state.get(final.id)
            if final.state is not UploadState.UPLOADING:
                return final  # someone else finished it meanwhile
            total = await backend.data.concat(final.id, final.parts)
            if final.size is None:
                final = await backend.state.declare_length(final.id, epoch=lease.epoch,
                                                           size=total)
            if final.state is UploadState.UPLOADING:
                final = await backend.state.commit(final.id, epoch=lease.epoch,
                                                   expected=final.offset, new=total)
        logs.event("upload.concatenated", final.id, size=total, parts=len(final.parts))
        await self.completed(final, caller)
        return final

    async def _finish_waiting_finals(self, partial_id: str, caller: Caller) -> None:
        """A partial completed: finish the finals that were created before it was done."""
        waiting = await self.backend.state.scan(frozenset({UploadState.UPLOADING}))
        for final in waiting:
            if partial_id in final.parts:
                try:
                    await self._try_finish_final(final, caller)
                except TusError as exc:
                    logs.event("upload.concat_failed", final.id, level=logging.ERROR,
                               error=exc.message)
                except OSError as exc:  # e.g. a full volume: the final waits, the partial is done
                    logs.event("upload.concat_failed", final.id, level=logging.ERROR,
                               error=str(exc))

    # --- append ------------------------------------------------------------------------
    async def declare_length(self, info: UploadInfo, hold: Hold, size: int,
                             caller: Caller) -> UploadInfo:
        """creation-defer-length: the length comes later, once, and is never changed.
        The caller (a protocol adapter) has checked its own rules for `size` first."""
        if info.size is not None:
            if size != info.size:
                raise TusError.invalid_length("Upload-Length cannot be changed once set")
            return info
        self.check_length(size)
        if size < info.offset:
            raise TusError.invalid_length("Upload-Length is smaller than the upload's offset")
        updated = await self.backend.state.declare_length(info.id, epoch=hold.lease.epoch,
                                                          size=size)
        logs.event("upload.length_declared", info.id, size=size)
        if updated.state is UploadState.COMPLETED:
            await self.completed(updated, caller)
        return updated

    async def append(self, info: UploadInfo, hold: Hold, body: Body, caller: Caller,
                     checksum: tuple[str, bytes] | None = None, *,
                     fresh: bool = False) -> AppendResult:
        """Store the body at the upload's offset and report what happened.

        `fresh`: the upload was created by this very request, so it has no stale tail.
        """
        limit = self.remaining(info)
        if body.length is not None and body.length > limit:
            raise TusError.too_large(
                f"body of {body.length} bytes exceeds the {limit} bytes remaining")
        if not fresh:
            # A crash may have left a tail past the offset: cut it, unless this request
            # was taken over meanwhile (its lock lapsed while it stalled): then the tail
            # is the new holder's bytes.
            if not await self.backend.locker.confirm(hold.lease):
                raise TusError.interrupted()
            await self.backend.data.truncate(info.id, info.offset)
        logs.event("upload.patch", info.id, level=logging.DEBUG, offset=info.offset,
                   content_length=body.length)
        hooks = self._hook("post-receive")
        # tusd sends post-receive while data arrives (every --progress-hooks-interval) and
        # when the body ends; an answer with StopUpload ends the transfer (release).
        progress = (hooks.progress(info, caller, stop=hold.release.cancel)
                    if hooks is not None else None)
        with self.buffers.transfer():
            result = await pump_body(self, body if progress is None else progress.body(body),
                                     info, hold.lease, hold.release, limit=limit,
                                     checksum=checksum)
        if progress is not None:
            stop = progress.end(result.info)
            if (stop is not None and result.outcome is Outcome.RELEASED
                    and result.info.state is UploadState.UPLOADING
                    and not hold.lease.lost.is_set()):
                result.outcome, result.answer = Outcome.STOPPED, stop
        if result.outcome is Outcome.RELEASED and self.draining:
            result.outcome = Outcome.SHUTTING_DOWN
        if result.outcome is not Outcome.DONE:
            logs.event("upload.interrupted", info.id, level=logging.WARNING,
                       reason=result.outcome.value, offset=result.info.offset,
                       received=result.received)
        metrics.bytes_received.inc(max(result.info.offset - info.offset, 0))
        if result.outcome is Outcome.STOPPED:
            # tusd: a stopped upload is terminated, so it cannot be resumed.
            await self._remove(info.id, caller, reason="stopped_by_hook")
            return result
        if not info.state.finished and result.info.state is UploadState.COMPLETED:
            result.answer = await self._pre_finish(result.info, caller)
            await self.completed(result.info, caller)
        return result

    def raise_for(self, result: AppendResult) -> None:
        """The error a client must see for an append that did not end normally, with the
        offset to resume from."""
        match result.outcome:
            case Outcome.DONE | Outcome.DISCONNECTED:
                return  # a disconnected client reads no response anyway
            case Outcome.TOO_LARGE:
                error = TusError.too_large("body is longer than the upload's remaining length")
            case Outcome.CHECKSUM_MISMATCH:
                error = TusError.checksum_mismatch()
            case Outcome.SHUTTING_DOWN:
                error = TusError.shutting_down()
            case Outcome.STOPPED:
                # tusd's ERR_UPLOAD_STOPPED with the hook's HTTPResponse over it; no offset:
                # the upload is gone.
                answer = result.answer
                raise HookAnswer.refusal("post-receive", answer.status if answer else None,
                                         answer.body if answer else "",
                                         answer.headers if answer else {})
            case Outcome.RELEASED:
                error = TusError.interrupted()
            case Outcome.TIMED_OUT:
                error = TusError.read_timeout(self.settings.network_timeout)
            case Outcome.STORAGE_FULL | Outcome.STORAGE_FAILED:
                # 507 on a full volume: the offset is what is safely on disk; resume later.
                error = (TusError.from_os_error(result.error) if result.error is not None
                         else TusError.storage_full())
        error.headers["Upload-Offset"] = str(result.info.offset)
        raise error

    # --- finish ------------------------------------------------------------------------
    async def complete_empty(self, info: UploadInfo, hold: Hold, caller: Caller) -> UploadInfo:
        """Mark an upload complete at its offset (the draft's `Upload-Complete: ?1` on an
        upload whose content is all stored)."""
        if info.state.finished:
            return info
        if info.size is None:
            return await self.declare_length(info, hold, info.offset, caller)
        if info.offset < info.size:
            raise TusError.inconsistent_length(
                f"the upload was marked complete at offset {info.offset} of {info.size}")
        # Only an empty upload gets here (offset == size == 0 never passes a commit).
        info = await self.backend.state.commit(info.id, epoch=hold.lease.epoch,
                                               expected=info.offset, new=info.offset)
        if info.state is UploadState.COMPLETED:
            await self.completed(info, caller)
        return info

    async def _pre_finish(self, info: UploadInfo, caller: Caller) -> HookResponse | None:
        """tusd's pre-finish hook: its HTTPResponse shapes the answer to the last request."""
        from ..hooks import HookUnavailable

        hooks = self._hook("pre-finish")
        if hooks is None:
            return None
        try:
            return await hooks.ask("pre-finish", info, caller)
        except HookUnavailable as exc:
            # The bytes are stored and committed: failing the request would only make the
            # client resend them. The failure is logged (hook.failed) and processing goes on.
            logs.event("hook.pre_finish_skipped", info.id, level=logging.ERROR, error=str(exc))
            return None

    async def completed(self, info: UploadInfo, caller: Caller = NOBODY) -> None:
        """After a commit that completed an upload: queue it, or finish finals waiting on it."""
        logs.event("upload.completed", info.id, size=info.size, partial=info.partial,
                   final=info.is_final)
        metrics.uploads_finished.inc()
        if info.partial:
            await self._finish_waiting_finals(info.id, caller)
        else:
            await self.backend.queue.notify(info.id)
            logs.event("processing.queued", info.id)

    # --- terminate ---------------------------------------------------------------------
    async def terminate(self, upload_id: str, caller: Caller, **log_fields: Any) -> UploadInfo:
        """Stop any transfer, remove bytes and outputs, keep a tombstone (410 afterwards).

        The lock makes an in-flight append stop (and save) before the upload is removed.
        """
        if self.settings.disable_termination:
            raise TusError.feature_disabled("termination")
        if (hooks := self._hook("pre-terminate")) is not None:
            await hooks.gate(
                "pre-terminate", await self.load(upload_id), caller,
                refused=lambda answer: answer.reject_termination)
        await self.load(upload_id)
        async with self.hold(upload_id):
            return await self._remove(upload_id, caller, **log_fields)

    async def _remove(self, upload_id: str, caller: Caller, **log_fields: Any) -> UploadInfo:
        """Terminate an upload whose lock the caller holds."""
        info = await self.load(upload_id)
        await self.backend.data.delete(upload_id)
        await self._discard_outputs(info)
        try:
            await self.backend.state.transition(upload_id, UploadState.TERMINATED,
                                                expect=_TERMINABLE)
        except InvalidTransition:
            raise TusError.gone("terminated") from None
        logs.event("upload.terminated", upload_id, offset=info.offset, size=info.size,
                   **log_fields)
        metrics.uploads_terminated.inc()
        if (hooks := self._hook("post-terminate")) is not None:
            hooks.tell("post-terminate", info, caller)
        return info

    async def _discard_outputs(self, info: UploadInfo) -> None:
        """Termination frees the finalized copy and thumbnails too."""
        if info.result and info.result.get("file"):
            namespace = info.result["file"]["path"].split("/", 1)[0]
            await anyio.to_thread.run_sync(self.final.remove, namespace, info.id)
            if isinstance(self.backend.data, ObjectOutputs):
                await self.backend.data.delete_outputs(f"{namespace}/{info.id}")

    # --- the dashboard's API -----------------------------------------------------------
    async def list_uploads(self, states: frozenset[UploadState] | None) -> list[UploadInfo]:
        return [i for i in await self.backend.state.scan(states) if self.owns(i)]

    async def reprocess(self, upload_id: str) -> UploadInfo:
        await self.find(upload_id)
        try:
            info = await self.backend.state.transition(
                upload_id, UploadState.COMPLETED,
                expect=frozenset({UploadState.PROCESSED, UploadState.FAILED}),
                attempts=0, error=None)
        except InvalidTransition as exc:
            raise TusError.not_reprocessable(str(exc)) from None
        await self.backend.queue.requeue(upload_id)
        logs.event("processing.requeued", upload_id)
        return info
