"""The dashboard at `/` in a real browser (Debian's Chromium via playwright-core).

Each test starts `tusd-py serve` on a real socket and runs one scenario of
tests/js/browser/dashboard.mjs; the server side (download sha256, /api/uploads) is checked
here. Screenshots go to tests/browser/artifacts/.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from ._support import MiB, assert_stored, jpeg_file, random_file, upload_id
from .conftest import run_node

if TYPE_CHECKING:
    from tests.conftest import ServerProcess

StartServer = Callable[..., "ServerProcess"]
STATIC = Path(__file__).resolve().parents[2] / "tusd_py" / "static"


def test_dashboard_is_served_offline_and_can_be_turned_off(start_server: StartServer) -> None:
    server = start_server()
    page = httpx.get(f"{server.origin}/", timeout=10)
    assert page.status_code == 200
    assert "text/html" in page.headers["content-type"]
    assert 'src="static/app.js"' in page.text
    for name, kind in [("app.js", "javascript"), ("tus.js", "javascript"), ("style.css", "css")]:
        res = httpx.get(f"{server.origin}/static/{name}", timeout=10)
        assert res.status_code == 200 and kind in res.headers["content-type"], name
    # No CDN, nothing fetched from another host: the page works offline.
    for path in STATIC.iterdir():
        assert not re.search(r"(src|href)=\"(https?:)?//", path.read_text()), path.name
        assert not re.search(r"import .* from ['\"]https?:", path.read_text()), path.name

    off = start_server("--no-dashboard")
    greeting = httpx.get(f"{off.origin}/", timeout=10)  # tusd's -show-greeting, on by default
    assert greeting.status_code == 200
    assert greeting.headers["content-type"].startswith("text/plain")
    assert "/files/" in greeting.text
    assert httpx.get(f"{off.origin}/static/app.js", timeout=10).status_code == 404
    silent = start_server("--no-dashboard", "-show-greeting=false")
    assert httpx.get(f"{silent.origin}/", timeout=10).status_code == 404


def test_with_auth_the_page_asks_for_a_token_and_sends_it_everywhere(
    start_server: StartServer, tmp_path: Path, artifacts: Path,
) -> None:
    """Uploads, the list, the thumbnail and the download all carry the token."""
    server = start_server("--auth-token", "tusd-py-test-token")
    photo = tmp_path / "photo.jpg"
    digest = jpeg_file(photo)
    result = run_node("dashboard.mjs", {
        "origin": server.origin, "scenario": "token", "files": [str(photo)],
        "token": "tusd-py-test-token", "downloadTo": str(tmp_path / "downloaded.jpg"),
        "screenshot": str(artifacts / "dashboard-token.png"), "query": "?pollMs=300",
    })
    assert result["asked"] == "This server needs a token."
    assert result["done"]["state"] == "done"
    assert result["thumbWidth"] > 0
    assert result["downloadName"] == "photo.jpg"
    assert hashlib.sha256((tmp_path / "downloaded.jpg").read_bytes()).hexdigest() == digest
    assert result["tokenInLocalStorage"] is False
    assert result["pageErrors"] == []
    # Without the token nothing of it is readable.
    uid = result["done"]["url"].rsplit("/", 1)[-1]
    assert httpx.get(f"{server.origin}/api/uploads/{uid}", timeout=10).status_code == 401


def test_two_files_through_the_file_input_reach_100_percent(
    start_server: StartServer, tmp_path: Path, artifacts: Path,
) -> None:
    server = start_server()
    photo, notes = tmp_path / "photo.jpg", tmp_path / "notes.bin"
    sums = {photo.name: jpeg_file(photo), notes.name: random_file(notes, 3 * MiB)}
    result = run_node("dashboard.mjs", {
        "origin": server.origin, "scenario": "two_files", "files": [str(photo), str(notes)],
        "screenshot": str(artifacts / "dashboard-two-files.png"), "query": "?pollMs=500",
        "phoneScreenshot": str(artifacts / "dashboard-phone.png"),
    })
    assert [t["name"] for t in result["transfers"]] == [photo.name, notes.name]
    for t in result["transfers"]:
        assert t["state"] == "done" and t["percent"] == 100, t
        assert t["progressValue"] == t["progressMax"] == (photo.stat().st_size
                                                            if t["name"] == photo.name
                                                            else notes.stat().st_size)
        assert "100 %" in t["text"]
        assert_stored(server, t["url"], sums[t["name"]])
    rows = {r["id"]: r for r in result["rows"]}
    for t in result["transfers"]:
        row = rows[upload_id(t["url"])]
        assert t["name"] in row["text"]
        assert row["download"] == f"/files/{upload_id(t['url'])}"
    # accessibility: labelled progress bars and a polite live region
    assert sorted(result["labels"]) == [f"Progress of {notes.name}", f"Progress of {photo.name}"]
    assert result["liveRegion"]["live"] == "polite"
    assert result["tabOrder"] == ["skip-link", "file-input"]
    # readable on a phone: no horizontal scrolling at 360 px
    assert result["phone"]["scrollWidth"] <= result["phone"]["innerWidth"] == 360
    assert (artifacts / "dashboard-two-files.png").stat().st_size > 10_000


def test_drag_and_drop(start_server: StartServer) -> None:
    server = start_server()
    size = 2 * MiB + 3
    result = run_node("dashboard.mjs", {
        "origin": server.origin, "scenario": "drop", "dropName": "dropped ünïcode.txt",
        "dropSize": size,
    })
    assert result["highlighted"] and not result["highlightedAfter"]
    done = result["done"]
    assert done["state"] == "done" and done["percent"] == 100
    expected = hashlib.sha256(bytes((i * 7) & 255 for i in range(size))).hexdigest()
    status = assert_stored(server, done["url"], expected)
    assert status["metadata"] == {"filename": "dropped ünïcode.txt", "filetype": "text/plain"}


def test_thumbnail_of_an_uploaded_jpeg_appears(
    start_server: StartServer, tmp_path: Path, artifacts: Path,
) -> None:
    server = start_server()
    photo = tmp_path / "sunset.jpg"
    jpeg_file(photo, 800, 600)
    result = run_node("dashboard.mjs", {
        "origin": server.origin, "scenario": "thumbnail", "files": [str(photo)],
        "screenshot": str(artifacts / "dashboard-thumbnail.png"), "query": "?pollMs=500",
        "thumbnailTimeoutMs": 60000,
    })
    assert result["state"] == "processed", (
        f"processing failed, the page shows: {result['error']}\n{server.log()[-3000:]}")
    thumb = result["thumb"]
    assert thumb is not None, result["text"]
    assert thumb["naturalWidth"] > 0 and thumb["naturalHeight"] > 0, thumb
    assert thumb["alt"] == f"Thumbnail of {photo.name}"
    assert thumb["src"].startswith(f"/api/uploads/{result['id']}/thumbnails/")
    assert "JPEG 800\N{MULTIPLICATION SIGN}600" in result["text"]
    image = httpx.get(f"{server.origin}{thumb['src']}", timeout=10)
    assert image.status_code == 200 and image.headers["content-type"].startswith("image/")


def test_pause_and_resume_one_upload(
    start_server: StartServer, tmp_path: Path, artifacts: Path,
) -> None:
    server = start_server()
    big = tmp_path / "big.bin"
    sha256 = random_file(big, 32 * MiB)
    result = run_node("dashboard.mjs", {
        "origin": server.origin, "scenario": "pause_resume", "files": [str(big)],
        "throttleBytesPerSec": 4 * MiB, "screenshot": str(artifacts / "dashboard-paused.png"),
    })
    paused, still, done = result["paused"], result["stillPaused"], result["done"]
    assert paused["state"] == still["state"] == "paused"
    assert 0 < paused["sent"] < big.stat().st_size
    # nothing moves while paused, on the page or on the server
    assert still["sent"] == paused["sent"]
    assert result["serverOffsetWhilePaused"] == result["serverOffsetLater"] > 0
    assert result["resumeFocused"], "the Resume button should take the focus after Pause"
    assert done["state"] == "done" and done["percent"] == 100
    # resumed from where the server stood, not from zero
    assert done["resumedFrom"] == result["serverOffsetWhilePaused"]
    assert_stored(server, done["url"], sha256)


def test_reload_mid_upload_resumes_when_the_file_is_picked_again(
    start_server: StartServer, tmp_path: Path, artifacts: Path,
) -> None:
    server = start_server()
    big = tmp_path / "reload.bin"
    sha256 = random_file(big, 32 * MiB)
    result = run_node("dashboard.mjs", {
        "origin": server.origin, "scenario": "reload_resume", "files": [str(big)],
        "throttleBytesPerSec": 4 * MiB, "screenshot": str(artifacts / "dashboard-reloaded.png"),
    })
    before, done = result["before"], result["done"]
    assert before["state"] == "uploading" and before["percent"] >= 30
    assert big.name in result["offered"] and "stored" in result["offered"]
    assert done["url"] == before["url"], "the reloaded page should resume the same upload"
    assert done["resumedFrom"] > 0
    assert done["resumedFrom"] == result["serverOffsetAfterReload"]
    assert done["state"] == "done" and done["percent"] == 100
    assert result["interruptedLeft"] == 0 and result["storedKeys"] == []
    assert_stored(server, done["url"], sha256)


def test_dropped_network_resumes_by_itself(start_server: StartServer, tmp_path: Path) -> None:
    server = start_server()
    big = tmp_path / "train.bin"
    sha256 = random_file(big, 24 * MiB)
    result = run_node("dashboard.mjs", {
        "origin": server.origin, "scenario": "network_drop", "files": [str(big)],
        "throttleBytesPerSec": 4 * MiB,
    })
    before, during, done = result["before"], result["during"], result["done"]
    assert before["percent"] >= 20
    assert during["state"] in ("offline", "retrying"), during
    assert "offline" in during["text"] or "connection problem" in during["text"]
    assert result["serverOffsetWhileOffline"] > 0
    assert done["state"] == "done" and done["url"] == before["url"]
    assert done["resumedFrom"] == result["serverOffsetWhileOffline"]
    assert_stored(server, done["url"], sha256)
