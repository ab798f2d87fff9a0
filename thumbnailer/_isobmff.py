"""HEIF/AVIF container metadata from the ISOBMFF boxes (ftyp, meta), without any decoder.

Gives the primary image's stored size (ispe), bit depth (pixi, else hvcC/av1C), orientation
(its irot/imir properties in association order, as the equivalent EXIF value), whether it has
an ICC profile or an alpha plane, and how many top-level images the file holds. Reads only the
meta box (capped in size), never the coded image data.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import BinaryIO

from PIL import Image

META_MAX_BYTES = 16 << 20
IMAGE_TYPES = {b"hvc1", b"av01", b"grid", b"iden", b"iovl", b"unci", b"jpeg", b"avc1",
               b"vvc1", b"j2k1"}


class IsoError(Exception):
    """The container is malformed or lacks what a still image needs."""


@dataclass
class HeifInfo:
    brand: str = ""
    width: int = 0
    height: int = 0
    bit_depth: int = 8
    orientation: int = 1
    icc: bytes | None = None
    alpha: bool = False
    images: int = 1
    sequence: bool = False
    codec: str = ""
    transforms: list[tuple[str, int]] = field(default_factory=list)


def _boxes(data: bytes, start: int = 0, end: int | None = None):  # type: ignore[no-untyped-def]
    """(type, payload start, payload end) of each box in data[start:end]."""
    end = len(data) if end is None else end
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        head = 8
        if size == 1:
            if pos + 16 > end:
                raise IsoError("truncated box header")
            size = struct.unpack(">Q", data[pos + 8:pos + 16])[0]
            head = 16
        elif size == 0:
            size = end - pos
        if size < head or pos + size > end:
            raise IsoError(f"box {kind.decode('latin-1')!r} runs past its parent")
        yield kind, pos + head, pos + size
        pos += size


def _top_level(f: BinaryIO) -> tuple[bytes, bytes | None, bool]:
    """(ftyp payload, meta box bytes, has moov) walking the file's top-level boxes."""
    ftyp = b""
    meta: bytes | None = None
    moov = False
    pos = 0
    for _ in range(1000):
        f.seek(pos)
        hdr = f.read(16)
        if len(hdr) < 8:
            break
        size, kind = struct.unpack(">I4s", hdr[:8])
        head = 8
        if size == 1:
            if len(hdr) < 16:
                raise IsoError("truncated box header")
            size = struct.unpack(">Q", hdr[8:16])[0]
            head = 16
        elif size == 0:
            f.seek(0, 2)
            size = f.tell() - pos
        if size < head:
            raise IsoError(f"bad size of box {kind.decode('latin-1')!r}")
        if kind in (b"ftyp", b"meta"):
            if size > META_MAX_BYTES:
                raise IsoError(f"{kind.decode()} box of {size} bytes")
            f.seek(pos)
            body = f.read(size)
            if len(body) < size:
                raise IsoError(f"{kind.decode()} box is truncated")
            if kind == b"ftyp":
                ftyp = body[head:]
            else:
                meta = body
        elif kind == b"moov":
            moov = True
        pos += size
    return ftyp, meta, moov


def read(f: BinaryIO) -> HeifInfo:
    ftyp, meta, moov = _top_level(f)
    if not ftyp:
        raise IsoError("no ftyp box")
    info = HeifInfo(brand=ftyp[:4].decode("latin-1"))
    if meta is None:
        if moov:
            raise IsoError("image sequences without a still image are not supported")
        raise IsoError("no meta box")
    d = meta
    root = next(_boxes(d))  # the meta box itself
    if root[0] != b"meta":
        raise IsoError("no meta box")
    primary: int | None = None
    items: dict[int, tuple[bytes, bool]] = {}
    refs: list[tuple[bytes, int, list[int]]] = []
    props: list[tuple[bytes, int, int]] = []
    assoc: dict[int, list[int]] = {}
    for kind, a, b in _boxes(d, root[1] + 4, root[2]):
        if kind == b"pitm":
            primary = (struct.unpack(">H", d[a + 4:a + 6])[0] if d[a] == 0
                       else struct.unpack(">I", d[a + 4:a + 8])[0])
        elif kind == b"iinf":
            first = a + (6 if d[a] == 0 else 8)
            for k2, c, _e in _boxes(d, first, b):
                if k2 != b"infe" or d[c] < 2:
                    continue
                hidden = bool(d[c + 3] & 1)
                if d[c] == 2:
                    iid = struct.unpack(">H", d[c + 4:c + 6])[0]
                    itype = d[c + 8:c + 12]
                else:
                    iid = struct.unpack(">I", d[c + 4:c + 8])[0]
                    itype = d[c + 10:c + 14]
                items[iid] = (itype, hidden)
        elif kind == b"iref":
            wide = d[a] != 0
            for k2, c, _e in _boxes(d, a + 4, b):
                n = 4 if wide else 2
                fmt = ">I" if wide else ">H"
                src = struct.unpack(fmt, d[c:c + n])[0]
                cnt = struct.unpack(">H", d[c + n:c + n + 2])[0]
                to = [struct.unpack(fmt, d[c + n + 2 + i * n:c + 2 * n + 2 + i * n])[0]
                      for i in range(cnt)]
                refs.append((k2, src, to))
        elif kind == b"iprp":
            for k2, c, e in _boxes(d, a, b):
                if k2 == b"ipco":
                    props = list(_boxes(d, c, e))
                elif k2 == b"ipma":
                    version, flags = d[c], int.from_bytes(d[c + 1:c + 4], "big")
                    count = struct.unpack(">I", d[c + 4:c + 8])[0]
                    pos = c + 8
                    for _ in range(count):
                        if version < 1:
                            iid = struct.unpack(">H", d[pos:pos + 2])[0]
                            pos += 2
                        else:
                            iid = struct.unpack(">I", d[pos:pos + 4])[0]
                            pos += 4
                        n = d[pos]
                        pos += 1
                        idx = []
                        for _ in range(n):
                            if flags & 1:
                                idx.append(struct.unpack(">H", d[pos:pos + 2])[0] & 0x7FFF)
                                pos += 2
                            else:
                                idx.append(d[pos] & 0x7F)
                                pos += 1
                        assoc[iid] = idx
                        if pos > e:
                            raise IsoError("ipma box is truncated")
    if primary is None or primary not in items:
        raise IsoError("no primary image item")
    info.codec = items[primary][0].decode("latin-1")
    if items[primary][0] not in IMAGE_TYPES:
        raise IsoError(f"primary item is of type {info.codec!r}, not an image")

    def prop(i: int) -> tuple[bytes, bytes]:
        if not 1 <= i <= len(props):
            raise IsoError(f"property index {i} out of range")
        k, s, e = props[i - 1]
        return k, d[s:e]

    codec_bits = 0
    for i in assoc.get(primary, []):
        kind, body = prop(i)
        if kind == b"ispe" and len(body) >= 12:
            info.width, info.height = struct.unpack(">II", body[4:12])
        elif kind == b"irot" and body:
            info.transforms.append(("irot", body[0] & 3))
        elif kind == b"imir" and body:
            info.transforms.append(("imir", body[0] & 1))
        elif kind == b"pixi" and len(body) >= 6:
            info.bit_depth = max(body[5:5 + body[4]] or b"\x08")
        elif kind == b"colr" and body[:4] in (b"prof", b"rICC"):
            info.icc = body[4:]
        elif kind == b"hvcC" and len(body) >= 18:
            codec_bits = (body[17] & 7) + 8
        elif kind == b"av1C" and len(body) >= 3:
            codec_bits = 12 if body[2] & 0x20 else 10 if body[2] & 0x40 else 8
    if codec_bits and not any(prop(i)[0] == b"pixi" for i in assoc.get(primary, [])):
        info.bit_depth = codec_bits
    if not info.width or not info.height:
        raise IsoError("primary image has no size (ispe)")
    hidden_ids = {iid for iid, (_, hidden) in items.items() if hidden}
    for kind, src, to in refs:
        if kind in (b"thmb", b"auxl", b"cdsc", b"prem"):
            hidden_ids.add(src)
        elif kind == b"dimg":
            hidden_ids.update(to)
        if kind == b"auxl" and primary in to:
            for i in assoc.get(src, []):
                k, body = prop(i)
                if k == b"auxC" and b"alpha" in body:
                    info.alpha = True
    info.images = max(1, sum(1 for iid, (t, _) in items.items()
                             if t in IMAGE_TYPES and iid not in hidden_ids))
    info.sequence = moov
    info.orientation = orientation(info.transforms)
    return info


_ROT = {1: Image.Transpose.ROTATE_90, 2: Image.Transpose.ROTATE_180,
        3: Image.Transpose.ROTATE_270}
# imir axis 0 mirrors top to bottom, axis 1 left to right: what libheif and libavif write for
# EXIF orientations 4 and 2 and undo on reading (the 2017 text of ISO/IEC 23008-12 read the
# other way round; later editions match the libraries)
_MIR = {0: Image.Transpose.FLIP_TOP_BOTTOM, 1: Image.Transpose.FLIP_LEFT_RIGHT}


def orientation(transforms: list[tuple[str, int]]) -> int:
    """The EXIF orientation (1-8) equal to applying irot (anticlockwise quarter turns) and imir
    transforms in order."""
    from ._core import TRANSPOSE

    probe = Image.frombytes("L", (3, 2), bytes(range(6)))
    out = probe
    for kind, v in transforms:
        if kind == "irot" and v:
            out = out.transpose(_ROT[v])
        elif kind == "imir":
            out = out.transpose(_MIR[v])
    if out.tobytes() == probe.tobytes() and out.size == probe.size:
        return 1
    for o, t in TRANSPOSE.items():
        r = probe.transpose(t)
        if r.size == out.size and r.tobytes() == out.tobytes():
            return o
    return 1
