"""Bounded-memory thumbnails and image metadata (see issue: thumbnailer)."""
