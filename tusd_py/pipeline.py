"""The default processor: verify, finalize, image metadata + thumbnails, result record.

Every step can run again after a crash and gives the same final state: the
final file is placed idempotently, thumbnails and the result JSON are written
through temp files and renames, and nothing here deletes the upload's bytes.
Image work runs in a child process (`python -m thumbnailer`) with its own
memory and time limits, so a codec bug or a 2 GB TIFF cannot hurt the server.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from storage import (
    DataStore,
    FinalFiles,
    LocalFiles,
    PermanentProcessingError,
    UploadInfo,
)
from thumbnailer import sniff

from . import logs
from .protocol import metadata_text
from .settings import Settings

HASH_CHUNK = 4 << 20
_PR_SET_PDEATHSIG = 1


def sha256_file(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)  # hashlib releases the GIL on big buffers
            size += len(chunk)
    return size, digest.hexdigest()


def _die_with_parent() -> None:
    # A thumbnailer orphaned by a killed server must not keep running.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class FinalizeProcessor:
    def __init__(self, settings: Settings, final: FinalFiles) -> None:
        self.settings = settings
        self.final = final

    def namespace(self, info: UploadInfo) -> str:
        return metadata_text(info.metadata, self.settings.namespace_key) or "default"

    async def process(self, info: UploadInfo, data: DataStore) -> Mapping[str, Any]:
        if not isinstance(data, LocalFiles):
            raise PermanentProcessingError("this data store has no local files to finalize")
        source = data.path(info.id)
        started = time.monotonic()
        size, sha256 = await anyio.to_thread.run_sync(sha256_file, source)
        if size != info.size:
            raise PermanentProcessingError(f"stored {size} bytes, expected {info.size}")
        namespace = self.namespace(info)
        filename = metadata_text(info.metadata, "filename")
        final = await anyio.to_thread.run_sync(self.final.place, source, namespace, info.id,
                                               filename)
        relative = final.relative_to(self.final.root).as_posix()
        logs.event("processing.moved", info.id, path=relative, sha256=sha256,
                   seconds=round(time.monotonic() - started, 3))
        result: dict[str, Any] = {
            "file": {"path": relative, "sha256": sha256, "size": size},
            "image": None, "thumbnails": [],
        }
        kind = await anyio.to_thread.run_sync(sniff, final)
        if kind is not None:
            image = await self._thumbnails(info, final)
            thumbs = image.pop("thumbnails", [])
            result["image"] = image
            result["thumbnails"] = [
                {**t, "path": (final.parent / "thumbs" / t["name"])
                 .relative_to(self.final.root).as_posix()}
                for t in thumbs
            ]
        await anyio.to_thread.run_sync(self.final.write_json, final.parent, "upload.json",
                                       {"id": info.id, **result})
        return result

    async def _thumbnails(self, info: UploadInfo, final: Path) -> dict[str, Any]:
        settings = self.settings
        out = final.parent / "thumbs"
        cmd = [sys.executable, "-m", "thumbnailer", str(final), "--out", str(out),
               "--format", settings.thumbnail_format,
               "--memory-mb", str(settings.processing_memory_mb),
               "--timeout", str(settings.processing_timeout)]
        for size in settings.thumbnail_sizes:
            cmd += ["--size", str(size)]
        started = time.monotonic()

        def run() -> subprocess.CompletedProcess[str]:
            return subprocess.run(cmd, capture_output=True, text=True, check=False,
                                  timeout=settings.processing_timeout + 10,
                                  preexec_fn=_die_with_parent)

        try:
            done = await anyio.to_thread.run_sync(run)
        except subprocess.TimeoutExpired:
            raise TimeoutError(
                f"thumbnailer ran over {settings.processing_timeout:g} s") from None
        if done.returncode == 2:
            reason = (done.stderr.strip().splitlines() or ["unreadable image"])[-1]
            # Users see this reason: name the file as they know it, not by server path.
            relative = final.relative_to(self.final.root).as_posix()
            raise PermanentProcessingError(reason.replace(str(final), relative))
        if done.returncode != 0:
            tail = (done.stderr.strip().splitlines() or [""])[-1]
            raise RuntimeError(f"thumbnailer exited {done.returncode}: {tail}")
        image: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        width, height = int(image.get("width") or 0), int(image.get("height") or 0)
        logs.event("processing.image", info.id, format=image.get("format"),
                   width=width, height=height,
                   # What a naive full decode to RGB would have needed.
                   full_decode_mb=round(width * height * 3 / 2**20),
                   path=image.get("path"), reduction=image.get("reduction"),
                   peak_rss_mb=image.get("peak_rss_mb"))
        for thumb in image.get("thumbnails", []):
            logs.event("processing.thumbnail", info.id, thumbnail=thumb.get("name"),
                       width=thumb.get("width"), height=thumb.get("height"))
        logs.event("processing.thumbnails_done", info.id,
                   ms=round((time.monotonic() - started) * 1000))
        return image
