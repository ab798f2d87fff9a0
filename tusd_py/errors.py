"""Every error the server answers with, declared in one table.

A TusError becomes a response with its status, a one-line plain-text body
"<code>: <message>" and any extra headers (e.g. Upload-Offset on 409). The upload
service raises them; the tus and IETF adapters only render them (the draft adapter
as an RFC 9457 problem document when the error has a problem type its version knows).
Nothing else in the server builds a TusError: add a constructor here instead.
"""

from __future__ import annotations

import errno
from collections.abc import Mapping
from typing import Any

TUS_VERSION = "1.0.0"  # sent as Tus-Version with 412


def clip(value: str, limit: int = 120) -> str:
    """A client-supplied value quoted in a reason: repr'd (one line) and bounded."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}...({len(value)} chars)"


class TusError(Exception):
    def __init__(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None,
        *, problem: str | None = None, members: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})
        # The IETF draft's problem type (https://iana.org/assignments/http-problem-types#...)
        # and its extension members, for errors the draft defines.
        self.problem = problem
        self.members = dict(members or {})

    @property
    def body(self) -> str:
        return f"{self.code}: {self.message}\n"

    # --- requests that cannot be understood -------------------------------------
    @classmethod
    def unsupported_version(cls) -> TusError:
        return cls(412, "ERR_UNSUPPORTED_VERSION", "Tus-Resumable missing or unsupported",
                   {"Tus-Version": TUS_VERSION})

    @classmethod
    def protocol_conflict(cls) -> TusError:
        return cls(400, "ERR_PROTOCOL_CONFLICT",
                   "a request carries either Tus-Resumable (tus 1.0) or "
                   "Upload-Draft-Interop-Version (IETF resumable uploads), not both")

    @classmethod
    def invalid_interop_version(cls, value: str) -> TusError:
        return cls(400, "ERR_INVALID_INTEROP_VERSION",
                   f"Upload-Draft-Interop-Version must be an integer, got {clip(value)}")

    @classmethod
    def unsupported_interop_version(cls, version: int, supported: str) -> TusError:
        return cls(400, "ERR_UNSUPPORTED_INTEROP_VERSION",
                   f"interop version {version} is not supported; this server speaks {supported}")

    @classmethod
    def invalid_content_length(cls) -> TusError:
        return cls(400, "ERR_INVALID_CONTENT_LENGTH",
                   "Content-Length must be a non-negative integer")

    @classmethod
    def bad_content_type(cls, request: str = "PATCH",
                         expected: str = "application/offset+octet-stream") -> TusError:
        return cls(415, "ERR_INVALID_CONTENT_TYPE", f"{request} needs Content-Type: {expected}")

    @classmethod
    def invalid_offset(cls) -> TusError:
        return cls(400, "ERR_INVALID_OFFSET", "Upload-Offset must be a non-negative integer")

    @classmethod
    def invalid_offset_retrieval(cls, complete_field: str) -> TusError:
        return cls(400, "ERR_INVALID_OFFSET_RETRIEVAL",
                   f"offset retrieval must not carry Upload-Offset or {complete_field}")

    @classmethod
    def invalid_length(cls, why: str = "Upload-Length must be a non-negative integer") -> TusError:
        return cls(400, "ERR_INVALID_UPLOAD_LENGTH", why)

    @classmethod
    def ambiguous_length(cls) -> TusError:
        return cls(400, "ERR_AMBIGUOUS_UPLOAD_LENGTH",
                   "send exactly one of Upload-Length and Upload-Defer-Length: 1")

    @classmethod
    def missing_upload_complete(cls) -> TusError:
        return cls(400, "ERR_MISSING_UPLOAD_COMPLETE",
                   "upload creation needs Upload-Complete: ?0 or ?1")

    @classmethod
    def invalid_metadata(cls, why: str) -> TusError:
        return cls(400, "ERR_INVALID_METADATA", f"Upload-Metadata: {why}")

    @classmethod
    def invalid_checksum(cls, why: str) -> TusError:
        return cls(400, "ERR_INVALID_CHECKSUM", f"Upload-Checksum: {why}")

    @classmethod
    def unsupported_checksum(cls, algorithm: str) -> TusError:
        return cls(400, "ERR_UNSUPPORTED_CHECKSUM_ALGORITHM",
                   f"checksum algorithm {clip(algorithm)} is not supported")

    @classmethod
    def invalid_concat(cls, value: str) -> TusError:
        return cls(400, "ERR_INVALID_CONCAT", f"Upload-Concat {clip(value)} is invalid")

    @classmethod
    def method_not_allowed(cls, allow: str) -> TusError:
        return cls(405, "ERR_METHOD_NOT_ALLOWED", f"use {allow} here", {"Allow": allow})

    @classmethod
    def unauthorized(cls, why: str) -> TusError:
        return cls(401, "ERR_UNAUTHORIZED", why, {"WWW-Authenticate": 'Bearer realm="tusd-py"'})

    @classmethod
    def auth_unavailable(cls, why: str) -> TusError:
        # Fails closed: a broken --auth-hook lets nobody in.
        return cls(503, "ERR_AUTH_UNAVAILABLE", f"authentication failed: {why}",
                   {"WWW-Authenticate": 'Bearer realm="tusd-py"'})

    @classmethod
    def invalid_query(cls, why: str) -> TusError:
        return cls(400, "ERR_INVALID_QUERY", why)

    # --- uploads that are not there (any more) ------------------------------------
    @classmethod
    def not_found(cls, what: str = "upload") -> TusError:
        return cls(404, "ERR_UPLOAD_NOT_FOUND", f"{what} not found")

    @classmethod
    def gone(cls, state: str, what: str = "upload") -> TusError:
        return cls(410, "ERR_UPLOAD_GONE", f"{what} was {state}")

    @classmethod
    def not_finished(cls) -> TusError:
        return cls(404, "ERR_UPLOAD_NOT_FINISHED", "upload is not finished; nothing to download")

    @classmethod
    def thumbnail_not_found(cls, why: str = "no such thumbnail") -> TusError:
        return cls(404, "ERR_THUMBNAIL_NOT_FOUND", why)

    @classmethod
    def feature_disabled(cls, what: str) -> TusError:
        # tusd's ErrNotImplemented for -disable-download / -termination / -concatenation.
        return cls(501, "ERR_NOT_IMPLEMENTED", f"{what} is disabled on this server")

    # --- what the upload's state does not allow ---------------------------------
    @classmethod
    def offset_mismatch(cls, current: int, provided: int | None = None) -> TusError:
        """'Mismatching Offset' problem type; 'The response MUST include the correct
        offset in the Upload-Offset header field.'"""
        return cls(409, "ERR_MISMATCHED_OFFSET",
                   f"Upload-Offset does not match the upload's offset {current}",
                   {"Upload-Offset": str(current)}, problem="mismatching-upload-offset",
                   members={"expected-offset": current, "provided-offset": provided})

    @classmethod
    def inconsistent_length(cls, why: str) -> TusError:
        return cls(400, "ERR_INCONSISTENT_UPLOAD_LENGTH",
                   f"inconsistent length values for upload: {why}",
                   problem="inconsistent-upload-length")

    @classmethod
    def completed_upload(cls) -> TusError:
        return cls(400, "ERR_UPLOAD_COMPLETED", "upload is already completed",
                   problem="completed-upload")

    @classmethod
    def too_large(cls, why: str) -> TusError:
        return cls(413, "ERR_UPLOAD_SIZE_EXCEEDED", why)

    @classmethod
    def not_partial(cls, upload_id: str) -> TusError:
        return cls(400, "ERR_INVALID_CONCAT", f"upload {upload_id} is not a partial upload")

    @classmethod
    def modify_final(cls) -> TusError:
        return cls(403, "ERR_MODIFY_FINAL", "a final concatenated upload cannot be patched")

    @classmethod
    def not_reprocessable(cls, why: str) -> TusError:
        return cls(409, "ERR_NOT_REPROCESSABLE",
                   f"only processed or failed uploads can be reprocessed ({why})")

    @classmethod
    def checksum_mismatch(cls) -> TusError:
        return cls(460, "ERR_CHECKSUM_MISMATCH",
                   "the body does not match Upload-Checksum; it was discarded")

    @classmethod
    def body_incomplete(cls, why: str) -> TusError:
        return cls(400, "ERR_BODY_INCOMPLETE", why)

    # --- contention and limits ------------------------------------------------------
    @classmethod
    def locked(cls) -> TusError:
        return cls(423, "ERR_FILE_LOCKED", "upload is busy with another request; retry")

    @classmethod
    def interrupted(cls) -> TusError:
        return cls(423, "ERR_UPLOAD_INTERRUPTED",
                   "a newer request for this upload took over; bytes so far were saved")

    @classmethod
    def too_many_uploads(cls, limit: int, retry_after: int) -> TusError:
        return cls(429, "ERR_TOO_MANY_UPLOADS",
                   f"{limit} uploads are already in progress for this client",
                   {"Retry-After": str(retry_after)})

    @classmethod
    def origin_not_allowed(cls) -> TusError:
        return cls(403, "ERR_ORIGIN_NOT_ALLOWED", "origin is not allowed")

    @classmethod
    def range_not_satisfiable(cls, size: int) -> TusError:
        return cls(416, "ERR_RANGE_NOT_SATISFIABLE", "requested range is outside the upload",
                   {"Content-Range": f"bytes */{size}"})

    # --- the server's side ----------------------------------------------------------
    @classmethod
    def read_timeout(cls, seconds: float) -> TusError:
        # 500, not 408: clients retry 5xx but give up on most 4xx (tusd does the same).
        return cls(500, "ERR_READ_TIMEOUT",
                   f"no data received for {seconds:g} s; bytes so far were saved")

    @classmethod
    def shutting_down(cls) -> TusError:
        return cls(503, "ERR_SERVER_SHUTTING_DOWN",
                   "server is restarting; bytes so far were saved, resume elsewhere",
                   {"Retry-After": "1"})

    @classmethod
    def unavailable(cls, why: str) -> TusError:
        return cls(503, "ERR_STORAGE_UNAVAILABLE",
                   f"upload state store unavailable ({why}); retry later", {"Retry-After": "1"})

    @classmethod
    def storage_full(cls) -> TusError:
        # 507 (RFC 4918): a 5xx, so tus clients retry; the bytes stored so far are kept.
        return cls(507, "ERR_STORAGE_FULL", "no space left on the upload volume")

    @classmethod
    def storage_failed(cls, why: str) -> TusError:
        return cls(500, "ERR_STORAGE_WRITE_FAILED",
                   f"writing to the upload volume failed ({why}); bytes so far were saved")

    @classmethod
    def from_os_error(cls, exc: OSError) -> TusError:
        """A disk error of the data or state store: 507 when the volume is full, else 500."""
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return cls.storage_full()
        return cls.storage_failed(errno.errorcode.get(exc.errno or 0, type(exc).__name__))

    @classmethod
    def hook_failed(cls, why: str) -> TusError:
        # tusd answers 500 when a blocking hook fails.
        return cls(500, "ERR_HOOK_FAILED", why, {"Retry-After": "5"})

    @classmethod
    def internal(cls, why: str) -> TusError:
        return cls(500, "ERR_INTERNAL_SERVER_ERROR", why)


# What tusd answers when a hook refuses without an HTTPResponse of its own.
HOOK_REFUSALS = {
    "pre-create": (400, "ERR_UPLOAD_REJECTED", "upload creation has been rejected by server"),
    "pre-terminate": (400, "ERR_UPLOAD_TERMINATION_REJECTED",
                      "upload termination has been rejected by server"),
    "post-receive": (400, "ERR_UPLOAD_STOPPED", "upload has been stopped by server"),
}


class HookAnswer(TusError):
    """A response a hook chose (tusd's HTTPResponse with RejectUpload / RejectTermination /
    StopUpload): its status, body and headers are sent as they are."""

    def __init__(self, status: int, body: str, headers: Mapping[str, str],
                 code: str = "ERR_REJECTED_BY_HOOK") -> None:
        first_line = body.strip().splitlines()[0] if body.strip() else "rejected by a hook"
        super().__init__(status, code, first_line[:200], headers)
        self.raw_body = body

    @classmethod
    def refusal(cls, hook_type: str, status: int | None, body: str,
                headers: Mapping[str, str]) -> HookAnswer:
        """A hook's refusal: its own HTTPResponse over tusd's default answer."""
        default_status, code, message = HOOK_REFUSALS[hook_type]
        return cls(status or default_status, body or f"{code}: {message}\n", headers, code)

    @property
    def body(self) -> str:
        return self.raw_body
