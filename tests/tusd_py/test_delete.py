"""Termination (DELETE): checklist 1.10 T1-T4, 1.1 C2."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Callable

import httpx
import pytest

from tests.conftest import ServerProcess
from tests.tusd_py.helpers import (
    OFFSET_CT,
    TUS,
    LogWatch,
    assert_error_body,
    create,
    dir_contains_bytes,
    head,
    offset_of,
    patch,
    read_response,
    upload_id,
)


@pytest.fixture(scope="module")
def mserver(server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    """The shared default, logging at debug level: `upload.patch` marks a PATCH that holds
    its upload (the event a test waits for before interfering with it)."""
    return server_factory("--network-timeout", "3", "--log-level", "debug")


def test_delete_204(mserver: ServerProcess, client: httpx.Client) -> None:
    loc = create(client, mserver, 10)
    r = client.delete(loc, headers=TUS)
    assert r.status_code == 204
    assert r.headers["Tus-Resumable"] == "1.0.0"
    assert r.content == b""


def test_after_delete_head_410(mserver: ServerProcess, client: httpx.Client) -> None:
    loc = create(client, mserver, 10)
    assert client.delete(loc, headers=TUS).status_code == 204
    r = head(client, loc)
    assert r.status_code == 410
    assert "Upload-Offset" not in r.headers


def test_after_delete_patch_410(mserver: ServerProcess, client: httpx.Client) -> None:
    loc = create(client, mserver, 10)
    assert client.delete(loc, headers=TUS).status_code == 204
    r = patch(client, loc, 0, b"abc")
    assert r.status_code == 410
    assert_error_body(r)


def test_after_delete_delete_410(mserver: ServerProcess, client: httpx.Client) -> None:
    loc = create(client, mserver, 10)
    assert client.delete(loc, headers=TUS).status_code == 204
    r = client.delete(loc, headers=TUS)
    assert r.status_code == 410


def test_after_delete_get_gone(mserver: ServerProcess, client: httpx.Client) -> None:
    loc = create(client, mserver, 3)
    assert patch(client, loc, 0, b"abc").status_code == 204
    assert client.delete(loc, headers=TUS).status_code == 204
    r = client.get(loc)
    assert r.status_code == 410  # the tombstone answers 410
    assert b"abc" not in r.content


def test_delete_finished_upload(mserver: ServerProcess, client: httpx.Client) -> None:
    loc = create(client, mserver, 3)
    assert patch(client, loc, 0, b"xyz").status_code == 204
    assert client.delete(loc, headers=TUS).status_code == 204
    assert head(client, loc).status_code == 410


def test_delete_deferred_upload(mserver: ServerProcess, client: httpx.Client) -> None:
    loc = create(client, mserver, defer=True)
    assert client.delete(loc, headers=TUS).status_code == 204
    assert head(client, loc).status_code == 410


def test_delete_unknown_404(mserver: ServerProcess, client: httpx.Client) -> None:
    r = client.delete(mserver.url + "e" * 32, headers=TUS)
    assert r.status_code == 404
    assert_error_body(r)


def test_delete_without_tus_resumable_412(mserver: ServerProcess, client: httpx.Client) -> None:
    loc = create(client, mserver, 10)
    r = client.delete(loc)
    assert r.status_code == 412
    assert r.headers["Tus-Version"] == "1.0.0"
    assert head(client, loc).status_code == 200


def test_delete_with_wrong_tus_resumable_412(mserver: ServerProcess, client: httpx.Client) -> None:
    loc = create(client, mserver, 10)
    r = client.delete(loc, headers={"Tus-Resumable": "0.2.2"})
    assert r.status_code == 412
    assert head(client, loc).status_code == 200


def test_delete_frees_stored_bytes(mserver: ServerProcess, client: httpx.Client) -> None:
    data = os.urandom(64 * 1024)
    loc = create(client, mserver, len(data) * 2)
    assert patch(client, loc, 0, data).status_code == 204
    assert dir_contains_bytes(mserver.upload_dir, data[:4096])
    assert client.delete(loc, headers=TUS).status_code == 204
    # DELETE removes the bytes before it answers.
    assert not dir_contains_bytes(mserver.upload_dir, data[:4096])


def test_delete_does_not_affect_other_uploads(mserver: ServerProcess, client: httpx.Client) -> None:
    a = create(client, mserver, 3)
    b = create(client, mserver, 3)
    assert patch(client, b, 0, b"bbb").status_code == 204
    assert client.delete(a, headers=TUS).status_code == 204
    assert offset_of(client, b) == 3
    assert client.get(b).content == b"bbb"


def test_delete_traversal_id_404(mserver: ServerProcess, client: httpx.Client) -> None:
    victim = mserver.upload_dir.parent / "victim-del"
    victim.write_bytes(b"keep")
    for target in ("..%2Fvictim-del", "%2e%2e%2fvictim-del", "..%5cvictim-del"):
        r = client.delete(mserver.url + target, headers=TUS)
        assert r.status_code == 404, (target, r.status_code)
    assert victim.read_bytes() == b"keep"


def test_delete_during_inflight_patch(mserver: ServerProcess, client: httpx.Client) -> None:
    total = 10_000_000
    loc = create(client, mserver, total)
    uid = upload_id(loc)
    req = (
        f"PATCH /files/{uid} HTTP/1.1\r\nHost: 127.0.0.1:{mserver.port}\r\n"
        f"Tus-Resumable: 1.0.0\r\nContent-Type: {OFFSET_CT}\r\nUpload-Offset: 0\r\n"
        f"Content-Length: {total}\r\n\r\n"
    ).encode()
    log = LogWatch(mserver)
    sock = socket.create_connection(("127.0.0.1", mserver.port), timeout=10)
    try:
        sock.sendall(req + b"x" * 100_000)
        log.wait_event("upload.patch", uid)  # the PATCH holds the upload now
        started = time.monotonic()
        r = client.delete(loc, headers=TUS, timeout=10)
        elapsed = time.monotonic() - started
        assert r.status_code == 204
        # must not wait for the network timeout (3 s) of the stalled PATCH
        assert elapsed < 2.5, elapsed
        # the in-flight PATCH must end: either an error response or a closed connection
        sock.settimeout(5)
        try:
            resp = read_response(sock)
            assert resp.status != 204
        except (ConnectionError, OSError):
            pass
        h = head(client, loc)
        assert h.status_code == 410
        # Once the PATCH has ended, nothing the client still sends can bring the upload back.
        log.wait(rf"\srequest\.done\s(?=.*\bupload_id={uid}\b).*\bmethod=PATCH\b")
        with contextlib.suppress(OSError):
            sock.sendall(b"y" * 100_000)
        assert head(client, loc).status_code == 410
    finally:
        sock.close()
