"""Backends under test: every one must pass the same conformance suite."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from storage import Backend, embedded_backend
from storage.redis import redis_backend

BACKENDS = ["embedded", "redis"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "embedded":
        built = embedded_backend(tmp_path)
    else:
        url = request.getfixturevalue("redis_url")
        built = redis_backend(url, tmp_path, lease_seconds=2.0, reclaim_idle_seconds=0.5)
    async with anyio.create_task_group() as tg:
        for service in built.services:
            tg.start_soon(service)
        yield built
        tg.cancel_scope.cancel()
    await built.aclose()
