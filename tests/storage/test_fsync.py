"""DirectorySync: concurrent creations share directory fsyncs, and none returns early."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from storage import fsync as fsync_module
from storage.fsync import DirectorySync


def test_every_caller_waits_for_an_fsync_that_started_after_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = fsync_module.fsync_path
    runs: list[tuple[float, float]] = []  # (start, end) of each real directory fsync

    def recorded(path: Path) -> None:
        started = time.monotonic()
        real(path)
        time.sleep(0.005)  # a slow disk, so that callers pile up behind one fsync
        runs.append((started, time.monotonic()))

    monkeypatch.setattr(fsync_module, "fsync_path", recorded)
    sync = DirectorySync(tmp_path)
    calls: list[tuple[float, float]] = []
    lock = threading.Lock()

    def create(i: int) -> None:
        (tmp_path / f"entry-{i}").touch()
        began = time.monotonic()
        sync()
        with lock:
            calls.append((began, time.monotonic()))

    threads = [threading.Thread(target=create, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 32
    for began, returned in calls:
        # Some fsync started after this caller's entry existed and ended before it returned.
        assert any(began <= start and end <= returned for start, end in runs), (began, runs)
    assert len(runs) < 32  # and they were shared
    print(f"32 creations, {len(runs)} directory fsyncs")


def test_a_failed_fsync_reaches_the_caller(tmp_path: Path) -> None:
    sync = DirectorySync(tmp_path / "missing")
    with pytest.raises(FileNotFoundError):
        sync()
