"""One memory budget for the write buffers of every body transfer in a process.

A transfer holds up to two write buffers (one filling while the other is written). At
1 MiB each, 16 parallel uploads would hold 32 MiB; the budget shrinks every transfer's
buffer as more of them run, so a process stays near its idle size plus the budget however
many uploads arrive at once. Smaller batches cost more pwritev calls
and thread hops: with 16 uploads, 170 KiB batches (8 MiB) measured 15-25 % slower than
1 MiB ones; 384 KiB (12 MiB) keeps most of the speed under a 64 MiB process.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ..config import BUDGET_BYTES, BUFFER_BYTES

BUFFERS_PER_TRANSFER = 2
MIN_BUFFER_BYTES = 64 << 10  # below this, per-batch overhead starts to dominate


class WriteBuffers:
    def __init__(self, per_transfer: int = BUFFER_BYTES, total: int = BUDGET_BYTES) -> None:
        self.per_transfer = per_transfer
        self.total = total
        self.active = 0

    @property
    def size(self) -> int:
        """The write buffer a transfer should use now (it may change between batches)."""
        share = self.total // (BUFFERS_PER_TRANSFER * max(self.active, 1))
        return min(self.per_transfer, max(share, MIN_BUFFER_BYTES))

    @contextmanager
    def transfer(self) -> Iterator[None]:
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1
