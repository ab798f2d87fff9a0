"""End-to-end tests with the official Python tus client (tuspy)."""

from __future__ import annotations

import base64
import hashlib
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import requests
from tusclient import client
from tusclient.storage.filestorage import FileStorage

from tests.e2e.rawhttp import (
    TUS,
    create_upload,
    download_sha256,
    head_offset,
    upload_id,
    wait_state,
)

if TYPE_CHECKING:
    from tests.conftest import ServerProcess

MiB = 1024 * 1024


def make_file(tmp_path: Path, size: int, name: str = "data.bin") -> tuple[Path, str]:
    path = tmp_path / name
    data = os.urandom(size)
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


def assert_upload_url(server: ServerProcess, url: str | None) -> str:
    assert url is not None
    assert re.fullmatch(re.escape(server.url) + r"[0-9a-f]{32}", url), url
    return url


def api_info(server: ServerProcess, url: str) -> dict[str, Any]:
    r = httpx.get(f"{server.origin}/api/uploads/{upload_id(url)}", timeout=10)
    assert r.status_code == 200, (r.status_code, r.text)
    info: dict[str, Any] = r.json()
    return info


def test_chunked_upload(server: ServerProcess, tmp_path: Path) -> None:
    path, sha = make_file(tmp_path, 5 * MiB)
    uploader = client.TusClient(server.url).uploader(
        file_path=str(path), chunk_size=MiB, metadata={"filename": "data.bin"},
    )
    uploader.upload()
    url = assert_upload_url(server, uploader.url)

    assert uploader.offset == 5 * MiB
    assert head_offset(url) == 5 * MiB
    assert download_sha256(url) == (sha, 5 * MiB)

    info = wait_state(server, url, {"processed"})
    assert info["id"] == upload_id(url)
    assert info["size"] == 5 * MiB
    assert info["offset"] == 5 * MiB
    assert info["metadata"] == {"filename": "data.bin"}


def test_download_range(server: ServerProcess, tmp_path: Path) -> None:
    path, _ = make_file(tmp_path, 3 * MiB + 17)
    uploader = client.TusClient(server.url).uploader(file_path=str(path), chunk_size=MiB)
    uploader.upload()
    url = assert_upload_url(server, uploader.url)

    data = path.read_bytes()
    start, end = MiB - 100, 2 * MiB + 99
    r = httpx.get(url, headers={"Range": f"bytes={start}-{end}"}, timeout=10)
    assert r.status_code == 206, r.status_code
    assert r.content == data[start:end + 1]
    assert r.headers["Content-Range"] == f"bytes {start}-{end}/{len(data)}"


def test_upload_checksum(server: ServerProcess, tmp_path: Path) -> None:
    path, sha = make_file(tmp_path, 5 * MiB)
    uploader = client.TusClient(server.url).uploader(
        file_path=str(path), chunk_size=MiB, upload_checksum=True,
    )
    uploader.upload()
    url = assert_upload_url(server, uploader.url)
    assert download_sha256(url) == (sha, 5 * MiB)


def test_checksum_mismatch_is_rejected(server: ServerProcess) -> None:
    url = create_upload(server, 1024)
    chunk = os.urandom(512)
    patch_headers = {
        **TUS,
        "Content-Type": "application/offset+octet-stream",
        "Upload-Offset": "0",
    }
    bad = base64.b64encode(hashlib.sha1(chunk + b"x").digest()).decode()
    r = httpx.patch(url, content=chunk, timeout=10,
                    headers={**patch_headers, "Upload-Checksum": f"sha1 {bad}"})
    assert r.status_code == 460, (r.status_code, r.text)
    assert head_offset(url) == 0

    good = base64.b64encode(hashlib.sha1(chunk).digest()).decode()
    r = httpx.patch(url, content=chunk, timeout=10,
                    headers={**patch_headers, "Upload-Checksum": f"sha1 {good}"})
    assert r.status_code == 204, (r.status_code, r.text)
    assert r.headers["Upload-Offset"] == "512"
    assert head_offset(url) == 512


def test_no_metadata(server: ServerProcess, tmp_path: Path) -> None:
    """tuspy sends an empty Upload-Metadata header when there is no metadata."""
    path, sha = make_file(tmp_path, MiB + 3)
    uploader = client.TusClient(server.url).uploader(file_path=str(path), chunk_size=MiB)
    assert uploader.get_url_creation_headers()["upload-metadata"] == ""
    uploader.upload()
    url = assert_upload_url(server, uploader.url)
    assert download_sha256(url) == (sha, MiB + 3)
    info = wait_state(server, url, {"processed"})
    assert not info["metadata"], info


def test_resume_from_url_storage(
    server: ServerProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    size = 5 * MiB + 123
    path, sha = make_file(tmp_path, size)
    storage = FileStorage(str(tmp_path / "urls.json"))
    try:
        tus = client.TusClient(server.url)
        first = tus.uploader(file_path=str(path), chunk_size=MiB,
                             store_url=True, url_storage=storage)
        first.upload_chunk()
        first.upload_chunk()
        assert first.offset == 2 * MiB
        url = assert_upload_url(server, first.url)
        assert head_offset(url) == 2 * MiB

        sent: list[int] = []
        real_patch = requests.patch

        def counting_patch(*args: Any, **kwargs: Any) -> requests.Response:
            sent.append(len(kwargs.get("data") or b""))
            return real_patch(*args, **kwargs)

        # tusclient.request calls requests.patch for every chunk.
        monkeypatch.setattr(requests, "patch", counting_patch)

        # A fresh uploader (as after a client restart) finds the URL by fingerprint.
        second = tus.uploader(file_path=str(path), chunk_size=MiB,
                              store_url=True, url_storage=storage)
        assert second.url == url
        assert second.offset == 2 * MiB
        second.upload()
        assert second.offset == size
        assert sum(sent) == size - 2 * MiB
    finally:
        storage.close()

    assert download_sha256(url) == (sha, size)


def test_unicode_metadata_round_trips(server: ServerProcess, tmp_path: Path) -> None:
    name = "résumé \u2013 日本語 😀 ,;=.txt"
    path, sha = make_file(tmp_path, 1000)
    uploader = client.TusClient(server.url).uploader(
        file_path=str(path), metadata={"filename": name, "filetype": "text/plain"},
    )
    uploader.upload()
    url = assert_upload_url(server, uploader.url)
    assert download_sha256(url) == (sha, 1000)

    info = wait_state(server, url, {"processed"})
    assert info["metadata"]["filename"] == name
    assert info["metadata"]["filetype"] == "text/plain"
    assert api_info(server, url)["state"] == "processed"
