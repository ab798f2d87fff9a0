"""Finalized uploads: `<final-dir>/<namespace>/<upload id>/<filename>` plus its outputs.

Placing a file is a hard link from the partial area into the final layout, so
the upload URL keeps serving the same bytes (HEAD/GET after a lost final
response must not turn into 404s) without a second copy. Across filesystems
it falls back to a copy. Every step can be re-run after a crash: an existing
final file with the same inode (or size, for copies) is left as it is.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import unicodedata
from pathlib import Path
from typing import Any

from .fsync import fsync_path
from .ids import is_valid_upload_id

_UNSAFE = re.compile(r"[^\w.\- ()+,@=]", re.UNICODE)
MAX_NAME_BYTES = 200


def sanitize_component(raw: str | None, default: str) -> str:
    """One path component that is safe on every filesystem: no separators, no dot names."""
    name = unicodedata.normalize("NFC", raw or "")
    name = name.replace("/", "_").replace("\\", "_")
    name = _UNSAFE.sub("_", "".join(c for c in name if c.isprintable()))
    name = name.strip(" .")
    while len(name.encode()) > MAX_NAME_BYTES:
        stem, dot, ext = name.rpartition(".")
        name = (stem[:-1] + dot + ext) if dot and len(ext) < 16 and stem else name[:-1]
    return name or default


class FinalFiles:
    def __init__(self, root: Path) -> None:
        self.root = root

    def directory(self, namespace: str, upload_id: str) -> Path:
        if not is_valid_upload_id(upload_id):
            raise ValueError(f"bad upload id {upload_id!r}")
        return self.root / sanitize_component(namespace, "default") / upload_id

    def place(self, source: Path, namespace: str, upload_id: str, filename: str | None) -> Path:
        """Put the upload's bytes at their final path; idempotent. Returns the final path."""
        folder = self.directory(namespace, upload_id)
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / sanitize_component(filename, "file")
        if target.exists():
            same = os.path.samefile(source, target) or (
                target.stat().st_size == source.stat().st_size)
            if same:
                return target
        tmp = folder / f".{upload_id}.placing"
        tmp.unlink(missing_ok=True)
        try:
            os.link(source, tmp)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                raise
            shutil.copyfile(source, tmp)
            with tmp.open("rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, target)
        fsync_path(folder)
        return target

    def write_json(self, folder: Path, name: str, doc: Any) -> Path:
        path = folder / name
        tmp = folder / f".{name}.tmp"
        tmp.write_text(json.dumps(doc, indent=2, ensure_ascii=False, default=str))
        os.replace(tmp, path)
        return path

    def read_output(self, relative: str) -> bytes | None:
        """Bytes of an output file (thumbnail) by its path relative to the root."""
        path = (self.root / relative).resolve()
        if not path.is_relative_to(self.root.resolve()) or not path.is_file():
            return None
        return path.read_bytes()

    def remove(self, namespace: str, upload_id: str) -> None:
        shutil.rmtree(self.directory(namespace, upload_id), ignore_errors=True)
