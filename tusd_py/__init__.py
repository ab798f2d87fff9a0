"""tusd-py: a tus 1.0 resumable-upload server.

The names below are imported on first use, so `tusd-py thumbnail` and other light
commands do not load the whole server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import create_app
    from .config import Settings
    from .errors import TusError

__all__ = ["Settings", "TusError", "create_app"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "Settings":
        from .config import Settings

        return Settings
    if name == "TusError":
        from .errors import TusError

        return TusError
    raise AttributeError(name)
