"""Upload metadata as stored: {key: base64 text or None}, decoded for people and hooks."""

from __future__ import annotations

import base64
from collections.abc import Mapping


def metadata_text(metadata: Mapping[str, str | None], key: str) -> str | None:
    """A metadata value decoded as UTF-8 (invalid bytes replaced), or None."""
    value = metadata.get(key)
    if value is None:
        return None
    return base64.b64decode(value).decode("utf-8", errors="replace")


def decoded_metadata(metadata: Mapping[str, str | None]) -> dict[str, str | None]:
    return {key: metadata_text(metadata, key) for key in metadata}


def encoded(values: Mapping[str, str]) -> dict[str, str | None]:
    """Plain text values (a hook's ChangeFileInfo.MetaData) in the stored form."""
    return {key: base64.b64encode(value.encode()).decode() for key, value in values.items()}
