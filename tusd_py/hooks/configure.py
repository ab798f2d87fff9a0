"""The process's hook sender, from the settings (the composition root calls this once)."""

from __future__ import annotations

from ..config import Settings
from .sender import Hooks, parse_events


def storage_of(settings: Settings) -> dict[str, str]:
    """What tusd puts under Event.Upload.Storage: the store's type and where it keeps
    bytes (the file's path is added per upload once it is placed)."""
    if settings.s3_bucket:
        return {"Type": "s3store", "Bucket": settings.s3_bucket}
    return {"Type": "filestore"}


def build_hooks(settings: Settings) -> Hooks | None:
    """None when no hook is configured; ValueError for unknown events."""
    if not settings.hooks_http:
        return None
    events = parse_events(settings.hooks_enabled_events)
    from .http import HttpHook

    transport = HttpHook(settings.hooks_http, timeout=settings.hooks_http_timeout)
    return Hooks(transport, events, retries=settings.hooks_http_retry,
                 backoff=settings.hooks_http_backoff, storage=storage_of(settings))
