"""kill -9, over and over: nothing committed is lost, everything completed is processed once.

Each of CYCLES cycles starts the server on the same upload dir, continues one upload
(raw HTTP PATCHes in chunks, or the whole rest in a single PATCH) and SIGKILLs the
server at a random byte of it, or lets the upload complete and kills the server a
random moment later, while it processes (TIFFs make processing last long enough to
be hit). After every restart the offset HEAD reports is never behind what the server
had confirmed and never ahead of what was sent. At the end every upload is finished
and must download with the right sha256, and every one must have been processed
exactly once: state `processed`, one `processing.done`, one final folder holding the
file, its upload.json (with the right sha256) and nothing else left over.

The seed is printed; rerun one with TUSD_CRASH_SEED=<seed>.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import httpx
import pytest
from PIL import Image

from tests.conftest import ServerProcess
from tests.e2e.rawhttp import (
    TUS,
    KiB,
    MiB,
    Pattern,
    RawConn,
    download_sha256,
    head_offset,
    upload_id,
    wait_state,
)

SEED = int(os.environ.get("TUSD_CRASH_SEED", "20261128"))
CYCLES = 20
MAX_UPLOADS = 7


class Content(Protocol):
    size: int

    def chunks(self, start: int = 0, end: int | None = None,
               chunk: int = MiB) -> Iterator[bytes]: ...

    def sha256(self) -> str: ...


class Blob:
    """Fixed bytes (a TIFF) with Pattern's interface."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size = len(data)

    def chunks(self, start: int = 0, end: int | None = None,
               chunk: int = MiB) -> Iterator[bytes]:
        end = self.size if end is None else end
        for pos in range(start, end, chunk):
            yield self.data[pos:min(pos + chunk, end)]

    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def tiff(rng: random.Random) -> Blob:
    width = rng.randrange(1600, 2200)
    img = Image.linear_gradient("L").resize((width, width * 3 // 4)).convert("RGB")
    out = io.BytesIO()
    img.save(out, format="TIFF")
    return Blob(out.getvalue())


@dataclass
class Upload:
    name: str
    content: Content
    url: str = ""
    known: int = 0  # the offset the server confirmed last (204 or HEAD)
    sent: int = 0  # the furthest byte ever sent

    @property
    def done(self) -> bool:
        return self.known == self.content.size


def create(server: ServerProcess, up: Upload) -> None:
    meta = f"filename {base64.b64encode(up.name.encode()).decode()}"
    r = httpx.post(server.url, headers={**TUS, "Upload-Length": str(up.content.size),
                                        "Upload-Metadata": meta}, timeout=30)
    assert r.status_code == 201, (r.status_code, r.text)
    up.url = r.headers["Location"]


def send_until(up: Upload, offset: int, end: int, kill_at: int | None,
               server: ServerProcess) -> bool:
    """One PATCH of [offset, end); SIGKILL the server once kill_at bytes are sent.
    Returns True when the server was killed."""
    conn = RawConn(up.url, timeout=30)
    try:
        conn.start_patch(offset, end - offset)
        stop = end if kill_at is None else min(kill_at, end)
        conn.send_chunks(up.content.chunks(offset, stop, chunk=256 * KiB))
        up.sent = max(up.sent, stop)
        if kill_at is not None and kill_at < end:
            server.kill()
            conn.abort()
            return True
        r = conn.read_response(timeout=30)
        assert r.status == 204, (r.status, r.headers, r.body)
        up.known = int(r.headers["upload-offset"])
        assert up.known == end
        return False
    finally:
        conn.close()


def check_resumed(server: ServerProcess, up: Upload) -> None:
    offset = head_offset(up.url, timeout=30)
    assert up.known <= offset <= up.sent, (
        f"{up.name}: HEAD says {offset}, confirmed {up.known}, sent {up.sent}")
    up.known = offset


class Cycle:
    def __init__(self, rng: random.Random, server: ServerProcess) -> None:
        self.rng = rng
        self.server = server
        self.uploads: list[Upload] = []

    def pick(self) -> Upload:
        open_ = [u for u in self.uploads if not u.done]
        if not open_ or (len(open_) < 3 and len(self.uploads) < MAX_UPLOADS):
            i = len(self.uploads)
            if i in (1, 4) or self.rng.random() < 0.2:
                up = Upload(f"scan-{i}.tif", tiff(self.rng))
            else:
                up = Upload(f"file-{i}.bin", Pattern(self.rng.randrange(1, 6 * MiB),
                                                     seed=f"crash-{SEED}-{i}"))
            create(self.server, up)
            self.uploads.append(up)
            return up
        return self.rng.choice(open_)

    def run(self, number: int) -> str:
        """One cycle; the server is running on entry and killed on exit."""
        rng, server = self.rng, self.server
        up = self.pick()
        offset = head_offset(up.url, timeout=30)
        assert offset >= up.known
        up.known = offset
        size = up.content.size
        during_upload = rng.random() < 0.7
        kill_at = rng.randrange(offset, size) if during_upload else None
        style = rng.choice(["chunks", "single"])
        what = f"#{number} {up.name} {style} from {offset}/{size}"
        if style == "single":
            killed = send_until(up, offset, size, kill_at, server)
        else:
            killed = False
            while up.known < size and not killed:
                end = min(size, up.known + rng.randrange(256 * KiB, 4 * MiB))
                killed = send_until(up, up.known, end, kill_at, server)
        if killed:
            return f"{what}: killed at byte {kill_at}"
        # Completed: kill a random moment later (processing runs now).
        delay = rng.uniform(0.0, 0.5)
        time.sleep(delay)  # the behaviour under test: a kill at a random moment
        server.kill()
        return f"{what}: completed, killed {delay:.2f} s later"


def final_folders(root: Path) -> dict[str, Path]:
    if not root.exists():
        return {}
    return {p.name: p for ns in root.iterdir() for p in ns.iterdir() if p.is_dir()}


@pytest.fixture(params=["embedded", "redis"])
def backend_flags(request: pytest.FixtureRequest) -> tuple[str, ...]:
    if request.param == "redis":
        return ("--redis-url", request.getfixturevalue("redis_url"))
    return ()


def test_kill9_loop_loses_nothing_and_processes_once(
        start_server: Callable[..., ServerProcess], backend_flags: tuple[str, ...],
        tmp_path: Path) -> None:
    print(f"crash seed {SEED} (rerun with TUSD_CRASH_SEED={SEED})")
    rng = random.Random(SEED)
    server = start_server("--network-timeout", "5", *backend_flags,
                          upload_dir=tmp_path / "shared")
    loop = Cycle(rng, server)
    for number in range(CYCLES):
        print(loop.run(number))
        server.start()  # same port, same upload dir (and the same Redis)
        for up in loop.uploads:
            if not up.done:
                check_resumed(server, up)

    # Finish everything without kills; then every upload is checked end to end.
    for up in loop.uploads:
        if not up.done:
            send_until(up, up.known, up.content.size, None, server)
    root = server.upload_dir / "final"
    for up in loop.uploads:
        doc = wait_state(server, up.url, {"processed", "failed"}, timeout=60)
        assert doc["state"] == "processed", doc
        assert download_sha256(up.url) == (up.content.sha256(), up.content.size), up.name
        assert doc["file"]["sha256"] == up.content.sha256() and doc["file"]["size"] == \
            up.content.size
        uid = upload_id(up.url)
        done = [line for line in server.log().splitlines()
                if " processing.done " in line and f"upload_id={uid}" in line]
        assert len(done) == 1, f"{up.name} processed {len(done)} times"
        folder = root / doc["file"]["path"].rsplit("/", 1)[0]
        names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))
        expected = [up.name, "upload.json"]
        if up.name.endswith(".tif"):
            expected += ["thumbs", "thumbs/thumb-1024.jpg", "thumbs/thumb-256.jpg"]
        assert names == sorted(expected), f"{up.name}: {names}"
        result = json.loads((folder / "upload.json").read_text())
        assert result["id"] == uid and result["file"]["sha256"] == up.content.sha256()
    assert sorted(final_folders(root)) == sorted(upload_id(u.url) for u in loop.uploads)
    log = server.log()
    print(f"{len(loop.uploads)} uploads, {log.count('processing.started')} processing starts,"
          f" {log.count(' upload.resumed ')} resumes")
    assert "request.crashed" not in log and "processing.crashed" not in log
