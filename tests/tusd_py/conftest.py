"""Module-scoped servers and HTTP clients for the tus protocol conformance tests."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import httpx
import pytest
import redis as redis_lib

from tests.conftest import RedisServer, ServerProcess
from tests.s3_support import S3Server

_redis_dbs = itertools.cycle(range(1, 16))


@pytest.fixture(scope="module", params=["embedded", "redis", "s3-redis"])
def server_factory(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., ServerProcess]]:
    """Module-scoped factory: server_factory("--max-size", "100") starts a server.

    Every module runs three times: against the embedded default, against Redis, and
    against Redis plus a real S3 server (tests/s3_support.py) for the bytes.
    """
    started: list[ServerProcess] = []

    def _start(*args: str) -> ServerProcess:
        base = tmp_path_factory.mktemp("tusd")
        if request.param == "redis":
            redis: RedisServer = request.getfixturevalue("redis_server")
            url = f"{redis.url.rsplit('/', 1)[0]}/{next(_redis_dbs)}"
            redis_lib.Redis.from_url(url).flushdb()
            args = ("--redis-url", url, *args)
        elif request.param == "s3-redis":
            redis = request.getfixturevalue("redis_server")
            s3: S3Server = request.getfixturevalue("s3_server")
            url = f"{redis.url.rsplit('/', 1)[0]}/{next(_redis_dbs)}"
            redis_lib.Redis.from_url(url).flushdb()
            args = ("--redis-url", url, *s3.flags(f"proto-{base.name}/"), *args)
        srv = ServerProcess(upload_dir=base / "data", args=list(args))
        srv.start()
        started.append(srv)
        return srv

    yield _start
    for srv in started:
        srv.stop()


@pytest.fixture(scope="module")
def mserver(server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    """A default server shared by all tests of one module."""
    return server_factory("--network-timeout", "3")


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    """A plain client; tests add Tus-Resumable themselves (see helpers.TUS)."""
    with httpx.Client(timeout=15.0) as c:
        yield c
