"""The default processor: verify, finalize, image metadata + thumbnails, result record.

Every step can run again after a crash and gives the same final state: the
final file is placed idempotently, thumbnails and the result JSON are written
through temp files and renames, and nothing here deletes the upload's bytes.
Image work runs in a warm worker process (`python -m thumbnailer.worker`, one of
`--processors` kept by tusd_py/processing/pool.py) with its own memory and time
limits, so a codec bug or a 2 GB TIFF cannot hurt the server.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import anyio
import anyio.abc
import anyio.to_thread

from storage import (
    DataStore,
    FinalFiles,
    LocalFiles,
    ObjectOutputs,
    PermanentProcessingError,
    UploadInfo,
    sanitize_component,
)
from thumbnailer.sniff import sniff

from ..config import Settings
from ..ops import logs
from ..service.metadata import metadata_text
from .pool import ThumbnailPool

HASH_CHUNK = 4 << 20


def sha256_file(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)  # hashlib releases the GIL on big buffers
            size += len(chunk)
    return size, digest.hexdigest()


_THUMB_TYPES = {"jpeg": "image/jpeg", "webp": "image/webp"}


async def _download(data: DataStore, upload_id: str, size: int, path: Path) -> tuple[int, str]:
    """Stream an upload's bytes into `path`, hashing on the way; (bytes, sha256 hex)."""
    digest = hashlib.sha256()
    stored = 0
    with await anyio.to_thread.run_sync(path.open, "wb") as out:
        async for chunk in data.read(upload_id, 0, size):
            await anyio.to_thread.run_sync(_write_hashed, out, digest, chunk)
            stored += len(chunk)
        await anyio.to_thread.run_sync(out.flush)
    return stored, digest.hexdigest()


def _write_hashed(out: BinaryIO, digest: Any, chunk: bytes) -> None:
    out.write(chunk)
    digest.update(chunk)


class FinalizeProcessor:
    def __init__(self, settings: Settings, final: FinalFiles) -> None:
        self.settings = settings
        self.final = final
        self.pool = ThumbnailPool(settings.processors, settings.processing_memory_mb,
                                  settings.processing_timeout,
                                  settings.thumbnail_jobs_per_worker)

    async def run_pool(self, *, task_status: anyio.abc.TaskStatus[None] =
                       anyio.TASK_STATUS_IGNORED) -> None:
        """Keeps the warm thumbnail workers; start_processing runs it beside the processors
        (without it, the first image job starts a worker)."""
        await self.pool.run(task_status=task_status)

    def namespace(self, info: UploadInfo) -> str:
        return metadata_text(info.metadata, self.settings.namespace_key) or "default"

    async def process(self, info: UploadInfo, data: DataStore) -> Mapping[str, Any]:
        size = info.size or 0
        await data.finish(info.id, size)  # an object store assembles its parts here
        namespace = self.namespace(info)
        filename = metadata_text(info.metadata, "filename")
        started = time.monotonic()
        if isinstance(data, LocalFiles):
            source = data.path(info.id)
            stored, sha256 = await anyio.to_thread.run_sync(sha256_file, source)
            self._check_size(info, stored)
            final = await anyio.to_thread.run_sync(self.final.place, source, namespace,
                                                   info.id, filename)
            return await self._finalize(info, final, final, sha256, stored, started)
        # Remote bytes (S3): the thumbnailer needs random access to a TIFF, so the object is
        # fetched once to a local temp file (streamed, bounded memory) beside the outputs.
        folder = self.final.directory(namespace, info.id)
        await anyio.to_thread.run_sync(lambda: folder.mkdir(parents=True, exist_ok=True))
        name = sanitize_component(filename, "file")
        download = folder / f".{info.id}.download"
        try:
            stored, sha256 = await _download(data, info.id, size, download)
            self._check_size(info, stored)
            if isinstance(data, ObjectOutputs):
                # The final layout lives in the bucket: a server-side copy, outputs beside it.
                relative = f"{folder.relative_to(self.final.root).as_posix()}/{name}"
                await data.place_final(info.id, relative, stored)
                return await self._finalize(info, download, folder / name, sha256, stored,
                                            started, outputs=data)
            final = await anyio.to_thread.run_sync(self.final.place, download, namespace,
                                                   info.id, filename)
            return await self._finalize(info, final, final, sha256, stored, started)
        finally:
            await anyio.to_thread.run_sync(lambda: download.unlink(missing_ok=True))

    @staticmethod
    def _check_size(info: UploadInfo, stored: int) -> None:
        if stored != info.size:
            raise PermanentProcessingError(f"stored {stored} bytes, expected {info.size}")

    async def _finalize(
        self, info: UploadInfo, source: Path, final: Path, sha256: str, size: int,
        started: float, outputs: ObjectOutputs | None = None,
    ) -> Mapping[str, Any]:
        """Thumbnails and upload.json for the bytes at `source`, placed as `final`."""
        relative = final.relative_to(self.final.root).as_posix()
        logs.event("processing.moved", info.id, path=relative, sha256=sha256,
                   seconds=round(time.monotonic() - started, 3),
                   store="files" if outputs is None else "objects")
        result: dict[str, Any] = {
            "file": {"path": relative, "sha256": sha256, "size": size},
            "image": None, "thumbnails": [],
        }
        kind = await anyio.to_thread.run_sync(sniff, source)
        if kind is not None:
            image = await self._thumbnails(info, source, final)
            thumbs = image.pop("thumbnails", [])
            result["image"] = image
            result["thumbnails"] = [
                {**t, "path": (final.parent / "thumbs" / t["name"])
                 .relative_to(self.final.root).as_posix()}
                for t in thumbs
            ]
            if outputs is not None:
                for thumb in result["thumbnails"]:
                    await outputs.put_output(thumb["path"], self.final.root / thumb["path"],
                                             _THUMB_TYPES.get(self.settings.thumbnail_format,
                                                              "application/octet-stream"))
        doc = {"id": info.id, **result}
        await anyio.to_thread.run_sync(self.final.write_json, final.parent, "upload.json", doc)
        if outputs is not None:
            raw = json.dumps(doc, indent=2, ensure_ascii=False, default=str).encode()
            await outputs.put_output(f"{final.parent.relative_to(self.final.root).as_posix()}"
                                     "/upload.json", raw, "application/json")
        return result

    async def _thumbnails(self, info: UploadInfo, source: Path, final: Path) -> dict[str, Any]:
        """Run the thumbnailer on `source`; outputs go beside `final` (they are the same
        file unless the bytes were downloaded from an object store)."""
        settings = self.settings
        out = final.parent / "thumbs"
        job = {"path": str(source), "out": str(out), "sizes": list(settings.thumbnail_sizes),
               "format": settings.thumbnail_format,
               "max_decode_mb": settings.thumbnail_max_decode_mb}
        started = time.monotonic()

        def clean() -> None:
            # An attempt killed mid-write (kill -9 of the server or of a worker) leaves its
            # temp files: this attempt rewrites every thumbnail, so they are only litter.
            for stale in out.glob(".thumb-*") if out.is_dir() else ():
                stale.unlink(missing_ok=True)

        await anyio.to_thread.run_sync(clean)
        # WorkerDied / JobTimeout / WorkerStartFailed propagate: retried, then dead-lettered.
        reply = await self.pool.submit(job, info.id)
        if not reply.get("ok"):
            reason = str(reply.get("error") or "unreadable image")
            if reply.get("kind") == "crash":  # a bug in the thumbnailer: worth a retry
                raise RuntimeError(f"thumbnailer failed: {reason}")
            # Users see this reason: name the file as they know it, not by server path, and
            # the limit by the server's flag.
            relative = final.relative_to(self.final.root).as_posix()
            reason = reason.replace(str(source), relative).replace(
                "(--max-decode-mb)", "(--thumbnail-max-decode-mb)")
            raise PermanentProcessingError(reason)
        image: dict[str, Any] = reply["meta"]
        width, height = int(image.get("width") or 0), int(image.get("height") or 0)
        logs.event("processing.image", info.id, format=image.get("format"),
                   width=width, height=height,
                   # What a naive full decode to RGB would have needed.
                   full_decode_mb=round(width * height * 3 / 2**20),
                   path=image.get("path"), reduction=image.get("reduction"),
                   peak_rss_mb=image.get("peak_rss_mb"), worker_rss_mb=reply.get("rss_mb"))
        for thumb in image.get("thumbnails", []):
            logs.event("processing.thumbnail", info.id, thumbnail=thumb.get("name"),
                       width=thumb.get("width"), height=thumb.get("height"))
        logs.event("processing.thumbnails_done", info.id,
                   ms=round((time.monotonic() - started) * 1000))
        return image
