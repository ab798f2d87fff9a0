"""Backends under test: every one must pass the same conformance suite."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from storage import Backend, embedded_backend

BACKENDS: dict[str, Callable[[Path], Backend]] = {
    "embedded": embedded_backend,
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return BACKENDS[request.param](tmp_path)
