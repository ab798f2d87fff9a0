"""--max-concurrent-uploads: body transfers at once per owner, or per client IP.

One client must not hold every connection and disk stream of the server. The
count is per process (with several instances, each enforces it on its own).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from starlette.requests import Request

from . import logs
from .auth import current_subject
from .errors import TusError

RETRY_AFTER_SECONDS = 5


def client_key(request: Request, *, behind_proxy: bool) -> str:
    """The owner when authenticated, else the client's address."""
    subject = current_subject()
    if subject is not None:
        return f"owner:{subject}"
    if behind_proxy:
        forwarded = request.headers.get("x-forwarded-for", "").split(",")[0].strip()
        if forwarded:
            return f"ip:{forwarded}"
    return f"ip:{request.client.host if request.client else '?'}"


class UploadSlots:
    def __init__(self, per_client: int) -> None:
        self.per_client = per_client  # 0 = no limit
        self._active: Counter[str] = Counter()

    @contextmanager
    def take(self, key: str, upload_id: str | None = None) -> Iterator[None]:
        if self.per_client and self._active[key] >= self.per_client:
            logs.event("upload.throttled", upload_id, client=key, active=self._active[key],
                       limit=self.per_client)
            raise TusError(429, "ERR_TOO_MANY_UPLOADS",
                           f"{self.per_client} uploads are already in progress for this client",
                           {"Retry-After": str(RETRY_AFTER_SECONDS)})
        self._active[key] += 1
        try:
            yield
        finally:
            self._active[key] -= 1
            if not self._active[key]:
                del self._active[key]
