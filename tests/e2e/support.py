"""Helpers of the end-to-end tests that run several servers (or workers) on one upload:
addressing an upload through each, reading their logs, checking what each serves."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable

from tests.conftest import ServerProcess
from tests.e2e.rawhttp import Pattern, create_upload, download_sha256, patch, upload_id
from tests.tusd_py.helpers import LogWatch

Start = Callable[..., ServerProcess]  # the `start_server` fixture


def on(server: ServerProcess, url: str) -> str:
    """The same upload, addressed through another instance."""
    return f"{server.url}{upload_id(url)}"


def events(servers: Iterable[ServerProcess], name: str, uid: str) -> list[str]:
    """Log lines of event `name` for upload `uid`, across every instance's log."""
    pattern = re.compile(rf"\s{re.escape(name)}\s.*\bupload_id={uid}\b")
    return [line for s in servers for line in s.log().splitlines() if pattern.search(line)]


def wait_event(servers: Iterable[ServerProcess], name: str, uid: str, *, count: int = 1,
               timeout: float = 20.0) -> str:
    """Wait until event `name` for upload `uid` is in any instance's log (`count` times)."""
    return LogWatch(*servers, from_start=True).wait_event(name, uid, count=count,
                                                          timeout=timeout)


def process_marker(servers: Iterable[ServerProcess], timeout: float = 20.0) -> str:
    """A "nothing else happened" marker for processing: a one-byte upload finished now,
    waited for until processed. Completion jobs are delivered in order, so by then every
    earlier job - a duplicate delivery too - has been taken by an instance."""
    servers = list(servers)
    live = next(s for s in servers if s.proc is not None and s.proc.poll() is None)
    url = create_upload(live, 1)
    r = patch(url, 0, [b"m"], 1)
    assert r.status == 204, (r.status, r.body)
    wait_event(servers, "processing.done", upload_id(url), timeout=timeout)
    return url


def assert_processed_once(servers: Iterable[ServerProcess], url: str) -> None:
    """Exactly one processing run for the upload; waits for a later marker upload's
    processing first, so that a duplicate run would have shown up."""
    uid = upload_id(url)
    servers = list(servers)
    process_marker(servers)
    started = events(servers, "processing.started", uid)
    done = events(servers, "processing.done", uid)
    assert len(started) == 1, f"processing.started {len(started)}x for {uid}: {started}"
    assert len(done) == 1, f"processing.done {len(done)}x for {uid}: {done}"


def assert_stored(servers: Iterable[ServerProcess], url: str, data: Pattern) -> None:
    """The finished bytes, downloaded through every instance, are exactly `data`."""
    for s in servers:
        sha, size = download_sha256(on(s, url))
        assert size == data.size, (s.port, size, data.size)
        assert sha == data.sha256(), f"stored bytes differ (downloaded via :{s.port})"


class RssSampler:
    """Samples the server's RSS every 50 ms in a background thread."""

    def __init__(self, server: ServerProcess, interval: float = 0.05) -> None:
        self.server = server
        self.interval = interval
        self.samples: list[int] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self.samples.append(self.server.rss_bytes())
                self._stop.wait(self.interval)
        except BaseException as e:  # re-raised by stop() in the test thread
            self.error = e

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        if self.error is not None:
            raise self.error

    @property
    def peak(self) -> int:
        return max(self.samples, default=0)

    def reset(self) -> None:
        """Start a new measurement window (`peak` and `samples` since now)."""
        self.samples = []
