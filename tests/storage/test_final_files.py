"""The final layout: sanitized names, no traversal, idempotent placing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from storage import FinalFiles, new_upload_id, sanitize_component


@pytest.mark.parametrize(("raw", "expected"), [
    ("scan.tif", "scan.tif"),
    ("../../etc/passwd", "_.._etc_passwd"),
    ("..", "file"),
    ("", "file"),
    (None, "file"),
    (".hidden", "hidden"),
    ("a\x00b\nc.txt", "abc.txt"),
    ("słońce 日本 🎉.pdf", "słońce 日本 _.pdf"),
    ("C:\\Windows\\evil.exe", "C__Windows_evil.exe"),
])
def test_sanitize_component(raw: str | None, expected: str) -> None:
    assert sanitize_component(raw, "file") == expected


def test_long_names_keep_their_extension_within_the_byte_limit() -> None:
    name = sanitize_component("é" * 300 + ".tiff", "file")
    assert name.endswith(".tiff") and len(name.encode()) <= 200


def test_place_links_idempotently_and_stays_inside_root(tmp_path: Path) -> None:
    source = tmp_path / "partial"
    source.write_bytes(b"hello")
    final = FinalFiles(tmp_path / "final")
    upload_id = new_upload_id()
    first = final.place(source, "../../outside", upload_id, "../x.txt")
    again = final.place(source, "../../outside", upload_id, "../x.txt")
    assert first == again and first.read_bytes() == b"hello"
    assert first.resolve().is_relative_to((tmp_path / "final").resolve())
    assert os.path.samefile(first, source)  # a link, not a second copy
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no leftovers


def test_bad_upload_id_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        FinalFiles(tmp_path).directory("default", "../x")


def test_read_output_refuses_paths_outside_root(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("no")
    final = FinalFiles(tmp_path / "final")
    (tmp_path / "final").mkdir()
    assert final.read_output("../secret") is None
