"""Property tests (hypothesis) of the tus header parsers and the other pure parsers.

Two kinds of property: round trips (render -> parse gives back what was rendered) and
robustness (any string at all either parses or raises the documented TusError: never
another exception, which the server would turn into a 500).
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import hashlib
import re
import string
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from storage import is_valid_upload_id
from tusd_py.errors import TusError
from tusd_py.http.fields import (
    MAX_METADATA_BYTES,
    http_date,
    parse_metadata,
    parse_non_negative,
    render_metadata,
)
from tusd_py.ietf.headers import sf_boolean, sf_integer
from tusd_py.service.checksums import CHECKSUM_ALGORITHMS, new_hasher
from tusd_py.service.metadata import decoded_metadata, metadata_text
from tusd_py.tus.get import parse_range
from tusd_py.tus.headers import parse_checksum, parse_concat
from tusd_py.tus.post import part_ids

settings.register_profile("tusd-py", database=None, deadline=None, max_examples=300,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("tusd-py")

# Header values reach the app decoded as latin-1, but the parsers must survive any str.
header_text = st.text(alphabet=st.characters(max_codepoint=0xFF), max_size=300)
any_text = st.one_of(header_text, st.text(max_size=300))
ows = st.sampled_from(["", " ", "\t", "  ", " \t "])
_WS_OR_COMMA = re.compile(r"[\s,]")
meta_key = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0xFF),
                   min_size=1, max_size=20).filter(lambda k: not _WS_OR_COMMA.search(k))


def assert_documented(exc: TusError, codes: set[str], status: int = 400) -> None:
    assert exc.status == status, exc
    assert exc.code in codes, exc
    body = exc.body
    assert body.endswith("\n") and body.count("\n") == 1, f"reason is not one line: {body!r}"
    assert len(body) < 400, f"reason is not bounded: {len(body)} chars"


# ------------------------------------------------------------ Upload-Offset / -Length


@given(st.integers(min_value=0, max_value=10**19 - 1), ows, ows)
def test_non_negative_round_trip(number: int, before: str, after: str) -> None:
    assert parse_non_negative(f"{before}{number}{after}", TusError.invalid_offset()) == number


@given(st.one_of(st.none(), any_text, st.from_regex(r"\A[ \t]*[0-9]{1,25}[ \t]*\Z")))
@example(" 5\x1c")  # str.strip() drops \x1c but int() refuses it: once a 500
@example("\u0665")  # an Arabic-Indic five: a digit to int(), not to HTTP
@example("5\xa0")
@example("+5")
@example("0x10")
@example("1_000")
def test_non_negative_is_strict_decimal_or_the_given_error(value: str | None) -> None:
    error = TusError.invalid_length()
    try:
        number = parse_non_negative(value, error)
    except TusError as exc:
        assert exc is error
        return
    assert value is not None
    assert str(number) == value.strip(" \t"), "only plain ASCII decimals without sign or zeros"
    assert 0 <= number < 10**19


# ------------------------------------------------------------------ Upload-Metadata


@given(st.dictionaries(meta_key, st.one_of(st.none(), st.binary(min_size=1, max_size=60)),
                       max_size=8))
def test_metadata_round_trip_is_byte_exact(pairs: dict[str, bytes | None]) -> None:
    encoded = {k: None if v is None else base64.b64encode(v).decode() for k, v in pairs.items()}
    header = render_metadata(encoded)
    parsed = parse_metadata(header)
    assert parsed == encoded
    assert render_metadata(parsed) == header  # HEAD echoes exactly what was sent
    assert decoded_metadata(parsed) == {
        k: None if v is None else v.decode("utf-8", errors="replace") for k, v in pairs.items()}


@given(any_text)
@example("a YQ==,a YQ==")
@example("a \u00ff")
@example("k v\u0100")
@example(",")
@example("a  YQ==")
@example("\x85a YQ==")
def test_metadata_parses_or_raises_invalid_metadata(header: str) -> None:
    try:
        parsed = parse_metadata(header)
    except TusError as exc:
        assert_documented(exc, {"ERR_INVALID_METADATA"})
        return
    for key, value in parsed.items():
        assert key and not _WS_OR_COMMA.search(key)
        if value is not None:
            base64.b64decode(value, validate=True)
            assert metadata_text(parsed, key) is not None
    assert parse_metadata(render_metadata(parsed)) == parsed


@given(st.integers(min_value=MAX_METADATA_BYTES + 1, max_value=4 * MAX_METADATA_BYTES))
def test_metadata_size_is_bounded(size: int) -> None:
    header = "k " + "A" * (size - 2)
    try:
        parse_metadata(header)
    except TusError as exc:
        assert_documented(exc, {"ERR_INVALID_METADATA"})
        assert str(MAX_METADATA_BYTES) in exc.message
    else:
        raise AssertionError(f"{size}-byte Upload-Metadata was accepted")


def test_metadata_just_under_the_bound_is_accepted() -> None:
    value = "A" * ((MAX_METADATA_BYTES - 2) // 4 * 4)
    assert parse_metadata("k " + value) == {"k": value}


# ------------------------------------------------------------------ Upload-Checksum


@given(st.sampled_from(CHECKSUM_ALGORITHMS), st.data(), ows, ows)
def test_checksum_round_trip(algorithm: str, data: st.DataObject, before: str,
                             after: str) -> None:
    size = len(new_hasher(algorithm).digest())
    digest = data.draw(st.binary(min_size=size, max_size=size))
    header = f"{before}{algorithm} {base64.b64encode(digest).decode()}{after}"
    assert parse_checksum(header) == (algorithm, digest)


@given(st.sampled_from(CHECKSUM_ALGORITHMS), st.binary(max_size=80))
def test_checksum_of_the_wrong_length_is_refused_before_the_body(algorithm: str,
                                                                 digest: bytes) -> None:
    header = f"{algorithm} {base64.b64encode(digest).decode()}"
    if len(digest) == len(new_hasher(algorithm).digest()):
        assert parse_checksum(header) == (algorithm, digest)
        return
    try:
        parse_checksum(header)
    except TusError as exc:
        assert_documented(exc, {"ERR_INVALID_CHECKSUM"})
    else:
        raise AssertionError(f"{len(digest)}-byte {algorithm} digest accepted")


@given(any_text)
@example("sha256")
@example("SHA256 YQ==")
@example("sha256 YQ")
@example("sha256  YQ==")
@example("crc32 \u00e9")
def test_checksum_parses_or_raises_documented_error(header: str) -> None:
    try:
        parsed = parse_checksum(header)
    except TusError as exc:
        assert_documented(exc, {"ERR_INVALID_CHECKSUM", "ERR_UNSUPPORTED_CHECKSUM_ALGORITHM"})
        return
    assert parsed is not None
    algorithm, digest = parsed
    assert algorithm in CHECKSUM_ALGORITHMS and isinstance(digest, bytes)


@given(st.sampled_from(CHECKSUM_ALGORITHMS), st.binary(max_size=4096))
def test_hashers_match_the_reference(algorithm: str, data: bytes) -> None:
    hasher = new_hasher(algorithm)
    hasher.update(data[: len(data) // 2])
    hasher.update(data[len(data) // 2:])
    if algorithm == "crc32":
        expected = binascii.crc32(data).to_bytes(4, "big")
    else:
        expected = hashlib.new(algorithm, data).digest()
    assert hasher.digest() == expected


# -------------------------------------------------------------------- Upload-Concat

url_text = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E),
                   min_size=1, max_size=60)


@given(st.lists(url_text, min_size=1, max_size=6), ows, st.sampled_from([" ", "  ", "\t"]))
def test_concat_round_trip(urls: list[str], before: str, sep: str) -> None:
    assert parse_concat(f"{before}final;{sep.join(urls)}") == (False, urls)
    assert parse_concat(f"{before}partial{before}") == (True, [])


@given(any_text)
@example("final;")
@example("final; ")
@example("Partial")
@example("final")
def test_concat_parses_or_raises_invalid_concat(header: str) -> None:
    try:
        parsed = parse_concat(header)
    except TusError as exc:
        assert_documented(exc, {"ERR_INVALID_CONCAT"})
        return
    assert parsed is not None
    partial, urls = parsed
    assert partial == (urls == [])


upload_ids = st.from_regex(r"\A[0-9a-f]{32}\Z")


@given(st.lists(st.one_of(any_text, url_text), min_size=1, max_size=5))
@example(["http://[::1/files/0123456789abcdef0123456789abcdef"])  # once a 500 (ValueError)
@example(["/files/../uploads/x"])
@example(["/files/%2e%2e"])
@example(["/files/a\x00b"])
def test_part_ids_are_valid_ids_or_invalid_concat(urls: list[str]) -> None:
    try:
        ids = part_ids("/files/", urls)
    except TusError as exc:
        assert_documented(exc, {"ERR_INVALID_CONCAT"})
        return
    assert all(is_valid_upload_id(i) for i in ids)


@given(st.lists(upload_ids, min_size=1, max_size=5), st.booleans())
def test_part_ids_round_trip(ids: list[str], absolute: bool) -> None:
    prefix = "https://uploads.example:8443/files/" if absolute else "/files/"
    assert part_ids("/files/", [prefix + i for i in ids]) == ids


# ------------------------------------------------------------------------ upload ids


@given(any_text)
@example("..")
@example("../x")
@example("a/b")
@example("a\x00")
@example("%2e%2e")
@example("a" * 129)
def test_valid_upload_ids_cannot_name_another_path(candidate: str) -> None:
    if not is_valid_upload_id(candidate):
        return
    assert len(candidate) <= 128
    assert not set(candidate) & set("/\\.\x00%:")
    root = Path("/srv/uploads")
    assert (root / candidate).parent == root
    assert (root / f"{candidate}.info").parent == root
    assert set(candidate) <= set(string.ascii_letters + string.digits + "_-")


# --------------------------------------------------------- Range, draft fields, dates


@given(st.one_of(st.none(), any_text, st.from_regex(r"\Abytes=[0-9]{0,25}-[0-9]{0,25}\Z")),
       # Size 0 is left out: 'bytes=-1' of an empty upload gives (0, 0), which get.py
       # renders as 206 'bytes 0--1/0' (reported to the handler's owner; RFC 9110 says 416).
       st.integers(min_value=1, max_value=2**40))
@example("bytes=-0", 10)
@example("bytes=5-4", 10)
@example("bytes=10-", 10)
@example("bytes=0-0,2-3", 10)
def test_range_is_within_the_upload_or_416(header: str | None, size: int) -> None:
    try:
        span = parse_range(header, size)
    except TusError as exc:
        assert_documented(exc, {"ERR_RANGE_NOT_SATISFIABLE"}, status=416)
        assert exc.headers["Content-Range"] == f"bytes */{size}"
        return
    if span is not None:
        start, end = span
        assert 0 <= start < end <= size


@given(any_text)
@example("?1;a=b")
@example("-0")
@example("1" * 16)
def test_draft_structured_fields_never_raise(value: str) -> None:
    number = sf_integer(value)
    assert number is None or 0 <= number < 10**15
    assert sf_boolean(value) in (None, True, False)


@given(st.integers(min_value=0, max_value=10**15 - 1), ows)
def test_draft_integer_round_trip(number: int, space: str) -> None:
    assert sf_integer(f"{space}{number}{space}") == number


@given(st.floats(min_value=0, max_value=2**33, allow_nan=False))
def test_http_date_round_trip(timestamp: float) -> None:
    text = http_date(timestamp)
    assert re.fullmatch(r"[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT", text)
    assert email.utils.parsedate_to_datetime(text).timestamp() == int(timestamp)
