"""Is the installed uvicorn one this release was tested with?

tusd_py/http/informational.py subclasses uvicorn's httptools and h11 protocol classes
and reads their request-cycle objects (flow, transport, body, response_started...):
uvicorn internals, not its public API, which a uvicorn release may change. The range
below is the one the test suite passed with; pyproject.toml declares the same range
(tests/tusd_py/test_uvicorn_check.py compares them) and requirements/*.txt lock a
version inside it. `tusd-py serve` calls check_uvicorn() at start-up, so that another
uvicorn is reported in one line instead of failing later in the middle of a request.
"""

from __future__ import annotations

import re
from importlib import metadata

# The uvicorn versions tusd-py was tested with (a PEP 440 specifier, `>=X.Y,<X.Y` only).
# 0.35 and older take no import path for Config(http=...), which `tusd-py serve` passes.
TESTED_UVICORN = ">=0.36,<0.55"

_BOUND = re.compile(r"(>=|<)\s*(\d+(?:\.\d+)*)")
_RELEASE = re.compile(r"\d+(?:\.\d+)*")


def _release(version: str) -> tuple[int, ...]:
    """The release segment of a version as a tuple without trailing zeros: 0.54.0 ->
    (0, 54). Pre-, post- and dev-suffixes are ignored: 0.55.0rc1 counts as 0.55."""
    match = _RELEASE.match(version.strip().lstrip("vV"))
    if match is None:
        raise ValueError(f"not a version: {version!r}")
    parts = [int(part) for part in match.group().split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def tested_range(spec: str | None = None) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(lowest included, lowest excluded) release of a `>=X.Y,<X.Y` specifier,
    TESTED_UVICORN by default."""
    spec = TESTED_UVICORN if spec is None else spec
    bounds: dict[str, tuple[int, ...]] = {}
    for part in spec.split(","):
        match = _BOUND.fullmatch(part.strip())
        if match is None or match.group(1) in bounds:
            raise ValueError(f"expected '>=X.Y,<X.Y', got {spec!r}")
        bounds[match.group(1)] = _release(match.group(2))
    if len(bounds) != 2:
        raise ValueError(f"expected '>=X.Y,<X.Y', got {spec!r}")
    return bounds[">="], bounds["<"]


def installed_uvicorn() -> str | None:
    """The installed uvicorn distribution's version, None when it is not installed."""
    try:
        return metadata.version("uvicorn")
    except metadata.PackageNotFoundError:
        return None


def check_uvicorn() -> str | None:
    """A one-line problem when the installed uvicorn is outside TESTED_UVICORN, else None."""
    version = installed_uvicorn()
    if version is None:
        return "uvicorn is not installed (tusd-py needs uvicorn[standard]" + TESTED_UVICORN + ")"
    low, high = tested_range()
    try:
        release = _release(version)
    except ValueError:
        return f"uvicorn {version} has a version tusd-py cannot read (tested: {TESTED_UVICORN})"
    if low <= release < high:
        return None
    return (f"uvicorn {version} is outside the range tusd-py was tested with "
            f"({TESTED_UVICORN}); its 1xx responses and header limits subclass uvicorn's "
            f"protocol internals, which may differ: install a tested uvicorn")
