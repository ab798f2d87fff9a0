"""Upload ids: generated here, validated before any path is built from one."""

from __future__ import annotations

import re
import uuid

# Generated ids are 32 hex digits; a pre-create hook may choose others (tusd's ChangeFileInfo.ID)
# from a charset that cannot name a path, a key separator or a `.info` / `.part` sibling.
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")


def new_upload_id() -> str:
    return uuid.uuid4().hex


def is_valid_upload_id(candidate: str) -> bool:
    """Nothing that could name a path outside the store (no dots, slashes or NUL)."""
    return _ID.fullmatch(candidate) is not None
