"""tus 1.0 (https://tus.io/protocols/resumable-upload): one module per method, each a
thin adapter from headers to upload-service calls and from outcomes to responses."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from .delete import delete
from .get import get
from .head import head
from .options import options
from .patch import patch
from .post import post

Handler = Callable[[Request], Awaitable[Response]]

COLLECTION: dict[str, Handler] = {"POST": post, "OPTIONS": options}
RESOURCE: dict[str, Handler] = {"HEAD": head, "PATCH": patch, "DELETE": delete, "GET": get,
                                "OPTIONS": options}

__all__ = ["COLLECTION", "RESOURCE", "Handler"]
