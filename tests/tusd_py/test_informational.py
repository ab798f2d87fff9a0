"""Unit tests of the uvicorn protocol extensions in tusd_py/informational.py."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from tusd_py.http.informational import _keeping_received_body

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_body_bytes_read_before_a_disconnect_are_handed_over_first() -> None:
    """uvicorn's receive() answers http.disconnect as soon as the connection is lost and
    drops the body bytes it had already read; those are upload bytes and must be kept."""
    calls: list[str] = []

    async def uvicorn_receive() -> dict[str, Any]:
        calls.append("uvicorn")
        return {"type": "http.disconnect"}

    cycle = SimpleNamespace(disconnected=True, response_complete=False,
                            body=bytearray(b"last bytes"), receive=uvicorn_receive)
    receive = _keeping_received_body(cycle)
    assert await receive() == {"type": "http.request", "body": b"last bytes",
                               "more_body": True}
    assert cycle.body == bytearray()
    assert await receive() == {"type": "http.disconnect"}
    assert calls == ["uvicorn"]


async def test_a_live_connection_is_left_to_uvicorn() -> None:
    async def uvicorn_receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"x", "more_body": False}

    cycle = SimpleNamespace(disconnected=False, response_complete=False,
                            body=bytearray(b"pending"), receive=uvicorn_receive)
    assert (await _keeping_received_body(cycle)())["body"] == b"x"
    assert cycle.body == bytearray(b"pending")
