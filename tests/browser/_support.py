"""Helpers shared by the browser tests: test files and server-side checks."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from tests.e2e.rawhttp import wait_state

if TYPE_CHECKING:
    from tests.conftest import ServerProcess

MiB = 1 << 20


def random_file(path: Path, size: int) -> str:
    """Write `size` random bytes to `path`; return their sha256."""
    data = os.urandom(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def jpeg_file(path: Path, width: int = 640, height: int = 480) -> str:
    """A small real JPEG (a gradient, so the thumbnail is not blank); return its sha256."""
    from PIL import Image

    image = Image.new("RGB", (width, height))
    image.putdata([(x * 255 // width, y * 255 // height, 160)
                   for y in range(height) for x in range(width)])
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85)
    path.write_bytes(out.getvalue())
    return hashlib.sha256(out.getvalue()).hexdigest()


def upload_id(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def downloaded_sha256(server: ServerProcess, url: str) -> str:
    """sha256 of GET <upload url> (the tus download of a finished upload)."""
    digest = hashlib.sha256()
    with httpx.stream("GET", f"{server.url}{upload_id(url)}", timeout=60) as res:
        assert res.status_code == 200, (res.status_code, res.read())
        for chunk in res.iter_bytes():
            digest.update(chunk)
    return digest.hexdigest()


def wait_processed(server: ServerProcess, url: str, timeout: float = 60.0) -> dict[str, Any]:
    """GET /api/uploads/<id> once processing ended (processed or failed)."""
    return wait_state(server, url, {"processed", "failed"}, timeout=timeout)


def assert_stored(server: ServerProcess, url: str, sha256: str) -> dict[str, Any]:
    """The server holds exactly the file: download and processing result agree with sha256."""
    assert downloaded_sha256(server, url) == sha256
    status = wait_processed(server, url)
    assert status["state"] == "processed", (
        f"processing failed: {status['processing']['error']}\n{server.log()[-3000:]}")
    assert status["file"]["sha256"] == sha256
    return status
