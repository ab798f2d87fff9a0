"""Where an upload's objects are: `<prefix><id>` and its manifest `<prefix><id>.part`."""

from __future__ import annotations

from ..base import UploadNotFound
from ..ids import is_valid_upload_id


def upload_key(prefix: str, upload_id: str) -> str:
    if not is_valid_upload_id(upload_id):
        raise UploadNotFound(upload_id)
    return prefix + upload_id


def part_key(prefix: str, upload_id: str) -> str:
    return upload_key(prefix, upload_id) + ".part"


def upload_id_of(prefix: str, key: str) -> str | None:
    """The upload whose object `key` is, or None for any other key under the prefix."""
    upload_id = key[len(prefix):]
    return upload_id if is_valid_upload_id(upload_id) else None
