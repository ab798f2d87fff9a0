"""A very large upload from the real tus-js-client (Node, default options = one PATCH).

    .venv/bin/python benchmarks/tus_js_large.py --gib 5

Needs `npm ci --prefix tests/js`. Writes a scratch file, starts `tusd-py serve`,
uploads with tests/js/upload.mjs, samples the server's RSS every 50 ms, checks
the stored bytes' sha256 via GET and prints the figures.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from single_patch import RssSampler, free_port, proc_cpu_seconds, stored_sha256

ROOT = Path(__file__).resolve().parent.parent


def write_file(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    block = bytearray(os.urandom(1 << 20))
    with path.open("wb") as f:
        written = 0
        n = 0
        while written < size:
            block[:8] = n.to_bytes(8, "big")  # every MiB differs: misplaced bytes change the hash
            chunk = bytes(block[: min(len(block), size - written)])
            f.write(chunk)
            digest.update(chunk)
            written += len(chunk)
            n += 1
    return digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=5.0)
    parser.add_argument("--scratch", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args()
    size = int(args.gib * (1 << 30))
    work = Path(tempfile.mkdtemp(dir=args.scratch))
    source = work / "source.bin"
    expected = write_file(source, size)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "tusd_py", "serve", "--port", str(port),
                               "--upload-dir", str(work / "data"), "--log-level", "warning"])
    try:
        time.sleep(1.5)
        with RssSampler(server.pid, every=0.05) as rss:
            cpu = proc_cpu_seconds(server.pid)
            scenario = {"endpoint": f"http://127.0.0.1:{port}/files/", "file": str(source),
                        "source": "file", "timeoutMs": 3_600_000,
                        "options": {"metadata": {"filename": "big.bin"}}}
            started = time.perf_counter()
            out = subprocess.run(["node", str(ROOT / "tests/js/upload.mjs"),
                                  json.dumps(scenario)],
                                 capture_output=True, text=True, check=False)
            elapsed = time.perf_counter() - started
            cpu = proc_cpu_seconds(server.pid) - cpu
        baseline, peak = rss.baseline, rss.peak
        result = json.loads(out.stdout.strip().splitlines()[-1])
        if not result["ok"]:
            raise SystemExit(f"upload failed: {result['error']}")
        patches = sum(1 for r in result["requests"] if r["method"] == "PATCH")
        stored = stored_sha256(result["url"])
        mib = 1 << 20
        print(f"tus-js-client {args.gib:g} GiB, {patches} PATCH: {size / mib / elapsed:.0f} MiB/s, "
              f"server RSS {baseline / mib:.1f} -> peak {peak / mib:.1f} MiB "
              f"(+{(peak - baseline) / mib:.1f}), server CPU {cpu / args.gib:.2f} s/GiB, "
              f"sha256 {'equal' if stored == expected else 'DIFFERENT'}")
        if stored != expected:
            raise SystemExit(1)
    finally:
        server.terminate()
        server.wait(10)
        subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    main()
