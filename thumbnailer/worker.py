"""`python -m thumbnailer.worker`: a long-lived thumbnailer that serves jobs one at a time.

The tus server keeps a few of these warm (tusd_py/processing/pool.py) instead of starting
`python -m thumbnailer` per image: the interpreter, Pillow, libheif, libavif, TurboJPEG and
libspng are loaded once. The limits stay per process: RLIMIT_AS is set before anything is
imported, so the worker's whole life is bounded; each job gets a wall-clock alarm; and the
parent kills a worker whose job overruns and replaces it.

Protocol, one JSON object per line (stdout carries nothing else: fd 1 is pointed at stderr,
so a codec that prints cannot corrupt it):

  worker -> {"ready": true, "pid": N, "vm_mb": ..., "rss_mb": ...}        once, when warm
  parent -> {"id": "...", "path": "...", "out": "...", "sizes": [256, 1024],
             "format": "jpeg", "max_pixels": N, "max_decode_mb": 64, "timeout": 300.0}
  worker -> {"id": "...", "ok": true, "meta": {...}, "vm_mb": ..., "rss_mb": ...}
         or {"id": "...", "ok": false, "kind": "input" | "timeout" | "memory" | "crash",
             "error": "<file>: <cause>", "exit": bool, ...}

"input", "timeout" and "memory" are the image's fault (the one-shot CLI exits 2 for them);
"crash" is an unexpected exception. With "exit": true the worker leaves after the reply (a
timeout or MemoryError mid-decode may have left its heap in any state): the parent starts a
fresh one. End of stdin ends the worker.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import faulthandler
import os
import signal
import sys
import time
from collections.abc import Sequence
from types import FrameType
from typing import Any, BinaryIO

_PR_SET_PDEATHSIG = 1


class _Timeout(Exception):
    pass


def _status_mb(*keys: str) -> dict[str, float]:
    """VmSize/VmRSS/VmHWM of this process in MB (from /proc/self/status)."""
    out: dict[str, float] = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                name, _, rest = line.partition(":")
                if name in keys:
                    out[name] = round(int(rest.split()[0]) / 1024, 1)
    except OSError:
        pass
    return out


def _reset_peak() -> None:
    """Start a new VmHWM (Linux >= 4.0), so each job reports its own peak RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _die_with_parent(parent: int) -> None:
    """A worker orphaned by a killed server must not live on."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    if parent and os.getppid() != parent:  # the parent died before prctl
        os._exit(1)


def _warm() -> None:
    """Load every decoder now, not during the first job."""
    from PIL import Image

    from . import _avif, _core, _spng, _turbojpeg  # noqa: F401

    Image.init()
    _turbojpeg.available()
    _spng.available()
    _avif.available()
    with contextlib.suppress(ImportError):
        import pillow_heif  # noqa: F401
    with contextlib.suppress(ImportError):
        from PIL import AvifImagePlugin  # noqa: F401


def _trim() -> None:
    """Give freed heap back to the system, so the RSS reported after a job is what stays."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)


def _usage() -> dict[str, Any]:
    st = _status_mb("VmSize", "VmRSS")
    return {"vm_mb": st.get("VmSize"), "rss_mb": st.get("VmRSS")}


def serve(jobs: BinaryIO, replies: BinaryIO, memory_mb: int) -> int:
    import json

    from . import cli
    from ._core import (
        DEFAULT_DECODE_MB,
        DEFAULT_MAX_PIXELS,
        DEFAULT_SIZES,
        ImageError,
        make_thumbnails,
    )

    def send(doc: dict[str, Any]) -> None:
        replies.write((cli.dumps(doc) + "\n").encode())
        replies.flush()

    def on_alarm(signum: int, frame: FrameType | None) -> None:
        raise _Timeout

    signal.signal(signal.SIGALRM, on_alarm)
    send({"ready": True, "pid": os.getpid(), **_usage()})
    while True:
        line = jobs.readline()
        if not line:
            return 0
        if not line.strip():
            continue
        job: dict[str, Any] = json.loads(line)
        path = str(job["path"])
        timeout = float(job.get("timeout") or 0)
        reply: dict[str, Any] = {"id": job.get("id")}
        _reset_peak()
        started = time.monotonic()
        try:
            if timeout > 0:
                signal.setitimer(signal.ITIMER_REAL, timeout)
            meta = make_thumbnails(
                path, str(job["out"]), sizes=job.get("sizes") or DEFAULT_SIZES,
                fmt=str(job.get("format") or "jpeg"),
                max_pixels=int(job.get("max_pixels") or DEFAULT_MAX_PIXELS),
                workers=job.get("workers"),
                max_decode_mb=int(job.get("max_decode_mb") or DEFAULT_DECODE_MB))
            signal.setitimer(signal.ITIMER_REAL, 0)
            reply.update(ok=True, meta=meta, exit=False)
        except ImageError as e:
            signal.setitimer(signal.ITIMER_REAL, 0)
            memory = isinstance(e.__cause__, MemoryError)
            message = str(e)
            if memory:
                message = f"{path}: out of memory (over the {memory_mb} MB limit)"
            reply.update(ok=False, kind="memory" if memory else "input", exit=memory,
                         error=message)
        except _Timeout:
            reply.update(ok=False, kind="timeout", exit=True,
                         error=f"{path}: processing took longer than {timeout:g} s")
        except MemoryError:
            signal.setitimer(signal.ITIMER_REAL, 0)
            reply.update(ok=False, kind="memory", exit=True,
                         error=f"{path}: out of memory (over the {memory_mb} MB limit)")
        except Exception as e:  # a bug, not the image: the parent retries on a fresh worker
            signal.setitimer(signal.ITIMER_REAL, 0)
            reply.update(ok=False, kind="crash", exit=True,
                         error=f"{type(e).__name__}: {e}".strip())
        _trim()
        peak = _status_mb("VmHWM").get("VmHWM")
        if reply.get("ok") and peak is not None:
            reply["meta"]["peak_rss_mb"] = peak
        reply.update(seconds=round(time.monotonic() - started, 3), peak_rss_mb=peak,
                     **_usage())
        if not reply.get("ok"):
            reply["error"] = " ".join(str(reply["error"]).split())
        send(reply)
        if reply["exit"]:
            return 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m thumbnailer.worker",
                                 description="Serve thumbnail jobs (JSON lines) on stdin.")
    ap.add_argument("--memory-mb", type=int, default=1024,
                    help="address-space limit of this process for its whole life")
    ap.add_argument("--parent-pid", type=int, default=0,
                    help="exit when this process is gone (SIGKILL on its death)")
    args = ap.parse_args(argv)
    faulthandler.enable()  # a codec segfault leaves a traceback in the server's log
    # Limits first: imports and every job run under them.
    from .cli import _limit_memory

    _limit_memory(args.memory_mb)
    _die_with_parent(args.parent_pid)
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # stray prints of codecs go to stderr, never into the protocol
    sys.stdout = sys.stderr
    try:
        _warm()
    except MemoryError:
        sys.stderr.write(f"thumbnailer.worker: cannot start within {args.memory_mb} MB "
                         "of address space\n")
        return 3
    return serve(sys.stdin.buffer, replies, args.memory_mb)


if __name__ == "__main__":
    rc = main()
    sys.stderr.flush()
    os._exit(rc)
