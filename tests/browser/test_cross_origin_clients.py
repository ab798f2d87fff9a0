"""tus-js-client and Uppy (@uppy/tus) browser bundles in Chromium, from a second origin.

tests/js/browser/cross-origin.mjs serves a test page on another port (so every tus request is
cross-origin and CORS-checked), uploads a multi-MB File built in the page, interrupts it midway
(tus-js-client: abort(); Uppy: the page is reloaded mid-request), reloads, and resumes from the
fingerprint kept in localStorage. The server runs with `--cors-origins <that page's origin>`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

from tests.conftest import free_port

from ._support import MiB, assert_stored
from .conftest import run_node

if TYPE_CHECKING:
    from tests.conftest import ServerProcess

SIZE = 8 * MiB


@pytest.mark.parametrize("client", ["tus-js-client", "uppy"])
def test_browser_client_cross_origin_interrupt_reload_resume(
    start_server: Callable[..., ServerProcess], client: str,
) -> None:
    page_port = free_port()
    page_origin = f"http://127.0.0.1:{page_port}"
    server = start_server("--cors-origins", page_origin)
    result: dict[str, Any] = run_node("cross-origin.mjs", {
        "endpoint": server.url, "client": client, "size": SIZE, "pagePort": page_port,
        "throttleBytesPerSec": 2 * MiB, "interruptAt": 0.4,
    })
    assert result["pageOrigin"] == page_origin != server.origin
    # interrupted midway, and the server kept what it had received
    assert 0.3 < result["interruptedAt"] < 1
    assert 0 < result["serverOffsetAfterInterrupt"] < SIZE
    # the reloaded page found the upload in localStorage and went on with the same one
    assert result["url"] == result["firstUrl"]
    if client == "tus-js-client":
        assert [p["uploadUrl"] for p in result["previousUploads"]] == [result["firstUrl"]]
    assert result["resumePatchOffsets"], result["patches"]
    assert result["resumePatchOffsets"][0] == result["serverOffsetAfterInterrupt"]
    # every tus response was read through CORS, granted to the page's origin only
    methods = {r["method"] for r in result["tusResponses"]}
    assert {"POST", "HEAD", "PATCH"} <= methods, result["tusResponses"]
    for r in result["tusResponses"]:
        assert r.get("origin") == page_origin and r.get("allowOrigin") == page_origin, r
        exposed = r.get("exposeHeaders") or ""
        assert "Upload-Offset" in exposed and "Location" in exposed, r
    assert_stored(server, result["url"], result["sha256"])
