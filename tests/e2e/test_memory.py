"""Memory per upload is bounded: a 1 GiB PATCH must not balloon the server's RSS."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from tests.e2e.rawhttp import (
    MiB,
    Pattern,
    RawConn,
    create_upload,
    download_sha256,
    head_offset,
    patch,
    upload_id,
    wait_state,
)
from tests.e2e.support import RssSampler
from tests.tusd_py.helpers import event_re, log_field, wait_log

if TYPE_CHECKING:
    from tests.conftest import ServerProcess

GiB = 1024 * MiB
MAX_GROWTH = 64 * MiB


def creation_done(server: ServerProcess, url: str) -> None:
    """Wait until the POST that created `url` has ended (its request.done line)."""
    created = wait_log(server, event_re("upload.created", upload_id(url)))
    rid = log_field(created, "request_id")
    wait_log(server, rf"\srequest\.done\s.*\brequest_id={rid}\b")


@pytest.mark.slow
def test_one_gib_patch_has_bounded_rss(server: ServerProcess) -> None:
    # Warm up: the first upload loads lazily imported code paths (and the processor).
    warm = Pattern(4 * MiB, seed="warm")
    warm_url = create_upload(server, warm.size)
    assert patch(warm_url, 0, warm.chunks(), warm.size).status == 204
    wait_state(server, warm_url, {"processed"})

    data = Pattern(GiB, seed="memory")
    url = create_upload(server, data.size)
    creation_done(server, url)  # the server is idle before the baseline
    baseline = min(server.rss_bytes() for _ in range(3))

    sha = hashlib.sha256()

    def hashed() -> Iterator[bytes]:
        for chunk in data.chunks():
            sha.update(chunk)
            yield chunk

    with RssSampler(server) as rss:
        conn = RawConn(url, timeout=60)
        try:
            conn.start_patch(0, data.size)
            sent = conn.send_chunks(hashed())
            r = conn.read_response(timeout=120)
        finally:
            conn.close()

    assert sent == data.size
    assert r.status == 204, (r.status, r.headers, r.body)
    assert int(r.headers["upload-offset"]) == data.size
    assert len(rss.samples) > 10
    growth = rss.peak - baseline
    print(f"RSS baseline {baseline / MiB:.1f} MiB, peak {rss.peak / MiB:.1f} MiB, "
          f"{len(rss.samples)} samples")
    assert growth < MAX_GROWTH, (
        f"RSS grew by {growth / MiB:.1f} MiB during a 1 GiB PATCH "
        f"(baseline {baseline / MiB:.1f} MiB, peak {rss.peak / MiB:.1f} MiB)"
    )

    assert head_offset(url) == data.size
    assert download_sha256(url) == (sha.hexdigest(), data.size)

    server.stop()  # free the 1 GiB now rather than when pytest prunes old tmp dirs
    shutil.rmtree(server.upload_dir, ignore_errors=True)


PARALLEL = 16
PARALLEL_SIZE = 32 * MiB
# Measured: +69 MiB when each transfer kept its own three 1 MiB buffers; +28-32 MiB with
# the shared budget (--buffer-memory: buffers, receive buffers of 16 connections, the
# processing of 16 uploads finishing at once).
MAX_PARALLEL_GROWTH = 44 * MiB


@pytest.mark.slow
def test_sixteen_parallel_patches_share_one_buffer_budget(server: ServerProcess) -> None:
    from concurrent.futures import ThreadPoolExecutor

    warm = Pattern(4 * MiB, seed="warm-parallel")
    warm_url = create_upload(server, warm.size)
    assert patch(warm_url, 0, warm.chunks(), warm.size).status == 204
    uploads = [Pattern(PARALLEL_SIZE, seed=f"parallel-{i}") for i in range(PARALLEL)]
    urls = [create_upload(server, p.size) for p in uploads]
    # Idle before the baseline: the warm-up processed, the last creation finished.
    wait_log(server, event_re("processing.done", upload_id(warm_url)))
    creation_done(server, urls[-1])
    baseline = min(server.rss_bytes() for _ in range(3))

    def send(i: int) -> int:
        return patch(urls[i], 0, uploads[i].chunks(), PARALLEL_SIZE).status

    with RssSampler(server) as rss, ThreadPoolExecutor(PARALLEL) as pool:
        statuses = list(pool.map(send, range(PARALLEL)))

    assert statuses == [204] * PARALLEL
    growth = rss.peak - baseline
    print(f"RSS baseline {baseline / MiB:.1f} MiB, peak {rss.peak / MiB:.1f} MiB")
    assert growth < MAX_PARALLEL_GROWTH, (
        f"RSS grew by {growth / MiB:.1f} MiB during {PARALLEL} parallel PATCHes")
    for url, data in zip(urls, uploads, strict=True):
        assert download_sha256(url) == (data.sha256(), data.size)
