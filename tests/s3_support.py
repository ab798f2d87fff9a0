"""A real S3 server for the tests: OpenStack Swift with s3api (scripts/swift-s3.sh).

The session starts its own single-node Swift on free ports under a temp dir
(installing the Debian packages when missing), creates a bucket and stops it at
the end. With S3_ENDPOINT_URL set (plus AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY
and optionally S3_BUCKET, S3_MIN_PART_SIZE), that server is used instead.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

from storage.s3 import S3Connection, S3Options, ensure_bucket

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "swift-s3.sh"
MiB = 1 << 20
# Swift's s3api enforces this as the smallest non-last part (AWS: 5 MiB); low for fast tests.
TEST_MIN_PART = MiB


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    region: str
    bucket: str
    min_part_size: int  # what the server enforces

    def options(self, prefix: str | None = None, **changes: Any) -> S3Options:
        """Store options on a fresh key prefix (every test gets its own)."""
        fields: dict[str, Any] = dict(
            bucket=self.bucket, endpoint=self.endpoint, region=self.region,
            prefix=prefix if prefix is not None else f"t-{uuid.uuid4().hex[:10]}/",
            part_size=2 * self.min_part_size, min_part_size=self.min_part_size)
        fields.update(changes)
        return S3Options(**fields)

    def flags(self, prefix: str, *extra: str) -> list[str]:
        """`tusd-py serve` flags for this server (credentials travel in the environment)."""
        return ["--s3-bucket", self.bucket, "--s3-endpoint", self.endpoint,
                "--s3-region", self.region, "--s3-prefix", prefix,
                "--s3-min-part-size", str(self.min_part_size), *extra]


def _free_block(n: int) -> int:
    """A base port with n consecutive free ports, below the kernel's ephemeral range
    (outgoing connections there could take a port between our check and Swift's bind)."""
    for _ in range(500):
        base = random.randrange(12000, 30000)
        ok = True
        for port in range(base, base + n):
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no block of free ports")


def _start_swift(state: Path, env: dict[str, str]) -> int:
    """Start Swift on fresh free ports (retrying if a port was taken meanwhile); its port."""
    error = ""
    for _ in range(3):
        base = _free_block(5)
        env.update(SWIFT_S3_DIR=str(state), SWIFT_S3_PORT=str(base),
                   SWIFT_S3_BACKEND_BASE=str(base + 1),
                   SWIFT_S3_MIN_PART_SIZE=str(TEST_MIN_PART))
        done = subprocess.run(["bash", str(SCRIPT), "start"], env=env, capture_output=True,
                              text=True, timeout=900, check=False)
        if done.returncode == 0:
            return base
        error = f"{done.stdout}\n{done.stderr}"
        subprocess.run(["bash", str(SCRIPT), "stop"], env=env, capture_output=True,
                       timeout=120, check=False)
    raise RuntimeError(f"swift-s3.sh start failed:\n{error}")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    saved = {k: os.environ.get(k) for k in
             ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    state: Path | None = None
    env = dict(os.environ)
    if os.environ.get("S3_ENDPOINT_URL"):
        server = S3Server(
            endpoint=os.environ["S3_ENDPOINT_URL"],
            access_key=os.environ.get("AWS_ACCESS_KEY_ID", ""),
            secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY", ""),
            region=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
            bucket=os.environ.get("S3_BUCKET", "tusd-py-test"),
            min_part_size=int(os.environ.get("S3_MIN_PART_SIZE", 5 * MiB)))
    else:
        state = tmp_path_factory.mktemp("swift")
        proxy = _start_swift(state, env)
        server = S3Server(endpoint=f"http://127.0.0.1:{proxy}", access_key="test:tester",
                          secret_key="testing", region="us-east-1", bucket="tusd-py-test",
                          min_part_size=TEST_MIN_PART)
    # Stores in this process and `tusd-py serve` children find the keys the usual way.
    os.environ.update(AWS_ACCESS_KEY_ID=server.access_key,
                      AWS_SECRET_ACCESS_KEY=server.secret_key,
                      AWS_DEFAULT_REGION=server.region)

    async def make_bucket() -> None:
        conn = S3Connection(server.options(prefix=""))
        try:
            await ensure_bucket(conn)
        finally:
            await conn.aclose()

    try:
        # The fixture may be first asked for inside a running event loop (async fixtures).
        with ThreadPoolExecutor(1) as pool:
            pool.submit(anyio.run, make_bucket).result()
        yield server
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if state is not None:
            subprocess.run(["bash", str(SCRIPT), "stop"], env=env, capture_output=True,
                           timeout=120, check=False)
