"""Server settings, declared as data: each field carries its flag, environment name,
default and help text, so the CLI (tusd_py/cli.py) and the README's flag table are
generated from this one place.

Settings stay one flat frozen value (`Settings(max_size=10)` in code and tests); each
field's `section` (server, limits, storage, s3, processing, hooks, auth, logging)
groups it in `--help` and in the README. Fields without a flag are tuning constants
that tests set directly.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

BUFFER_BYTES = 1 << 20  # one transfer alone: pwritev batches of 1 MiB
BUDGET_BYTES = 12 << 20  # all transfers' write buffers together (tusd_py/service/buffers.py)
SECTIONS = ("server", "limits", "storage", "s3", "processing", "hooks", "auth", "logging")
ENV_PREFIX = "TUSD_PY_"


def parse_bool(raw: str) -> bool:
    text = raw.strip().lower()
    if text in ("1", "true", "yes", "on", "t"):
        return True
    if text in ("0", "false", "no", "off", "f", ""):
        return False
    raise ValueError(f"not a boolean: {raw!r}")


_DURATION = re.compile(r"((?:\d+(?:\.\d*)?|\.\d+))(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_seconds(raw: str) -> float:
    """Seconds as a number ('2.5'), or a Go duration as tusd's flags take it ('1m30s')."""
    text = raw.strip()
    try:
        return float(text)
    except ValueError:
        pass
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a number of seconds or a duration like 30s: {raw!r}")
    return sum(float(n) * _UNITS[u] for n, u in parts)


@dataclass(frozen=True)
class Flag:
    """How one setting is given on the command line and in the environment."""

    name: str  # "--max-size"
    help: str
    section: str
    aliases: tuple[str, ...] = ()  # tusd's spellings ("-max-size"), kept working
    env: str = ""  # default: TUSD_PY_ + the flag's name in capitals
    parse: Callable[[str], Any] | None = None  # text -> the field's value
    show: Callable[[Any], str] | None = None  # the field's value -> text, for help
    choices: tuple[str, ...] = ()
    kind: str = "value"  # "value" | "switch" (--x sets True) | "negated" (--no-x: False)
    repeat: bool = False  # may be given several times (collected into a tuple)
    commands: tuple[str, ...] = ("serve",)

    @property
    def env_name(self) -> str:
        return self.env or ENV_PREFIX + self.name.lstrip("-").upper().replace("-", "_")


def setting(default: Any, flag: Flag | None = None) -> Any:
    return field(default=default, metadata={"flag": flag} if flag else {})


_ALL = ("serve", "worker")


def _opt_path(raw: str) -> Path | None:
    return Path(raw) if raw else None


def _opt(raw: str) -> str | None:
    return raw or None


@dataclass(frozen=True, slots=True)
class Settings:
    # --- server ------------------------------------------------------------------------
    host: str = setting("127.0.0.1", Flag("--host", "address to listen on", "server",
                                          aliases=("-host",)))
    port: int = setting(1080, Flag("--port", "TCP port", "server", aliases=("-port",),
                                   parse=int))
    unix_sock: Path | None = setting(None, Flag(
        "--unix-sock", "listen on this unix socket instead of host and port", "server",
        aliases=("-unix-sock",), parse=_opt_path))
    base_path: str = setting("/files/", Flag(
        "--base-path", "URL path of the upload endpoint", "server", aliases=("-base-path",)))
    behind_proxy: bool = setting(False, Flag(
        "--behind-proxy", "trust Forwarded / X-Forwarded-Host / X-Forwarded-Proto for upload "
        "URLs", "server", aliases=("-behind-proxy",), kind="switch"))
    relative_location: bool = setting(False, Flag(
        "--relative-location", "answer Location as a path (/files/<id>) without scheme and "
        "host, as @tus/server's relativeLocation (clients resolve it against their URL)",
        "server", kind="switch"))
    workers: int = setting(1, Flag(
        "--workers", "server processes sharing the port and the upload dir (embedded storage: "
        "flock-based locks across them; with --s3-bucket more than 1 needs --redis-url)",
        "server", parse=int))
    dashboard: bool = setting(True, Flag(
        "--no-dashboard", "do not serve the upload page at /", "server", kind="negated",
        env="TUSD_PY_DASHBOARD"))
    tls_certificate: Path | None = setting(None, Flag(
        "--tls-certificate", "PEM certificate (chain): serve HTTPS", "server",
        aliases=("-tls-certificate",), parse=_opt_path))
    tls_key: Path | None = setting(None, Flag(
        "--tls-key", "PEM private key of --tls-certificate", "server", aliases=("-tls-key",),
        parse=_opt_path))
    tls_mode: str = setting("tls12", Flag(
        "--tls-mode", "oldest TLS version accepted (tusd's choices; tls12-strong: TLS 1.2 "
        "with AEAD ciphers only)", "server", aliases=("-tls-mode",),
        choices=("tls13", "tls12", "tls12-strong")))
    cors_origins: str = setting("*", Flag(
        "--cors-origins", "allowed browser origins: '*', a comma-separated list, or "
        "'re:<regex>'", "server"))
    cors_allow_origin: str = setting("", Flag(
        "--cors-allow-origin", "tusd's spelling: a regular expression an Origin must match "
        "in full (overrides --cors-origins)", "server", aliases=("-cors-allow-origin",)))
    disable_cors: bool = setting(False, Flag(
        "--disable-cors", "send no CORS headers (a proxy in front answers them)", "server",
        aliases=("-disable-cors",), kind="switch"))
    cors_allow_credentials: bool = setting(False, Flag(
        "--cors-allow-credentials", "let browsers send cookies and credentials", "server",
        aliases=("-cors-allow-credentials",), kind="switch"))
    cors_allow_methods: str = setting("", Flag(
        "--cors-allow-methods", "comma list of methods allowed besides tus's", "server",
        aliases=("-cors-allow-methods",)))
    cors_allow_headers: str = setting("", Flag(
        "--cors-allow-headers", "comma list of request headers allowed besides tus's", "server",
        aliases=("-cors-allow-headers",)))
    cors_expose_headers: str = setting("", Flag(
        "--cors-expose-headers", "comma list of response headers browsers may read besides "
        "tus's (e.g. one a hook adds)", "server", aliases=("-cors-expose-headers",)))
    cors_max_age: int = setting(86400, Flag(
        "--cors-max-age", "seconds a browser may cache a preflight", "server",
        aliases=("-cors-max-age",), parse=int))
    disable_download: bool = setting(False, Flag(
        "--disable-download", "do not serve GET of finished uploads", "server",
        aliases=("-disable-download",), kind="switch"))
    disable_termination: bool = setting(False, Flag(
        "--disable-termination", "refuse DELETE (the termination extension is not offered)",
        "server", aliases=("-disable-termination",), kind="switch"))
    disable_concatenation: bool = setting(False, Flag(
        "--disable-concatenation", "refuse Upload-Concat (the concatenation extensions are "
        "not offered)", "server", aliases=("-disable-concatenation",), kind="switch"))
    expose_metrics: bool = setting(True, Flag(
        "--expose-metrics", "serve Prometheus metrics (false: no metrics endpoint)", "server",
        aliases=("-expose-metrics",), kind="switch"))
    metrics_path: str = setting("/metrics", Flag(
        "--metrics-path", "URL path of the metrics endpoint", "server",
        aliases=("-metrics-path",)))
    show_greeting: bool = setting(True, Flag(
        "--show-greeting", "serve a greeting at / when the dashboard is off", "server",
        aliases=("-show-greeting",), kind="switch"))
    # --- limits ------------------------------------------------------------------------
    max_size: int = setting(0, Flag(
        "--max-size", "largest upload in bytes, advertised as Tus-Max-Size (0 = unlimited)",
        "limits", aliases=("-max-size",), parse=int))
    network_timeout: float = setting(60.0, Flag(
        "--network-timeout", "end a PATCH whose body sends nothing for this many seconds (its "
        "bytes are kept)", "limits", aliases=("-network-timeout",), parse=parse_seconds))
    lock_timeout: float = setting(20.0, Flag(
        "--lock-timeout", "seconds a request waits for a busy upload before answering 423",
        "limits", aliases=("--acquire-lock-timeout", "-acquire-lock-timeout"),
        parse=parse_seconds))
    max_concurrent_uploads: int = setting(0, Flag(
        "--max-concurrent-uploads", "body transfers at once per owner (or client IP without "
        "auth); more are answered 429 (0 = no limit)", "limits", parse=int))
    write_buffer_total: int = setting(BUDGET_BYTES, Flag(
        "--buffer-memory", "MiB of write buffers shared by all body transfers of a process; "
        "each transfer's buffer (at most 1 MiB) shrinks as more run at once", "limits",
        parse=lambda raw: max(int(raw), 1) << 20, show=lambda v: str(v >> 20)))
    request_completion_timeout: float = setting(10.0, Flag(
        "--request-completion-timeout", "seconds a request may go on saving what it received "
        "after its client went away or was asked to let go", "limits",
        aliases=("-request-completion-timeout",), parse=parse_seconds))
    shutdown_timeout: float = setting(10.0, Flag(
        "--shutdown-timeout", "on SIGTERM, seconds in-flight requests get to save their bytes "
        "and answer", "limits", aliases=("-shutdown-timeout",), parse=parse_seconds))
    # --- storage -----------------------------------------------------------------------
    upload_dir: Path = setting(Path("data"), Flag(
        "--upload-dir", "where partial files and upload state are stored", "storage",
        aliases=("-upload-dir",), parse=Path, commands=_ALL))
    redis_url: str | None = setting(None, Flag(
        "--redis-url", "keep upload state, locks and completion jobs in Redis so several "
        "instances can share one upload dir: redis://host:6379/0, rediss://..., unix:///path, "
        "or redis+sentinel://host1:26379,host2:26379/mymaster (unset: embedded, no Redis)",
        "storage", parse=_opt, commands=_ALL))
    fsync: bool = setting(True, Flag(
        "--durability", "fsync: bytes are on disk before an offset is committed (survives "
        "power loss); os: the page cache is trusted (survives a killed process, like tusd)",
        "storage", choices=("fsync", "os"), parse=lambda raw: raw == "fsync",
        show=lambda v: "fsync" if v else "os", commands=_ALL))
    expiration: float = setting(24 * 3600.0, Flag(
        "--expiration", "seconds of inactivity after which an unfinished upload is removed "
        "(0 = never)", "storage", parse=parse_seconds, commands=_ALL))
    # --- s3 ----------------------------------------------------------------------------
    s3_bucket: str | None = setting(None, Flag(
        "--s3-bucket", "keep upload bytes in this S3 bucket (any S3-compatible server); with "
        "--redis-url instances share nothing but Redis and the bucket, without it the upload "
        "records are objects in the bucket too (one instance)", "s3",
        aliases=("-s3-bucket",), parse=_opt, commands=_ALL))
    s3_endpoint: str | None = setting(None, Flag(
        "--s3-endpoint", "S3 endpoint URL, e.g. http://minio:9000 (unset: AWS for "
        "--s3-region)", "s3", aliases=("-s3-endpoint",), parse=_opt, commands=_ALL))
    s3_prefix: str = setting("", Flag(
        "--s3-prefix", "key prefix of every object written (e.g. 'uploads/')", "s3",
        aliases=("-s3-object-prefix",), commands=_ALL))
    s3_region: str | None = setting(None, Flag(
        "--s3-region", "S3 region (unset: AWS_DEFAULT_REGION or ~/.aws/config)", "s3",
        parse=_opt, commands=_ALL))
    s3_part_size: int = setting(50 << 20, Flag(
        "--s3-part-size", "preferred multipart part size in bytes; full parts upload while "
        "the body arrives", "s3", aliases=("-s3-part-size",), parse=int, commands=_ALL))
    s3_min_part_size: int = setting(5 << 20, Flag(
        "--s3-min-part-size", "smallest non-last part the server accepts (AWS: 5 MiB); set it "
        "equal to --s3-part-size for servers that want equal parts (R2)", "s3",
        aliases=("-s3-min-part-size",), parse=int, commands=_ALL))
    s3_max_concurrent_part_uploads: int = setting(4, Flag(
        "--s3-max-concurrent-part-uploads", "parts of one upload in flight at once (also "
        "bounds its local spool)", "s3", aliases=("-s3-concurrent-part-uploads",), parse=int,
        commands=_ALL))
    # --- processing --------------------------------------------------------------------
    processing: bool = setting(True, Flag(
        "--no-processing", "do not process completed uploads here (run `tusd-py worker` "
        "instead)", "processing", kind="negated", env="TUSD_PY_PROCESSING"))
    final_dir: Path | None = setting(None, Flag(
        "--final-dir", "where finished uploads are placed as <namespace>/<id>/<filename> "
        "(unset: <upload-dir>/final)", "processing", parse=_opt_path, commands=_ALL))
    namespace_key: str = setting("project", Flag(
        "--namespace-key", "metadata key whose value names the namespace folder (missing: "
        "'default')", "processing", commands=_ALL))
    processors: int = setting(1, Flag(
        "--processors", "completed uploads processed at once by this process", "processing",
        parse=int, commands=_ALL))
    thumbnail_sizes: tuple[int, ...] = setting((256, 1024), Flag(
        "--thumbnail-size", "longest side of a thumbnail in px; repeat for several (env: "
        "space-separated)", "processing", parse=int, repeat=True,
        env="TUSD_PY_THUMBNAIL_SIZES", show=lambda v: " ".join(map(str, v)), commands=_ALL))
    thumbnail_format: str = setting("jpeg", Flag(
        "--thumbnail-format", "image format of thumbnails", "processing",
        choices=("jpeg", "webp"), commands=_ALL))
    processing_timeout: float = setting(300.0, Flag(
        "--processing-timeout", "seconds one image job may take (enforced in its child "
        "process)", "processing", parse=parse_seconds, commands=_ALL))
    processing_memory_mb: int = setting(1024, Flag(
        "--processing-memory-mb", "address-space limit of each thumbnail worker process "
        "(set in the worker at start, so it bounds its whole life)",
        "processing", parse=int, commands=_ALL))
    thumbnail_jobs_per_worker: int = setting(200, Flag(
        "--thumbnail-jobs-per-worker", "image jobs a warm thumbnail worker process runs before "
        "it is replaced by a fresh one (0 = never; crashed, timed-out and out-of-memory "
        "workers are always replaced)", "processing", parse=int, commands=_ALL))
    # the thumbnailer's DEFAULT_DECODE_MB (not imported here: that would load Pillow)
    thumbnail_max_decode_mb: int = setting(64, Flag(
        "--thumbnail-max-decode-mb", "memory an image that must be decoded whole (HEIC, AVIF, "
        "GIF, WebP, BMP) may use; larger ones fail with the size they would need (the "
        "thumbnailer's --max-decode-mb)", "processing", parse=int, commands=_ALL))
    processing_attempts: int = setting(5, Flag(
        "--processing-attempts", "attempts before a failing job is dead-lettered and the "
        "upload marked failed", "processing", parse=int, commands=_ALL))
    # --- hooks -------------------------------------------------------------------------
    hooks_http: str | None = setting(None, Flag(
        "--hooks-http", "URL that receives tusd v2 hook events (POST, tusd's JSON) for the "
        "events in --hooks-enabled-events; blocking ones can refuse or change requests",
        "hooks", aliases=("-hooks-http",), parse=_opt, commands=_ALL))
    hooks_enabled_events: str = setting(
        "pre-create,post-create,post-receive,post-terminate,post-finish", Flag(
            "--hooks-enabled-events", "comma list of hook events to send: pre-create, "
            "post-create, post-receive, pre-finish, post-finish, pre-terminate, "
            "post-terminate", "hooks", aliases=("-hooks-enabled-events",), commands=_ALL))
    hooks_http_retry: int = setting(3, Flag(
        "--hooks-http-retry", "retries of a hook call after a network error or a 5xx",
        "hooks", aliases=("-hooks-http-retry",), parse=int, commands=_ALL))
    hooks_http_backoff: float = setting(1.0, Flag(
        "--hooks-http-backoff", "seconds before the first retry of a hook call; doubles each "
        "time", "hooks", aliases=("-hooks-http-backoff",), parse=parse_seconds, commands=_ALL))
    hooks_http_timeout: float = setting(10.0, Flag(
        "--hooks-http-timeout", "seconds one HTTP hook call may take", "hooks",
        aliases=("-hooks-http-timeout",), parse=parse_seconds, commands=_ALL))
    hooks_http_forward_headers: str = setting("", Flag(
        "--hooks-http-forward-headers", "comma list of client request headers also set on "
        "the HTTP hook request (e.g. Cookie,Authorization)", "hooks",
        aliases=("-hooks-http-forward-headers",), commands=_ALL))
    hooks_dir: Path | None = setting(None, Flag(
        "--hooks-dir", "directory of hook executables named like the event (pre-create, ...): "
        "the event JSON on stdin, the response JSON on stdout, a non-zero exit = the hook "
        "failed; a missing file = no hook for that event", "hooks", aliases=("-hooks-dir",),
        parse=_opt_path, commands=_ALL))
    hooks_python: str | None = setting(None, Flag(
        "--hooks-python", "module:object whose async methods (pre_create, post_receive, ...) "
        "get each event's JSON as a dict and return tusd's hook response as a dict, or None; "
        "an exception = the hook failed", "hooks", parse=_opt, commands=_ALL))
    hooks_grpc: str | None = setting(None, Flag(
        "--hooks-grpc", "HOST:PORT of a gRPC server implementing tusd's hook.proto "
        "(HookHandler.InvokeHook); needs the grpcio and protobuf packages", "hooks",
        aliases=("-hooks-grpc",), parse=_opt, commands=_ALL))
    hooks_grpc_retry: int = setting(3, Flag(
        "--hooks-grpc-retry", "retries of a gRPC hook call that failed as UNAVAILABLE, "
        "RESOURCE_EXHAUSTED or DEADLINE_EXCEEDED", "hooks", aliases=("-hooks-grpc-retry",),
        parse=int, commands=_ALL))
    hooks_grpc_backoff: float = setting(1.0, Flag(
        "--hooks-grpc-backoff", "seconds before the first retry of a gRPC hook call; doubles "
        "each time", "hooks", aliases=("-hooks-grpc-backoff",), parse=parse_seconds,
        commands=_ALL))
    hooks_grpc_secure: bool = setting(False, Flag(
        "--hooks-grpc-secure", "connect to the gRPC hook server over TLS (needs "
        "--hooks-grpc-server-tls-certificate)", "hooks", aliases=("-hooks-grpc-secure",),
        kind="switch", commands=_ALL))
    hooks_grpc_server_tls_certificate: Path | None = setting(None, Flag(
        "--hooks-grpc-server-tls-certificate", "PEM certificate (or CA) the gRPC hook "
        "server's certificate must chain to", "hooks",
        aliases=("-hooks-grpc-server-tls-certificate",), parse=_opt_path, commands=_ALL))
    hooks_grpc_client_tls_certificate: Path | None = setting(None, Flag(
        "--hooks-grpc-client-tls-certificate", "PEM client certificate for mutual TLS with "
        "the gRPC hook server", "hooks", aliases=("-hooks-grpc-client-tls-certificate",),
        parse=_opt_path, commands=_ALL))
    hooks_grpc_client_tls_key: Path | None = setting(None, Flag(
        "--hooks-grpc-client-tls-key", "PEM private key of --hooks-grpc-client-tls-certificate",
        "hooks", aliases=("-hooks-grpc-client-tls-key",), parse=_opt_path, commands=_ALL))
    hooks_grpc_forward_headers: str = setting("", Flag(
        "--hooks-grpc-forward-headers", "comma list of client request headers sent as gRPC "
        "metadata of the hook call", "hooks", aliases=("-hooks-grpc-forward-headers",),
        commands=_ALL))
    hooks_timeout: float = setting(30.0, Flag(
        "--hooks-timeout", "seconds one file, Python or gRPC hook call may take (a file hook "
        "still running then is killed); HTTP hooks: --hooks-http-timeout", "hooks",
        parse=parse_seconds, commands=_ALL))
    progress_hooks_interval: float = setting(1.0, Flag(
        "--progress-hooks-interval", "seconds (or a duration: 500ms) between post-receive "
        "hooks of a PATCH whose body is arriving; one more is sent when it ends", "hooks",
        aliases=("-progress-hooks-interval",), parse=parse_seconds, commands=_ALL))
    # --- auth --------------------------------------------------------------------------
    auth_token: str | None = setting(None, Flag(
        "--auth-token", "require 'Authorization: Bearer <token>' with this static token",
        "auth", parse=_opt))
    jwt_secret: str | None = setting(None, Flag(
        "--jwt-secret", "require a JWT signed with this HS256 secret; its 'sub' owns the "
        "uploads", "auth", parse=_opt))
    jwt_public_key: Path | None = setting(None, Flag(
        "--jwt-public-key", "require a JWT signed by this PEM public key (RS256 / ES256)",
        "auth", parse=_opt_path))
    jwt_algorithms: str = setting("", Flag(
        "--jwt-algorithms", "comma list of accepted JWT algorithms (unset: HS256 for "
        "--jwt-secret, RS256,ES256 for --jwt-public-key)", "auth"))
    jwt_audience: str | None = setting(None, Flag("--jwt-audience", "required JWT 'aud'",
                                                  "auth", parse=_opt))
    jwt_issuer: str | None = setting(None, Flag("--jwt-issuer", "required JWT 'iss'", "auth",
                                                parse=_opt))
    auth_hook: str | None = setting(None, Flag(
        "--auth-hook", "module:function called with each request; returns the subject or "
        "None", "auth", parse=_opt))
    # --- logging -----------------------------------------------------------------------
    log_level: str = setting("info", Flag(
        "--log-level", "log level", "logging", choices=("debug", "info", "warning", "error"),
        commands=_ALL))
    log_format: str = setting("text", Flag(
        "--log-format", "one line per event, as text or JSON", "logging",
        aliases=("-log-format",), choices=("text", "json"), commands=_ALL))
    verbose: bool = setting(True, Flag(
        "--verbose", "tusd's switch: false logs warnings and errors only", "logging",
        aliases=("-verbose",), kind="switch", commands=_ALL))
    # --- tuning (no flag) --------------------------------------------------------------
    checkpoint_bytes: int = 32 << 20  # fsync + commit at least this often during a PATCH
    checkpoint_seconds: float = 2.0
    write_buffer_bytes: int = BUFFER_BYTES  # body chunks are coalesced to this before pwritev
    sweep_interval: float = 60.0
    tombstone_seconds: float = 7 * 24 * 3600.0  # how long terminated/expired ids answer 410
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
        for f in fields(cls):
            if doc.get(f.name) is not None and "Path" in str(f.type):
                doc[f.name] = Path(doc[f.name])
        doc["thumbnail_sizes"] = tuple(doc["thumbnail_sizes"])
        return cls(**doc)

    def __post_init__(self) -> None:
        base = "/" + self.base_path.strip("/") + "/"
        object.__setattr__(self, "base_path", base.replace("//", "/"))


@dataclass(frozen=True)
class Option:
    """A Settings field that has a flag."""

    field: str
    flag: Flag
    default: Any

    def shown_default(self) -> str | None:
        """The default as a person reads it; None when there is nothing to show."""
        if self.flag.kind != "value" or self.default is None or self.default == "":
            return None
        return self.flag.show(self.default) if self.flag.show else str(self.default)


def options(command: str | None = None) -> Iterator[Option]:
    for f in fields(Settings):
        flag: Flag | None = f.metadata.get("flag")
        if flag is not None and (command is None or command in flag.commands):
            assert f.default is not MISSING
            yield Option(f.name, flag, f.default)


def flag_table() -> str:
    """The README's table of every flag, generated from the fields above."""
    lines = ["| flag | environment | default | what it does |", "|---|---|---|---|"]
    for section in SECTIONS:
        for option in options():
            if option.flag.section != section:
                continue
            flag = option.flag
            names = ", ".join(f"`{n}`" for n in (flag.name, *flag.aliases))
            default = option.shown_default()
            shown = f"`{default}`" if default is not None else ""
            if flag.choices:
                shown += " (" + " / ".join(flag.choices) + ")"
            where = "serve" if flag.commands == ("serve",) else "serve, worker"
            lines.append(f"| {names} | `{flag.env_name}` | {shown} | *{section}, {where}:* "
                         f"{flag.help.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(flag_table(), end="")
