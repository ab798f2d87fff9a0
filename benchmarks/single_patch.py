"""Throughput and memory of one big PATCH into `tusd-py serve` (embedded storage).

    .venv/bin/python benchmarks/single_patch.py --gib 2 --repeat 3

Starts the server on a free loopback port with a scratch upload dir, sends the
whole upload in one PATCH from a raw socket (tus-js-client's default), samples
the server's RSS every 20 ms, verifies the stored bytes by sha256 via GET and
prints one markdown row per repetition plus the median.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx

BLOCK = os.urandom(1 << 20)
EXTRA: list[str] = []  # extra `tusd-py serve` flags (--server-flag)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def proc_cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class RssSampler:
    """Peak RSS of one process, sampled in a thread while the `with` block runs."""

    def __init__(self, pid: int, every: float = 0.02) -> None:
        self.pid = pid
        self.every = every
        self.baseline = self.peak = proc_rss(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, proc_rss(self.pid))
            time.sleep(self.every)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def send_patch(url: str, size: int) -> tuple[float, str]:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port))
    head = (f"PATCH {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nTus-Resumable: 1.0.0\r\n"
            f"Upload-Offset: 0\r\nContent-Type: application/offset+octet-stream\r\n"
            f"Content-Length: {size}\r\n\r\n").encode()
    sock.sendall(head)
    digest = hashlib.sha256()
    sent = 0
    started = time.perf_counter()
    while sent < size:
        chunk = BLOCK[: min(len(BLOCK), size - sent)]
        sock.sendall(chunk)
        digest.update(chunk)
        sent += len(chunk)
    response = sock.recv(4096).decode(errors="replace")
    elapsed = time.perf_counter() - started
    sock.close()
    if not response.startswith("HTTP/1.1 204"):
        raise RuntimeError(f"PATCH failed: {response!r}")
    return elapsed, digest.hexdigest()


def stored_sha256(url: str) -> str:
    digest = hashlib.sha256()
    with httpx.stream("GET", url, timeout=600) as response:
        response.raise_for_status()
        for chunk in response.iter_bytes(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def run_once(size: int, scratch: Path) -> dict[str, float]:
    port = free_port()
    upload_dir = Path(tempfile.mkdtemp(dir=scratch))
    server = subprocess.Popen(
        [sys.executable, "-m", "tusd_py", "serve", "--port", str(port),
         "--upload-dir", str(upload_dir), "--log-level", "warning", *EXTRA])
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.05)
        base = f"http://127.0.0.1:{port}/files/"
        created = httpx.post(base, headers={"Tus-Resumable": "1.0.0",
                                            "Upload-Length": str(size)})
        url = created.headers["Location"]
        with RssSampler(server.pid) as rss:
            cpu_before = proc_cpu_seconds(server.pid)
            elapsed, sent_hash = send_patch(url, size)
            cpu = proc_cpu_seconds(server.pid) - cpu_before
        baseline, peak = rss.baseline, rss.peak
        if stored_sha256(url) != sent_hash:
            raise RuntimeError("stored bytes differ from the bytes sent")
        gib = size / (1 << 30)
        return {"mib_s": size / (1 << 20) / elapsed, "peak_rss_mib": peak / (1 << 20),
                "rss_growth_mib": (peak - baseline) / (1 << 20), "cpu_s_per_gib": cpu / gib}
    finally:
        server.terminate()
        server.wait(10)
        subprocess.run(["rm", "-rf", str(upload_dir)], check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=2.0, help="upload size in GiB")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scratch", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--server-flag", action="append", default=[],
                        help="passed to `tusd-py serve`, e.g. --server-flag=--durability=os")
    args = parser.parse_args()
    EXTRA.extend(args.server_flag)
    size = int(args.gib * (1 << 30))
    rows = [run_once(size, args.scratch) for _ in range(args.repeat)]
    flags = " ".join(EXTRA) or "defaults"
    print(f"| one PATCH of {args.gib:g} GiB ({flags}) | MiB/s | peak RSS MiB | RSS growth MiB "
          "| server CPU s/GiB |")
    print("|---|---|---|---|---|")
    for i, row in enumerate(rows, 1):
        print(f"| run {i} | {row['mib_s']:.0f} | {row['peak_rss_mib']:.0f} "
              f"| {row['rss_growth_mib']:.1f} | {row['cpu_s_per_gib']:.2f} |")
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    print(f"| **median** | **{med['mib_s']:.0f}** | {med['peak_rss_mib']:.0f} "
          f"| {med['rss_growth_mib']:.1f} | {med['cpu_s_per_gib']:.2f} |")


if __name__ == "__main__":
    main()
