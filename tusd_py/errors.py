"""Every error the tus server answers with, declared in one place.

A TusError becomes a response with its status, a one-line plain-text body
"<code>: <message>" and any extra headers (e.g. Upload-Offset on 409).
"""

from __future__ import annotations

import errno
from collections.abc import Mapping


def clip(value: str, limit: int = 120) -> str:
    """A client-supplied value quoted in a reason: repr'd (one line) and bounded."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}...({len(value)} chars)"


class TusError(Exception):
    def __init__(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})

    @property
    def body(self) -> str:
        return f"{self.code}: {self.message}\n"

    # --- the table -------------------------------------------------------------
    @classmethod
    def unsupported_version(cls) -> TusError:
        return cls(412, "ERR_UNSUPPORTED_VERSION", "Tus-Resumable missing or unsupported",
                   {"Tus-Version": "1.0.0"})

    @classmethod
    def not_found(cls) -> TusError:
        return cls(404, "ERR_UPLOAD_NOT_FOUND", "upload not found")

    @classmethod
    def gone(cls, state: str) -> TusError:
        return cls(410, "ERR_UPLOAD_GONE", f"upload was {state}")

    @classmethod
    def invalid_offset(cls) -> TusError:
        return cls(400, "ERR_INVALID_OFFSET", "Upload-Offset must be a non-negative integer")

    @classmethod
    def offset_mismatch(cls, current: int) -> TusError:
        return cls(409, "ERR_MISMATCHED_OFFSET",
                   f"Upload-Offset does not match the upload's offset {current}",
                   {"Upload-Offset": str(current)})

    @classmethod
    def invalid_length(cls, why: str = "Upload-Length must be a non-negative integer") -> TusError:
        return cls(400, "ERR_INVALID_UPLOAD_LENGTH", why)

    @classmethod
    def ambiguous_length(cls) -> TusError:
        return cls(400, "ERR_AMBIGUOUS_UPLOAD_LENGTH",
                   "send exactly one of Upload-Length and Upload-Defer-Length: 1")

    @classmethod
    def too_large(cls, why: str) -> TusError:
        return cls(413, "ERR_UPLOAD_SIZE_EXCEEDED", why)

    @classmethod
    def bad_content_type(cls) -> TusError:
        return cls(415, "ERR_INVALID_CONTENT_TYPE",
                   "PATCH needs Content-Type: application/offset+octet-stream")

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
    def checksum_mismatch(cls) -> TusError:
        return cls(460, "ERR_CHECKSUM_MISMATCH",
                   "the body does not match Upload-Checksum; it was discarded")

    @classmethod
    def invalid_concat(cls, value: str) -> TusError:
        return cls(400, "ERR_INVALID_CONCAT", f"Upload-Concat {clip(value)} is invalid")

    @classmethod
    def not_partial(cls, upload_id: str) -> TusError:
        return cls(400, "ERR_INVALID_CONCAT", f"upload {upload_id} is not a partial upload")

    @classmethod
    def modify_final(cls) -> TusError:
        return cls(403, "ERR_MODIFY_FINAL", "a final concatenated upload cannot be patched")

    @classmethod
    def locked(cls) -> TusError:
        return cls(423, "ERR_FILE_LOCKED", "upload is busy with another request; retry")

    @classmethod
    def interrupted(cls) -> TusError:
        return cls(423, "ERR_UPLOAD_INTERRUPTED",
                   "a newer request for this upload took over; bytes so far were saved")

    @classmethod
    def read_timeout(cls, seconds: float) -> TusError:
        # 500, not 408: clients retry 5xx but give up on most 4xx (tusd does the same).
        return cls(500, "ERR_READ_TIMEOUT",
                   f"no data received for {seconds:g} s; bytes so far were saved")

    @classmethod
    def not_finished(cls) -> TusError:
        return cls(404, "ERR_UPLOAD_NOT_FINISHED", "upload is not finished; nothing to download")

    @classmethod
    def range_not_satisfiable(cls, size: int) -> TusError:
        return cls(416, "ERR_RANGE_NOT_SATISFIABLE", "requested range is outside the upload",
                   {"Content-Range": f"bytes */{size}"})

    @classmethod
    def origin_not_allowed(cls) -> TusError:
        return cls(403, "ERR_ORIGIN_NOT_ALLOWED", "origin is not allowed")

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
    def internal(cls, why: str) -> TusError:
        return cls(500, "ERR_INTERNAL_SERVER_ERROR", why)
