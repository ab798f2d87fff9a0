"""tusd-py: a tus 1.0 resumable-upload server."""

from .app import create_app
from .config import Settings
from .errors import TusError

__all__ = ["Settings", "TusError", "create_app"]
__version__ = "0.1.0"
