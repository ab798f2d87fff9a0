"""Prometheus metrics under tusd's names, so existing tusd dashboards keep working.

Process-global (prometheus_client's default registry): one scrape shows one
process. With --workers N, scrape each worker or set PROMETHEUS_MULTIPROC_DIR.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

requests = Counter("tusd_requests", "HTTP requests received, by method", ["method"])
errors = Counter("tusd_errors", "Requests answered with an error, by status and code",
                 ["status", "code"])
uploads_created = Counter("tusd_uploads_created", "Uploads created")
uploads_finished = Counter("tusd_uploads_finished", "Uploads whose last byte was stored")
uploads_terminated = Counter("tusd_uploads_terminated", "Uploads terminated or expired")
bytes_received = Counter("tusd_bytes_received", "Upload bytes received and committed")
connections_open = Gauge("tusd_connections_open", "HTTP requests being handled")
hook_invocations = Counter("tusd_hook_invocations", "Hook attempts made, by hook type",
                           ["hooktype"])
hook_errors = Counter("tusd_hook_errors", "Hook calls that failed, by hook type", ["hooktype"])

processing_jobs = Counter("tusd_py_processing_jobs", "Processing attempts, by outcome",
                          ["outcome"])
processing_seconds = Histogram(
    "tusd_py_processing_seconds", "Time one processing attempt took",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600))
processing_in_progress = Gauge("tusd_py_processing_in_progress", "Jobs being processed now")
processing_queue_depth = Gauge("tusd_py_processing_queue_depth",
                               "Completed uploads waiting to be processed (set at scrape)")


def exposition() -> tuple[bytes, str]:
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
