"""Module-scoped servers and HTTP clients for the tus protocol conformance tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.conftest import ServerProcess


@pytest.fixture(scope="module")
def server_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., ServerProcess]]:
    """Module-scoped factory: server_factory("--max-size", "100") starts a server."""
    started: list[ServerProcess] = []

    def _start(*args: str) -> ServerProcess:
        base = tmp_path_factory.mktemp("tusd")
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
