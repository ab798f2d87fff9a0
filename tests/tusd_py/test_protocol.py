"""Pure header parsing and rendering (tusd_py.http.fields, tusd_py.tus.headers)."""

from __future__ import annotations

import base64
import hashlib

import pytest

from tusd_py.errors import TusError
from tusd_py.http.fields import parse_metadata, parse_non_negative, render_metadata
from tusd_py.service.checksums import new_hasher
from tusd_py.service.metadata import decoded_metadata
from tusd_py.tus.headers import parse_checksum, parse_concat


def b64(text: bytes) -> str:
    return base64.b64encode(text).decode()


@pytest.mark.parametrize("value", ["0", "1", "123456789012"])
def test_non_negative_accepts_plain_decimals(value: str) -> None:
    assert parse_non_negative(value, TusError.invalid_offset()) == int(value)


@pytest.mark.parametrize(
    "value", [None, "", "-1", "1.5", "abc", "+5", "01", " ", "1e3", "99999999999999999999"]
)
def test_non_negative_rejects_everything_else(value: str | None) -> None:
    with pytest.raises(TusError) as caught:
        parse_non_negative(value, TusError.invalid_offset())
    assert caught.value.status == 400


def test_metadata_roundtrip_is_byte_exact_for_non_utf8_and_key_only() -> None:
    header = f"filename {b64('słońce.pdf'.encode())},raw {b64(bytes([0xFF, 0xFE, 0]))},flag"
    parsed = parse_metadata(header)
    assert render_metadata(parsed) == header
    decoded = decoded_metadata(parsed)
    assert decoded["filename"] == "słońce.pdf" and decoded["flag"] is None


def test_metadata_accepts_spaces_around_commas_and_empty_header() -> None:
    assert parse_metadata("") == {}
    assert parse_metadata(None) == {}
    assert parse_metadata(f"a {b64(b'x')} ,  b {b64(b'y')}") == {"a": b64(b"x"), "b": b64(b"y")}


@pytest.mark.parametrize("header", ["a !!!", "a x y", "a YQ==,a YQ==", " ,a YQ==", "a YQ"])
def test_metadata_rejects_invalid(header: str) -> None:
    with pytest.raises(TusError) as caught:
        parse_metadata(header)
    assert caught.value.status == 400


def test_checksum_parsing_and_hashers() -> None:
    digest = hashlib.sha1(b"hello").digest()
    assert parse_checksum(f"sha1 {b64(digest)}") == ("sha1", digest)
    assert parse_checksum(None) is None
    for algorithm in ("sha1", "md5", "sha256", "sha512", "crc32"):
        hasher = new_hasher(algorithm)
        hasher.update(b"he")
        hasher.update(b"llo")
        if algorithm == "crc32":
            assert hasher.digest() == (907060870).to_bytes(4, "big")
        else:
            assert hasher.digest() == hashlib.new(algorithm, b"hello").digest()


@pytest.mark.parametrize(
    ("header", "status"),
    [
        ("SHA1 AAAA", 400),
        ("crc99 AAAA", 400),
        ("sha1", 400),
        ("sha1 not*base64", 400),
    ],
)
def test_checksum_rejects(header: str, status: int) -> None:
    with pytest.raises(TusError) as caught:
        parse_checksum(header)
    assert caught.value.status == status


def test_concat_parsing() -> None:
    assert parse_concat(None) is None
    assert parse_concat("partial") == (True, [])
    assert parse_concat("final;/files/a http://h/files/b") == (
        False,
        ["/files/a", "http://h/files/b"],
    )
    for bad in ("final;", "final", "foo", "partial;x"):
        with pytest.raises(TusError):
            parse_concat(bad)
