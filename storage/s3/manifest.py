"""The `<id>.part` object: what of an unfinished upload S3 holds durably.

It is one JSON line followed by the tail bytes:

    {"v": 1, "mpu": "<UploadId>" | null, "parts": [[number, etag, size], ...], "tail": n}\\n
    <n tail bytes>

The parts list is the confirmed prefix of the multipart upload; the tail is the
bytes after it that are too few for a part. Manifest and tail travel in one PUT,
so they can never disagree after a crash, and the durable length is
sum(part sizes) + tail. Parts S3 holds that the manifest does not list were
uploaded but never synced: they are ignored and overwritten later.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

MAX_HEADER = 4 << 20  # 10,000 parts are about 600 KB of JSON


class CorruptManifest(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Manifest:
    mpu: str | None = None
    parts: tuple[tuple[int, str, int], ...] = ()  # (part number, ETag, size), in order
    tail: int = 0

    @property
    def parts_size(self) -> int:
        return sum(p[2] for p in self.parts)

    @property
    def durable(self) -> int:
        return self.parts_size + self.tail

    def header(self) -> bytes:
        doc = {"v": 1, "mpu": self.mpu, "parts": [list(p) for p in self.parts],
               "tail": self.tail}
        return json.dumps(doc, separators=(",", ":")).encode() + b"\n"


def parse_header(line: bytes) -> Manifest:
    try:
        doc = json.loads(line)
        if doc.get("v") != 1:
            raise CorruptManifest(f"unknown manifest version {doc.get('v')!r}")
        parts = tuple((int(n), str(etag), int(size)) for n, etag, size in doc["parts"])
        return Manifest(mpu=doc["mpu"], parts=parts, tail=int(doc["tail"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptManifest(str(exc)) from exc
