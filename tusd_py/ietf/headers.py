"""Structured-field values (RFC 9651) the draft uses, parsed strictly.

'Other values MUST cause the entire header field to be ignored' (draft, Section
'State'): a malformed value parses as None, exactly as if it were absent.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_SF_INTEGER = re.compile(r"-?[0-9]{1,15}")


def _bare_item(value: str) -> str:
    # An Item may carry parameters (";key=value"); none are defined by the draft.
    return value.split(";", 1)[0].strip(" \t")


def sf_boolean(value: str | None) -> bool | None:
    """'?1' -> True, '?0' -> False, anything else (or absent) -> None."""
    if value is None:
        return None
    item = _bare_item(value)
    if item == "?1":
        return True
    if item == "?0":
        return False
    return None


def sf_integer(value: str | None) -> int | None:
    """A non-negative sf-integer (Upload-Offset, Upload-Length, the interop version)."""
    if value is None:
        return None
    item = _bare_item(value)
    if _SF_INTEGER.fullmatch(item) is None:
        return None
    number = int(item)
    return number if number >= 0 else None


def render_boolean(value: bool) -> str:
    return "?1" if value else "?0"


def render_dictionary(members: Mapping[str, int]) -> str:
    """An sf-dictionary of integers: 'max-size=100, min-size=0'."""
    return ", ".join(f"{key}={int(value)}" for key, value in members.items())


def parse_dictionary(value: str) -> dict[str, int]:
    """The inverse of render_dictionary, for integer members only (used by tests)."""
    out: dict[str, int] = {}
    for member in value.split(","):
        key, _, raw = member.strip().partition("=")
        out[key.strip()] = int(_bare_item(raw))
    return out
