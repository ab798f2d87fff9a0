"""fsync by path: a file's data, or a directory's entries (after a rename)."""

from __future__ import annotations

import os
import threading
from pathlib import Path


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DirectorySync:
    """Group commit of one directory's fsyncs, called from worker threads.

    Many uploads created at once each need their new entry durable; one fsync of the
    directory covers every entry made before it started. A caller waits for an fsync that
    began after its own entry was made, and whoever finds none running starts one for
    everybody waiting, so N concurrent creations cost about two directory fsyncs, not N.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._cond = threading.Condition()
        self._requested = 0  # tickets handed out (entries waiting to be durable)
        self._durable = 0  # every ticket up to this one is covered by a finished fsync
        self._running = False

    def __call__(self) -> None:
        with self._cond:
            self._requested += 1
            ticket = self._requested
            while self._durable < ticket:
                if self._running:
                    self._cond.wait()
                    continue
                self._running = True
                covered = self._requested  # entries made before this fsync starts
                self._cond.release()
                try:
                    fsync_path(self.path)
                finally:
                    self._cond.acquire()
                    self._running = False
                    self._cond.notify_all()
                self._durable = max(self._durable, covered)
