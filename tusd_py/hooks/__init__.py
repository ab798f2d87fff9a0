"""Hooks: tusd's events and JSON, one sender, one transport per kind (http, ...)."""

from .event import BLOCKING, DEFAULT_EVENTS, HOOK_TYPES, HookResponse, tusd_event
from .sender import HookFailed, Hooks, HookTransport, HookUnavailable, parse_events

__all__ = ["BLOCKING", "DEFAULT_EVENTS", "HOOK_TYPES", "HookFailed", "HookResponse",
           "HookTransport", "HookUnavailable", "Hooks", "parse_events", "tusd_event"]
