"""Prometheus metrics under tusd 2.10's exact names, types and labels, so existing tusd
dashboards keep working; tusd-py's own metrics are named tusd_py_*.

tusd exports four counters without the `_total` suffix (tusd_bytes_received,
tusd_uploads_created, tusd_uploads_finished, tusd_uploads_terminated). The Python
client always appends `_total` to a counter, so those four are rendered here as tusd
renders them. Process-global: one scrape shows one process (with --workers N, scrape
each worker or set PROMETHEUS_MULTIPROC_DIR).
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

# tusd exports no *_created series; dashboards built for tusd expect none.
disable_created_metrics()  # type: ignore[no-untyped-call]

HOOK_TYPES = ("pre-create", "post-create", "post-receive", "pre-finish", "post-finish",
              "pre-terminate", "post-terminate")


class TusdCounter:
    """A counter exposed as tusd exposes it: `# TYPE <name> counter` and `<name> <value>`."""

    def __init__(self, name: str, help_text: str) -> None:
        self.name = name
        self.help = help_text
        self.value = 0

    def inc(self, amount: int = 1) -> None:
        self.value += amount

    def render(self) -> str:
        return (f"# HELP {self.name} {self.help}\n# TYPE {self.name} counter\n"
                f"{self.name} {self.value}\n")


# tusd's names and help texts (pkg/prometheuscollector, pkg/hooks, cmd/tusd/cli/metrics.go).
requests = Counter("tusd_requests", "Total number of requests served by tusd per method.",
                   ["method"])
errors = Counter("tusd_errors", "Total number of errors per status.", ["status", "code"])
bytes_received = TusdCounter("tusd_bytes_received", "Number of bytes received for uploads.")
uploads_created = TusdCounter("tusd_uploads_created", "Number of created uploads.")
uploads_finished = TusdCounter("tusd_uploads_finished", "Number of finished uploads.")
uploads_terminated = TusdCounter("tusd_uploads_terminated", "Number of terminated uploads.")
connections_open = Gauge("tusd_connections_open", "Current number of open connections.")
hook_invocations = Counter("tusd_hook_invocations", "Total number of invocations per hook type.",
                           ["hooktype"])
hook_errors = Counter("tusd_hook_errors", "Total number of execution errors per hook type.",
                      ["hooktype"])
for _hook in HOOK_TYPES:  # tusd exports every hook type from the start, at 0
    hook_invocations.labels(_hook)
    hook_errors.labels(_hook)
_TUSD_PLAIN = (bytes_received, uploads_created, uploads_finished, uploads_terminated)

processing_jobs = Counter("tusd_py_processing_jobs", "Processing attempts, by outcome",
                          ["outcome"])
processing_seconds = Histogram(
    "tusd_py_processing_seconds", "Time one processing attempt took",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600))
processing_in_progress = Gauge("tusd_py_processing_in_progress", "Jobs being processed now")
processing_queue_depth = Gauge("tusd_py_processing_queue_depth",
                               "Completed uploads waiting to be processed (set at scrape)")

# The processors' warm thumbnail workers (tusd_py/processing/pool.py).
thumbnail_workers = Gauge("tusd_py_thumbnail_workers",
                          "Thumbnail worker processes, by state (idle, busy, starting)",
                          ["state"])
thumbnail_workers_restarted = Counter(
    "tusd_py_thumbnail_workers_restarted",
    "Thumbnail worker processes retired and replaced, by reason (crashed, timeout, memory, "
    "recycled, cancelled)", ["reason"])
thumbnail_queue_depth = Gauge("tusd_py_thumbnail_queue_depth",
                              "Image jobs waiting for a thumbnail worker")
thumbnail_jobs = Counter("tusd_py_thumbnail_jobs",
                         "Image jobs run by thumbnail workers, by outcome (ok, input, timeout, "
                         "memory, crash, crashed, killed)", ["outcome"])


def exposition() -> tuple[bytes, str]:
    plain = "".join(counter.render() for counter in _TUSD_PLAIN).encode()
    return generate_latest(REGISTRY) + plain, CONTENT_TYPE_LATEST
