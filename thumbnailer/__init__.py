"""Bounded-memory thumbnails and image metadata (see issue: thumbnailer).

`make_thumbnails(path, out_dir)` writes `thumb-<N>.<ext>` for each size and returns the
metadata; TIFFs are decoded band by band (or from a stored pyramid level), JPEGs with DCT
scaling, so memory stays bounded whatever the image size. `python -m thumbnailer` runs it
in a process with its own memory and time limits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .sniff import sniff

if TYPE_CHECKING:
    from ._core import DEFAULT_MAX_PIXELS, DEFAULT_SIZES, FORMATS, ImageError, make_thumbnails


def __getattr__(name: str) -> Any:
    # Pillow is imported on first use: the tus server imports this package only to sniff.
    if name in {"DEFAULT_MAX_PIXELS", "DEFAULT_SIZES", "FORMATS", "ImageError",
                "make_thumbnails"}:
        from . import _core
        return getattr(_core, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DEFAULT_MAX_PIXELS", "DEFAULT_SIZES", "FORMATS", "ImageError", "make_thumbnails",
           "sniff"]
