"""glibc malloc settings (tusd_py/malloc.py): body chunks are reused, not re-mapped."""

from __future__ import annotations

import subprocess
import sys

PROBE = r"""
import ctypes, sys
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "tuned":
    from tusd_py.ops import malloc
    assert malloc.tune()
before = libc.mallinfo2().hblks
chunks = [bytes(256_000) for _ in range(8)]  # what uvloop hands over per socket read
print(libc.mallinfo2().hblks - before)
"""


def mapped_blocks(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True,
                         text=True, check=True)
    return int(out.stdout)


def test_tuned_processes_keep_socket_sized_chunks_in_the_heap() -> None:
    assert mapped_blocks("default") >= 8  # glibc maps each 256 KB block on its own
    assert mapped_blocks("tuned") == 0
