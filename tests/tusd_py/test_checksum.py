"""Checksum extension: checklist 1.9 S1-S4."""

from __future__ import annotations

import base64
import hashlib
import os
import zlib
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import ServerProcess
from tests.tusd_py.helpers import assert_error_body, create, head, offset_of, patch


def digest(algo: str, data: bytes) -> str:
    if algo == "crc32":
        raw = zlib.crc32(data).to_bytes(4, "big")
    else:
        raw = hashlib.new(algo, data).digest()
    return base64.b64encode(raw).decode("ascii")


def test_every_advertised_algorithm_is_verified(
    mserver: ServerProcess, client: httpx.Client
) -> None:
    advertised = client.options(mserver.url).headers["Tus-Checksum-Algorithm"].split(",")
    for algo in (a.strip() for a in advertised):
        assert algo in hashlib.algorithms_available or algo == "crc32", algo
        loc = create(client, mserver, 6)
        bad = patch(
            client, loc, 0, b"abc", headers={"Upload-Checksum": f"{algo} {digest(algo, b'x')}"}
        )
        assert bad.status_code == 460, algo
        good = patch(
            client, loc, 0, b"abc", headers={"Upload-Checksum": f"{algo} {digest(algo, b'abc')}"}
        )
        assert good.status_code == 204, algo
        assert good.headers["Upload-Offset"] == "3"


@pytest.mark.parametrize("algo", ["sha1", "md5", "sha256", "sha512"])
def test_checksum_match_204(mserver: ServerProcess, client: httpx.Client, algo: str) -> None:
    data = os.urandom(3000)
    loc = create(client, mserver, len(data) * 2)
    r = patch(client, loc, 0, data, headers={"Upload-Checksum": f"{algo} {digest(algo, data)}"})
    assert r.status_code == 204
    assert r.headers["Upload-Offset"] == str(len(data))


def test_checksum_covers_only_this_request(mserver: ServerProcess, client: httpx.Client) -> None:
    loc = create(client, mserver, 6)
    assert patch(client, loc, 0, b"abc").status_code == 204
    r = patch(client, loc, 3, b"def", headers={"Upload-Checksum": f"sha1 {digest('sha1', b'def')}"})
    assert r.status_code == 204
    assert client.get(loc).content == b"abcdef"


def test_checksum_whole_file_digest_is_mismatch(
    mserver: ServerProcess, client: httpx.Client
) -> None:
    loc = create(client, mserver, 6)
    assert patch(client, loc, 0, b"abc").status_code == 204
    whole = digest("sha1", b"abcdef")
    r = patch(client, loc, 3, b"def", headers={"Upload-Checksum": f"sha1 {whole}"})
    assert r.status_code == 460
    assert offset_of(client, loc) == 3


@pytest.mark.parametrize("algo", ["sha1", "md5", "sha256", "sha512"])
def test_checksum_mismatch_460_discards(
    mserver: ServerProcess, client: httpx.Client, algo: str
) -> None:
    loc = create(client, mserver, 8)
    assert patch(client, loc, 0, b"good").status_code == 204
    before = head(client, loc)
    wrong = digest(algo, b"something else")
    r = patch(client, loc, 4, b"evil", headers={"Upload-Checksum": f"{algo} {wrong}"})
    assert r.status_code == 460
    assert r.headers["Tus-Resumable"] == "1.0.0"
    assert_error_body(r)
    after = head(client, loc)
    assert after.headers["Upload-Offset"] == before.headers["Upload-Offset"] == "4"
    assert after.headers["Upload-Length"] == "8"
    good = f"{algo} {digest(algo, b'data')}"
    ok = patch(client, loc, 4, b"data", headers={"Upload-Checksum": good})
    assert ok.status_code == 204
    assert ok.headers["Upload-Offset"] == "8"
    assert client.get(loc).content == b"gooddata"


def test_checksum_mismatch_on_first_chunk(mserver: ServerProcess, client: httpx.Client) -> None:
    data = os.urandom(100_000)
    loc = create(client, mserver, len(data))
    bad = digest("sha1", data[:-1])
    r = patch(client, loc, 0, data, headers={"Upload-Checksum": f"sha1 {bad}"})
    assert r.status_code == 460
    assert offset_of(client, loc) == 0
    assert client.get(loc).status_code == 404
    good = digest("sha1", data)
    r = patch(client, loc, 0, data, headers={"Upload-Checksum": f"sha1 {good}"})
    assert r.status_code == 204
    assert client.get(loc).content == data


def test_checksum_mismatch_final_chunk_does_not_complete(
    mserver: ServerProcess, client: httpx.Client
) -> None:
    loc = create(client, mserver, 3)
    r = patch(client, loc, 0, b"abc", headers={"Upload-Checksum": f"sha1 {digest('sha1', b'x')}"})
    assert r.status_code == 460
    h = head(client, loc)
    assert h.headers["Upload-Offset"] == "0"
    assert client.get(loc).status_code == 404


def test_checksum_chunked_body(mserver: ServerProcess, client: httpx.Client) -> None:
    def gen() -> Iterator[bytes]:
        yield b"abc"
        yield b"def"

    loc = create(client, mserver, 6)
    value = f"sha256 {digest('sha256', b'abcdef')}"
    r = patch(client, loc, 0, gen(), headers={"Upload-Checksum": value})
    assert r.status_code == 204
    assert r.headers["Upload-Offset"] == "6"


@pytest.mark.parametrize("header", ["crc99 xx", "SHA1 {d}", "Sha1 {d}", "crc64 {d}", "sha3 {d}"])
def test_checksum_unsupported_algorithm_400(
    mserver: ServerProcess, client: httpx.Client, header: str
) -> None:
    loc = create(client, mserver, 3)
    value = header.format(d=digest("sha1", b"abc"))
    r = patch(client, loc, 0, b"abc", headers={"Upload-Checksum": value})
    assert r.status_code == 400, (value, r.status_code)
    assert_error_body(r)
    assert offset_of(client, loc) == 0


@pytest.mark.parametrize(
    "value", ["sha1", "sha1 !!!notbase64!!!", "sha1 a b", "sha1:{d}", "sha1,{d}"]
)
def test_checksum_malformed_400(mserver: ServerProcess, client: httpx.Client, value: str) -> None:
    loc = create(client, mserver, 3)
    v = value.format(d=digest("sha1", b"abc"))
    r = patch(client, loc, 0, b"abc", headers={"Upload-Checksum": v})
    assert r.status_code == 400, (v, r.status_code)
    assert offset_of(client, loc) == 0


def test_checksum_wrong_digest_length_is_mismatch_or_400(
    mserver: ServerProcess, client: httpx.Client
) -> None:
    loc = create(client, mserver, 3)
    md5_digest = digest("md5", b"abc")
    r = patch(client, loc, 0, b"abc", headers={"Upload-Checksum": f"sha1 {md5_digest}"})
    assert r.status_code == 400  # a digest of the wrong length is malformed, not a mismatch
    assert offset_of(client, loc) == 0


def test_checksum_on_deferred_upload(mserver: ServerProcess, client: httpx.Client) -> None:
    loc = create(client, mserver, defer=True)
    r = patch(
        client,
        loc,
        0,
        b"abc",
        headers={"Upload-Checksum": f"md5 {digest('md5', b'abc')}", "Upload-Length": "3"},
    )
    assert r.status_code == 204
    assert client.get(loc).content == b"abc"
