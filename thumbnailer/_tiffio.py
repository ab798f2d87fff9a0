"""Minimal TIFF structure reader and writer (no pixel decoding).

The reader walks the IFD chain and the SubIFDs of the first IFD with hard caps, keeping each
entry's raw value bytes so that codec tags can be copied verbatim into small per-band TIFFs.
The writer builds classic or BigTIFF files from already-encoded segments; it is used for the
per-band TIFFs and, streaming, by the tests and the benchmark to generate large files.
"""

from __future__ import annotations

import itertools
import os
import struct
from typing import BinaryIO

# TIFF field types: size in bytes and struct code (None: kept as bytes)
TYPE_SIZES: dict[int, tuple[int, str | None]] = {
    1: (1, "B"), 2: (1, None), 3: (2, "H"), 4: (4, "I"), 5: (8, "I"), 6: (1, "b"),
    7: (1, None), 8: (2, "h"), 9: (4, "i"), 10: (8, "i"), 11: (4, "f"), 12: (8, "d"),
    13: (4, "I"), 16: (8, "Q"), 17: (8, "q"), 18: (8, "Q"),
}

MAX_IFDS = 10_000
MAX_ENTRIES = 4_096
MAX_VALUE_BYTES = 256 << 20


class TiffFormatError(Exception):
    """The file is not a well-formed TIFF."""


class Entry:
    __slots__ = ("byteorder", "count", "raw", "tag", "type")

    def __init__(self, tag: int, typ: int, count: int, raw: bytes, byteorder: str) -> None:
        self.tag = tag
        self.type = typ
        self.count = count
        self.raw = raw
        self.byteorder = byteorder

    def values(self) -> tuple[int | float, ...]:
        _size, code = TYPE_SIZES[self.type]
        if code is None:
            return tuple(self.raw)
        if self.type in (5, 10):
            nums = struct.unpack(f"{self.byteorder}{2 * self.count}{code}", self.raw)
            return tuple(n / d if d else 0.0 for n, d in zip(nums[::2], nums[1::2], strict=True))
        return struct.unpack(f"{self.byteorder}{self.count}{code}", self.raw)


class Ifd:
    __slots__ = ("entries", "next_offset", "offset")

    def __init__(self, offset: int) -> None:
        self.offset = offset
        self.entries: dict[int, Entry] = {}
        self.next_offset = 0

    def has(self, tag: int) -> bool:
        return tag in self.entries

    def ints(self, tag: int, default: tuple[int, ...] = ()) -> tuple[int, ...]:
        e = self.entries.get(tag)
        if e is None:
            return default
        return tuple(int(v) for v in e.values())

    def num(self, tag: int, default: int) -> int:
        vals = self.ints(tag)
        return vals[0] if vals else default

    def real(self, tag: int) -> float | None:
        e = self.entries.get(tag)
        if e is None or e.count < 1:
            return None
        return float(e.values()[0])

    def raw(self, tag: int) -> bytes | None:
        e = self.entries.get(tag)
        return None if e is None else e.raw


class TiffStructure:
    __slots__ = ("bigtiff", "byteorder", "pages", "size", "subifds")

    def __init__(self, byteorder: str, bigtiff: bool, size: int, pages: list[Ifd],
                 subifds: list[Ifd]) -> None:
        self.byteorder = byteorder  # "<" or ">"
        self.bigtiff = bigtiff
        self.size = size  # file size
        self.pages = pages  # main IFD chain
        self.subifds = subifds  # SubIFDs of the first page


def read_structure(fp: BinaryIO) -> TiffStructure:
    fp.seek(0, os.SEEK_END)
    size = fp.tell()
    fp.seek(0)
    head = fp.read(16)
    if head[:2] == b"II":
        bo = "<"
    elif head[:2] == b"MM":
        bo = ">"
    else:
        raise TiffFormatError("not a TIFF file")
    if len(head) < 8:
        raise TiffFormatError("truncated TIFF header")
    (magic,) = struct.unpack(bo + "H", head[2:4])
    if magic == 42:
        big = False
        (first,) = struct.unpack(bo + "I", head[4:8])
    elif magic == 43:
        if len(head) < 16:
            raise TiffFormatError("truncated BigTIFF header")
        big = True
        (first,) = struct.unpack(bo + "Q", head[8:16])
    else:
        raise TiffFormatError(f"bad TIFF magic number {magic}")

    def load(offset: int) -> Ifd:
        return _read_ifd(fp, offset, bo, big, size)

    pages: list[Ifd] = []
    seen: set[int] = set()
    off = first
    while off:
        if off in seen:
            break  # IFD loop: stop walking, keep what we have
        if len(pages) >= MAX_IFDS:
            raise TiffFormatError(f"more than {MAX_IFDS} IFDs")
        seen.add(off)
        ifd = load(off)
        pages.append(ifd)
        off = ifd.next_offset
    if not pages:
        raise TiffFormatError("no image directory")
    subifds: list[Ifd] = []
    for sub in pages[0].ints(330)[:64]:
        if sub and sub not in seen:
            seen.add(sub)
            subifds.append(load(sub))
    return TiffStructure(bo, big, size, pages, subifds)


def _read_ifd(fp: BinaryIO, offset: int, bo: str, big: bool, size: int) -> Ifd:
    count_fmt, count_len, entry_len, inline = ("Q", 8, 20, 8) if big else ("H", 2, 12, 4)
    if offset < 8 or offset + count_len > size:
        raise TiffFormatError(f"IFD offset {offset} outside the file ({size} bytes): "
                              "truncated or corrupt")
    fp.seek(offset)
    (n,) = struct.unpack(bo + count_fmt, fp.read(count_len))
    if n == 0 or n > MAX_ENTRIES:
        raise TiffFormatError(f"IFD at {offset} has {n} entries")
    body_len = n * entry_len + inline
    body = fp.read(body_len)
    if len(body) < body_len:
        raise TiffFormatError(f"IFD at {offset} is truncated")
    ifd = Ifd(offset)
    entry_fmt = bo + ("HHQ" if big else "HHI")
    for i in range(n):
        chunk = body[i * entry_len:(i + 1) * entry_len]
        tag, typ, cnt = struct.unpack(entry_fmt, chunk[: 4 + inline])
        if typ not in TYPE_SIZES:
            continue  # unknown type: the spec says ignore
        nbytes = TYPE_SIZES[typ][0] * cnt
        if nbytes > MAX_VALUE_BYTES:
            raise TiffFormatError(f"tag {tag} declares {cnt} values")
        if nbytes <= inline:
            raw = chunk[4 + inline: 4 + inline + nbytes]
        else:
            (voff,) = struct.unpack(bo + ("Q" if big else "I"), chunk[4 + inline:])
            if voff + nbytes > size:
                raise TiffFormatError(f"tag {tag} values lie outside the file")
            pos = fp.tell()
            fp.seek(voff)
            raw = fp.read(nbytes)
            fp.seek(pos)
        ifd.entries[tag] = Entry(tag, typ, cnt, raw, bo)
    (ifd.next_offset,) = struct.unpack(bo + ("Q" if big else "I"), body[n * entry_len:])
    if ifd.next_offset >= size:
        ifd.next_offset = 0  # a dangling next pointer: treat as the end of the chain
    return ifd


# ---------------------------------------------------------------------------------------------
# Writing

Tag = tuple[int, int, "tuple[int, ...] | bytes"]  # (tag, type, values or raw bytes)


def _value_bytes(bo: str, typ: int, values: tuple[int, ...] | bytes) -> tuple[int, bytes]:
    if isinstance(values, bytes):
        size = TYPE_SIZES[typ][0]
        return len(values) // size, values
    code = TYPE_SIZES[typ][1]
    if typ in (5, 10):
        return len(values) // 2, struct.pack(f"{bo}{len(values)}{code}", *values)
    return len(values), struct.pack(f"{bo}{len(values)}{code}", *values)


class TiffWriter:
    """Write a TIFF sequentially: segments first, then IFDs, then `finish` links the chain."""

    def __init__(self, fp: BinaryIO, byteorder: str = "<", bigtiff: bool = False) -> None:
        self.fp = fp
        self.bo = byteorder
        self.big = bigtiff
        mark = b"II" if byteorder == "<" else b"MM"
        if bigtiff:
            fp.write(mark + struct.pack(byteorder + "HHHQ", 43, 8, 0, 0))
        else:
            fp.write(mark + struct.pack(byteorder + "HI", 42, 0))
        self.pos = fp.tell()
        self._next_fields: dict[int, int] = {}

    def write_data(self, data: bytes | bytearray | memoryview) -> int:
        off = self.pos
        self.fp.write(data)
        self.pos += len(data)
        return off

    def _align(self) -> None:
        if self.pos % 2:
            self.write_data(b"\0")

    def write_ifd(self, tags: list[Tag]) -> int:
        """Write one IFD (values after it); returns its offset."""
        self._align()
        bo, big = self.bo, self.big
        inline = 8 if big else 4
        entry_len = 20 if big else 12
        count_len = 8 if big else 2
        tags = sorted(tags, key=lambda t: t[0])
        start = self.pos
        extra_pos = start + count_len + len(tags) * entry_len + inline
        head = [struct.pack(bo + ("Q" if big else "H"), len(tags))]
        extra: list[bytes] = []
        for tag, typ, values in tags:
            count, data = _value_bytes(bo, typ, values)
            if len(data) <= inline:
                field_ = data.ljust(inline, b"\0")
            else:
                field_ = struct.pack(bo + ("Q" if big else "I"), extra_pos)
                if len(data) % 2:
                    data += b"\0"
                extra.append(data)
                extra_pos += len(data)
            head.append(struct.pack(bo + ("HHQ" if big else "HHI"), tag, typ, count) + field_)
        self._next_fields[start] = start + count_len + len(tags) * entry_len
        head.append(b"\0" * inline)
        self.write_data(b"".join(head) + b"".join(extra))
        return start

    def finish(self, chain: list[int]) -> None:
        """Link `chain` (IFD offsets) as the main IFD chain, first one from the header."""
        bo, big = self.bo, self.big
        fmt = bo + ("Q" if big else "I")
        self.fp.seek(8 if big else 4)
        self.fp.write(struct.pack(fmt, chain[0]))
        for cur, nxt in itertools.pairwise(chain):
            self.fp.seek(self._next_fields[cur])
            self.fp.write(struct.pack(fmt, nxt))
        self.fp.seek(0, os.SEEK_END)
