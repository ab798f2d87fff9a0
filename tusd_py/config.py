"""Server settings: one frozen value built by the CLI (flags, then env vars)."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

from .service.buffers import BUDGET_BYTES, BUFFER_BYTES


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 1080
    base_path: str = "/files/"
    upload_dir: Path = Path("data")
    max_size: int = 0  # 0 = unlimited
    expiration: float = 24 * 3600.0  # unfinished uploads; 0 disables
    cors_origins: str = "*"  # "*", a comma list, or "re:<regex>"
    disable_cors: bool = False
    cors_allow_credentials: bool = False
    cors_allow_methods: str = ""  # empty: the default list
    cors_allow_headers: str = ""  # added to the default list
    cors_expose_headers: str = ""  # added to the default list
    cors_max_age: int = 86400
    behind_proxy: bool = False
    network_timeout: float = 60.0
    redis_url: str | None = None  # None: the embedded default (files + in-process locks)
    # S3-compatible object storage for the bytes (with redis_url: shared by many instances).
    s3_bucket: str | None = None
    s3_endpoint: str | None = None  # None: AWS (from the region)
    s3_prefix: str = ""
    s3_region: str | None = None  # None: AWS_DEFAULT_REGION / ~/.aws/config
    s3_part_size: int = 50 << 20
    s3_min_part_size: int = 5 << 20
    s3_max_concurrent_part_uploads: int = 4
    dashboard: bool = True  # the upload page at /
    fsync: bool = True  # False: checkpoints trust the page cache (as tusd and @tus/server do)
    workers: int = 1  # server processes (embedded: >1 shares the dir with flock locks)
    log_level: str = "info"
    log_format: str = "text"
    lock_timeout: float = 20.0  # how long a request waits for an upload's lock before 423
    checkpoint_bytes: int = 32 << 20  # fsync + commit at least this often during a PATCH
    checkpoint_seconds: float = 2.0
    write_buffer_bytes: int = BUFFER_BYTES  # body chunks are coalesced to this before pwritev
    # All transfers' write buffers together (they shrink as more uploads run at once).
    write_buffer_total: int = BUDGET_BYTES
    sweep_interval: float = 60.0
    tombstone_seconds: float = 7 * 24 * 3600.0  # how long terminated/expired ids answer 410
    final_dir: Path | None = None  # default <upload_dir>/final
    namespace_key: str = "project"  # metadata key naming the final folder
    processors: int = 1  # concurrent processing jobs in this process (0 = none)
    thumbnail_sizes: tuple[int, ...] = (256, 1024)
    thumbnail_format: str = "jpeg"
    processing_timeout: float = 300.0  # per image job, enforced in its child process
    processing_memory_mb: int = 1024
    hooks_http: str | None = None  # tusd v2 HTTP hooks receiver
    hooks_enabled_events: str = "pre-create,post-create,post-receive,post-terminate,post-finish"
    hooks_http_retry: int = 3  # attempts after the first, as tusd's -hooks-http-retry
    hooks_http_backoff: float = 1.0
    hooks_http_timeout: float = 10.0
    auth_token: str | None = None  # static bearer token
    jwt_secret: str | None = None  # HS256 shared secret
    jwt_public_key: Path | None = None  # PEM file for RS256 / ES256
    jwt_algorithms: str = ""  # comma list; default HS256 (secret) or RS256,ES256 (key)
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    auth_hook: str | None = None  # module:function
    max_concurrent_uploads: int = 0  # body transfers at once per owner / client IP (0 = no cap)
    shutdown_timeout: float = 10.0  # SIGTERM: seconds in-flight PATCHes get to save and answer
    processing_attempts: int = 5  # then the job is dead-lettered and the upload marked failed
    processing_backoff: float = 1.0  # seconds before the first retry; doubles each time

    @property
    def auth_enabled(self) -> bool:
        return bool(self.auth_token or self.jwt_secret or self.jwt_public_key or self.auth_hook)

    @property
    def final_root(self) -> Path:
        return self.final_dir or self.upload_dir / "final"

    def to_json(self) -> str:
        doc = {f.name: getattr(self, f.name) for f in fields(self)}
        return json.dumps(doc, default=str)

    @classmethod
    def from_json(cls, raw: str) -> Settings:
        doc = json.loads(raw)
        for name in ("upload_dir", "final_dir", "jwt_public_key"):
            if doc.get(name) is not None:
                doc[name] = Path(doc[name])
        doc["thumbnail_sizes"] = tuple(doc["thumbnail_sizes"])
        return cls(**doc)

    def __post_init__(self) -> None:
        base = "/" + self.base_path.strip("/") + "/"
        object.__setattr__(self, "base_path", base.replace("//", "/"))
