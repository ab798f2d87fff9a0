"""`python -m thumbnailer PATH --out DIR ...`: one file, limits set on this process.

Prints one JSON object on stdout and exits 0, or prints one line naming the file and the cause
on stderr and exits 2. The process lowers its own RLIMIT_AS and arms a wall-clock limit first,
so a codec bug or a hostile file cannot take the caller down.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from ._core import (
    DEFAULT_DECODE_MB,
    DEFAULT_MAX_PIXELS,
    DEFAULT_SIZES,
    ImageError,
    make_thumbnails,
)

EXIT_BAD_INPUT = 2


class _Timeout(Exception):
    pass


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter without its `import shutil` (with bz2 and lzma: a few ms of
    start-up on every run) just to learn the terminal width."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        if width is None:
            try:
                width = int(os.environ.get("COLUMNS", "")) - 2
            except ValueError:
                try:
                    width = os.get_terminal_size(sys.stdout.fileno()).columns - 2
                except (OSError, ValueError):
                    width = 78
        super().__init__(prog, indent_increment, max_help_position, width)


def build_parser(prog: str = "python -m thumbnailer") -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=prog, description="Write thumbnails of one image and "
                                 "print its metadata as JSON.", formatter_class=_HelpFormatter)
    add_arguments(ap)
    return ap


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("path", help="image file")
    ap.add_argument("--out", required=True, help="directory for thumb-<N>.<ext>")
    ap.add_argument("--size", type=int, action="append", dest="sizes",
                    help="longest side in px (repeatable; default 256 and 1024)")
    ap.add_argument("--format", choices=("jpeg", "webp"), default="jpeg")
    ap.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                    help="full-resolution pixel cap (default %(default)s)")
    ap.add_argument("--max-decode-mb", type=int, default=DEFAULT_DECODE_MB,
                    help="memory for an image that must be decoded whole (HEIF, AVIF, GIF, "
                    "WebP, BMP, scaled JPEG) (default %(default)s)")
    ap.add_argument("--memory-mb", type=int, default=1024,
                    help="address-space limit of this process (default %(default)s)")
    ap.add_argument("--timeout", type=float, default=300.0,
                    help="wall-clock limit in seconds (default %(default)s)")
    ap.add_argument("--workers", type=int, default=None, help="decode threads (default 2)")
    ap.add_argument("-v", "--verbose", action="store_true",
                    help="log each stage to stderr as key=value lines")


def _limit_memory(mb: int) -> None:
    if mb <= 0:
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    want = mb << 20
    if hard != resource.RLIM_INFINITY:
        want = min(want, hard)
    if soft == resource.RLIM_INFINITY or soft > want:
        resource.setrlimit(resource.RLIMIT_AS, (want, hard))


def _arm_timeout(path: str, seconds: float) -> None:
    if seconds <= 0:
        return

    def on_alarm(signum: int, frame: FrameType | None) -> None:
        raise _Timeout

    # Backstop for a codec stuck in C code where the Python handler cannot run.
    def watchdog() -> None:
        sys.stderr.write(f"thumbnailer: {path}: processing took longer than {seconds:g} s\n")
        sys.stderr.flush()
        os._exit(EXIT_BAD_INPUT)

    t = threading.Timer(seconds + 5.0, watchdog)
    t.daemon = True
    t.start()
    # armed last, so the alarm cannot interrupt the set-up above
    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)


def dumps(obj: object) -> str:
    """json.dumps(obj) for the metadata's types (dict, list, str, int, float, bool, None).

    Importing json costs a few ms of start-up (json.scanner compiles its regexes), which is a
    visible share of a pyramid thumbnail; the C string encoder alone is cheap."""
    from _json import encode_basestring_ascii as enc_str

    if obj is None:
        return "null"
    if obj is True:
        return "true"
    if obj is False:
        return "false"
    if isinstance(obj, str):
        return str(enc_str(obj))
    if isinstance(obj, int):
        return int.__repr__(obj)
    if isinstance(obj, float):
        if obj != obj or obj in (float("inf"), float("-inf")):
            return {"inf": "Infinity", "-inf": "-Infinity"}.get(repr(obj), "NaN")
        return float.__repr__(obj)
    if isinstance(obj, (list, tuple)):
        return "[" + ", ".join(dumps(v) for v in obj) + "]"
    if isinstance(obj, dict):
        return "{" + ", ".join(f"{dumps(_key(k))}: {dumps(v)}" for k, v in obj.items()) + "}"
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def _key(k: object) -> str:
    if isinstance(k, str):
        return k
    if k is None or isinstance(k, (bool, int, float)):
        return dumps(k)
    raise TypeError(f"keys must be str, int, float, bool or None, not {type(k).__name__}")


class _KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", {})
        parts = [record.getMessage(), *(f"{k}={v}" for k, v in fields.items())]
        return " ".join(parts)


def main(argv: Sequence[str] | None = None, prog: str = "python -m thumbnailer") -> int:
    args = build_parser(prog).parse_args(argv)
    return run(args)


def run(args: argparse.Namespace) -> int:
    if args.verbose:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_KeyValueFormatter())
        lg = logging.getLogger("thumbnailer")
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)
    _limit_memory(args.memory_mb)
    try:
        _arm_timeout(args.path, args.timeout)
        meta = make_thumbnails(args.path, args.out, sizes=args.sizes or DEFAULT_SIZES,
                               fmt=args.format, max_pixels=args.max_pixels,
                               workers=args.workers,
                               max_decode_mb=getattr(args, "max_decode_mb", DEFAULT_DECODE_MB))
    except ImageError as e:
        return _fail(str(e))
    except _Timeout:
        return _fail(f"{args.path}: processing took longer than {args.timeout:g} s")
    except MemoryError:
        return _fail(f"{args.path}: out of memory (over the {args.memory_mb} MB limit)")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    sys.stdout.write(dumps(meta) + "\n")
    sys.stdout.flush()
    return 0


def _fail(message: str) -> int:
    line = " ".join(message.split())
    sys.stderr.write(f"thumbnailer: {line}\n")
    sys.stderr.flush()
    return EXIT_BAD_INPUT
