"""Upload ids: generated here, validated before any path is built from one."""

from __future__ import annotations

import re
import uuid

_ID = re.compile(r"[0-9a-f]{32}")


def new_upload_id() -> str:
    return uuid.uuid4().hex


def is_valid_upload_id(candidate: str) -> bool:
    """Only server-generated ids: nothing that could name a path outside the store."""
    return _ID.fullmatch(candidate) is not None
