"""Bounded-memory thumbnails and image metadata (see issue: thumbnailer).

`make_thumbnails(path, out_dir)` writes `thumb-<N>.<ext>` for each size and returns the
metadata; TIFFs are decoded band by band (or from a stored pyramid level), JPEGs with DCT
scaling, so memory stays bounded whatever the image size. `python -m thumbnailer` runs it
in a process with its own memory and time limits.
"""

from ._core import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_SIZES,
    FORMATS,
    ImageError,
    make_thumbnails,
    sniff,
)

__all__ = ["DEFAULT_MAX_PIXELS", "DEFAULT_SIZES", "FORMATS", "ImageError", "make_thumbnails",
           "sniff"]
