"""Backends under test: every one must pass the same conformance suite."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from storage import Backend, embedded_backend
from storage.redis import redis_backend
from storage.s3 import s3_backend
from tests.s3_support import S3Server

# s3-redis: bytes in a real S3 server (Swift), state/locks/queue in Redis;
# s3: the same bytes with `.info` objects instead of Redis (one instance).
# embedded-shared: the embedded files with cross-process locks (`--workers N`, no Redis).
BACKENDS = ["embedded", "embedded-shared", "redis", "s3-redis", "s3"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "embedded":
        built = embedded_backend(tmp_path)
    elif request.param == "embedded-shared":
        built = embedded_backend(tmp_path, shared=True)
    elif request.param == "redis":
        url = request.getfixturevalue("redis_url")
        built = redis_backend(url, tmp_path, lease_seconds=2.0, reclaim_idle_seconds=0.5)
    else:
        s3: S3Server = request.getfixturevalue("s3_server")
        url = request.getfixturevalue("redis_url") if request.param == "s3-redis" else None
        built = s3_backend(s3.options(), tmp_path, redis_url=url, lease_seconds=2.0,
                           reclaim_idle_seconds=0.5)
    async with anyio.create_task_group() as tg:
        for service in built.services:
            tg.start_soon(service)
        yield built
        tg.cancel_scope.cancel()
    await built.aclose()
