"""IETF "Resumable Uploads for HTTP" (draft-ietf-httpbis-resumable-upload), interop
versions 3..8, served on the tus upload endpoint with the same storage, locks and
completion pipeline as tus.

Modules: versions (detection, per-version rules), headers (structured fields),
state (offset/completeness/length/limits), creation, offset (HEAD), append (PATCH),
cancel (DELETE), options, problems (error bodies), routing (dispatch).
"""

from .routing import COLLECTION, RESOURCE, DraftHandler, handle, is_draft

__all__ = ["COLLECTION", "RESOURCE", "DraftHandler", "handle", "is_draft"]
