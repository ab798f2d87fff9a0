"""Which iteration of draft-ietf-httpbis-resumable-upload a request speaks.

Interop versions ('Draft Version Identification' appendix of each draft):

====  ===============  =====================================================
 v    drafts           what changes for the server
====  ===============  =====================================================
 3    -01              `Upload-Incomplete` (?1 = more requests follow)
 4    -02              `Upload-Complete` (?1 = this request completes it)
 5    -03              104 progress; HEAD may answer 200
 6    -04, -05         PATCH needs `Content-Type: application/partial-upload`;
                       `Upload-Limit` (`expires`); -05 adds `Upload-Length`;
                       problem types mismatching-upload-offset, completed-upload
 7    -06 .. -08       `expires` renamed `max-age`; problem type
                       inconsistent-upload-length
 8    -09 .. editor's  server MUST announce `Upload-Limit`; 104 section
====  ===============  =====================================================
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.datastructures import Headers

from ..errors import TusError
from .headers import sf_integer

HEADER = "upload-draft-interop-version"
SUPPORTED = (3, 4, 5, 6, 7, 8)
LATEST = SUPPORTED[-1]


@dataclass(frozen=True, slots=True)
class Draft:
    version: int  # the version whose semantics we apply
    requested: int  # what the client sent

    @property
    def supported(self) -> bool:
        """'Server implementations ... MUST NOT send a 104 ... when the interop version
        indicated by the Upload-Draft-Interop-Version header field in the request is
        missing or mismatching.'"""
        return self.requested == self.version

    @property
    def uses_incomplete(self) -> bool:
        """v3 (-01) signals completeness inverted, in `Upload-Incomplete`."""
        return self.version == 3

    @property
    def complete_field(self) -> str:
        return "Upload-Incomplete" if self.uses_incomplete else "Upload-Complete"

    @property
    def needs_partial_upload_type(self) -> bool:
        """-04: 'Require application/partial-upload for appending to uploads.'"""
        return self.version >= 6

    @property
    def has_limits(self) -> bool:
        """-04: 'Add Upload-Limit header field.'"""
        return self.version >= 6

    @property
    def age_key(self) -> str:
        """-06: 'Rename expires limit to max-age.'"""
        return "expires" if self.version == 6 else "max-age"

    def has_problem(self, kind: str) -> bool:
        """Problem types: -04 added mismatching offset and completed upload, -06
        inconsistent length."""
        if kind == "inconsistent-upload-length":
            return self.version >= 7
        return self.version >= 6


def detect(headers: Headers) -> Draft | None:
    """None for a request without `Upload-Draft-Interop-Version` (tus or plain HTTP).

    A version newer than ours is served with the newest semantics we know but never
    gets a 104 (the draft forbids it), so the upload degrades to a plain
    non-resumable one, the draft's fallback ('Upgrading To Resumable Uploads').
    Versions before 3 used client-generated Upload-Tokens: refused with a reason.
    """
    raw = headers.get(HEADER)
    if raw is None:
        return None
    requested = sf_integer(raw)
    if requested is None:
        raise TusError.invalid_interop_version(raw)
    if requested < SUPPORTED[0]:
        raise TusError.unsupported_interop_version(requested, f"{SUPPORTED[0]}..{LATEST}")
    return Draft(version=min(requested, LATEST), requested=requested)
