"""Expiration extension: checklist 1.8 E1-E6 (server started with --expiration 2)."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta

import httpx
import pytest

from tests.conftest import ServerProcess
from tests.tusd_py.helpers import (
    TUS,
    LogWatch,
    api_state,
    create,
    csv_set,
    event_re,
    head,
    now_utc,
    parse_http_date,
    patch,
    upload_id,
)

EXPIRATION = 2


@pytest.fixture(scope="module")
def exp_server(server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    return server_factory("--expiration", str(EXPIRATION), "--network-timeout", "3")


@pytest.fixture(scope="module")
def noexp_server(server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    return server_factory("--expiration", "0")


def test_options_advertises_expiration(exp_server: ServerProcess, client: httpx.Client) -> None:
    r = client.options(exp_server.url)
    assert "expiration" in csv_set(r.headers.get("Tus-Extension"))


def test_post_has_upload_expires(exp_server: ServerProcess, client: httpx.Client) -> None:
    start = now_utc()
    r = client.post(exp_server.url, headers={**TUS, "Upload-Length": "10"})
    assert r.status_code == 201
    expires = parse_http_date(r.headers["Upload-Expires"])
    assert expires > start - timedelta(seconds=1)
    assert expires <= start + timedelta(seconds=EXPIRATION + 2)


def test_patch_has_upload_expires(exp_server: ServerProcess, client: httpx.Client) -> None:
    loc = create(client, exp_server, 10)
    start = now_utc()
    r = patch(client, loc, 0, b"abc")
    assert r.status_code == 204
    expires = parse_http_date(r.headers["Upload-Expires"])
    assert expires > start - timedelta(seconds=1)
    assert expires <= start + timedelta(seconds=EXPIRATION + 2)


def test_deferred_post_has_upload_expires(exp_server: ServerProcess, client: httpx.Client) -> None:
    r = client.post(exp_server.url, headers={**TUS, "Upload-Defer-Length": "1"})
    assert r.status_code == 201
    parse_http_date(r.headers["Upload-Expires"])


@pytest.fixture(scope="module")
def aged(exp_server: ServerProcess) -> dict[str, str]:
    """Uploads in several states, then the sweeper expires the unfinished ones."""
    watch = LogWatch(exp_server)
    with httpx.Client(timeout=15) as c:
        out = {
            "partial": create(c, exp_server, 10),
            "empty": create(c, exp_server, 10),
            "api": create(c, exp_server, 10),
            "finished": create(c, exp_server, 3),
            "zero": create(c, exp_server, 0),
            "deferred": create(c, exp_server, defer=True),
            "delete": create(c, exp_server, 10),
        }
        assert patch(c, out["partial"], 0, b"abc").status_code == 204
        assert patch(c, out["finished"], 0, b"abc").status_code == 204
        # Created last: once the sweeper has expired it, every sweep that could have
        # expired "finished" or "zero" (if it were wrong to) has run.
        marker = create(c, exp_server, 10)
    for name in ("partial", "empty", "api", "deferred", "delete"):
        watch.wait_event("upload.expired", upload_id(out[name]), timeout=EXPIRATION + 10)
    watch.wait_event("upload.expired", upload_id(marker), timeout=EXPIRATION + 10)
    for name in ("finished", "zero"):
        assert not watch.matches(event_re("upload.expired", upload_id(out[name]))), name
    return out


def test_expired_upload_head_410(aged: dict[str, str], client: httpx.Client) -> None:
    loc = aged["partial"]
    r = head(client, loc)
    assert r.status_code == 410
    assert "Upload-Offset" not in r.headers


def test_expired_deferred_upload_head_410(aged: dict[str, str], client: httpx.Client) -> None:
    assert head(client, aged["deferred"]).status_code == 410


def test_expired_upload_patch_410(aged: dict[str, str], client: httpx.Client) -> None:
    r = patch(client, aged["empty"], 0, b"abc")
    assert r.status_code == 410
    assert "Upload-Offset" not in r.headers


def test_expired_upload_api_state(
    aged: dict[str, str], exp_server: ServerProcess, client: httpx.Client
) -> None:
    loc = aged["api"]
    uid = upload_id(loc)
    assert head(client, loc).status_code == 410
    assert api_state(client, exp_server, uid) == "expired"


def test_expired_upload_get_gone(aged: dict[str, str], client: httpx.Client) -> None:
    r = client.get(aged["partial"])
    assert r.status_code == 410  # the tombstone answers 410 for a week
    assert b"abc" not in r.content


def test_expired_upload_delete_gone(aged: dict[str, str], client: httpx.Client) -> None:
    r = client.delete(aged["delete"], headers=TUS)
    assert r.status_code == 410


def test_finished_upload_does_not_expire(aged: dict[str, str], client: httpx.Client) -> None:
    loc = aged["finished"]
    h = head(client, loc)
    assert h.status_code == 200
    assert h.headers["Upload-Offset"] == "3"
    assert client.get(loc).content == b"abc"


def test_zero_length_upload_does_not_expire(aged: dict[str, str], client: httpx.Client) -> None:
    h = head(client, aged["zero"])
    assert h.status_code == 200
    assert h.headers["Upload-Offset"] == "0"


def test_active_upload_before_expiry_still_works(
    exp_server: ServerProcess, client: httpx.Client
) -> None:
    loc = create(client, exp_server, 6)
    time.sleep(0.5)  # the behaviour under test: a pause well inside the expiration time
    r = patch(client, loc, 0, b"abc")
    assert r.status_code == 204
    assert patch(client, loc, 3, b"def").status_code == 204
    assert client.get(loc).content == b"abcdef"


def test_no_upload_expires_when_disabled(noexp_server: ServerProcess, client: httpx.Client) -> None:
    r = client.post(noexp_server.url, headers={**TUS, "Upload-Length": "10"})
    assert r.status_code == 201
    assert "Upload-Expires" not in r.headers
    p = patch(client, r.headers["Location"], 0, b"abc")
    assert p.status_code == 204
    assert "Upload-Expires" not in p.headers
    opts = client.options(noexp_server.url)
    assert "expiration" not in csv_set(opts.headers.get("Tus-Extension"))
