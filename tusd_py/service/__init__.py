"""The upload service and what it is made of: transfers, buffers, slots, concatenation,
expiry. Protocol-neutral: the tus and IETF adapters call it, it never calls them."""

from .caller import NOBODY, Caller
from .outcomes import AppendResult, Body, Created, Download, Outcome
from .uploads import Hold, UploadService

__all__ = ["NOBODY", "AppendResult", "Body", "Caller", "Created", "Download", "Hold", "Outcome",
           "UploadService"]
