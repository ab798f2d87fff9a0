"""--max-concurrent-uploads: body transfers at once per owner, or per client IP.

One client must not hold every connection and disk stream of the server. The
count is per process (with several instances, each enforces it on its own).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import TusError
from ..ops import logs

RETRY_AFTER_SECONDS = 5


class UploadSlots:
    def __init__(self, per_client: int) -> None:
        self.per_client = per_client  # 0 = no limit
        self._active: Counter[str] = Counter()

    @contextmanager
    def take(self, key: str, upload_id: str | None = None) -> Iterator[None]:
        if self.per_client and self._active[key] >= self.per_client:
            logs.event("upload.throttled", upload_id, client=key, active=self._active[key],
                       limit=self.per_client)
            raise TusError.too_many_uploads(self.per_client, RETRY_AFTER_SECONDS)
        self._active[key] += 1
        try:
            yield
        finally:
            self._active[key] -= 1
            if not self._active[key]:
                del self._active[key]
