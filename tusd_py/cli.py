"""`tusd-py serve | worker | thumbnail`: every flag also readable from TUSD_PY_<FLAG>."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from starlette.applications import Starlette

from storage import Backend, embedded_backend

from .config import Settings
from .ops import logs, malloc

_DEFAULTS = Settings()
_ENV_HELP = ("Each flag can also be set with the environment variable TUSD_PY_<FLAG> "
             "(e.g. TUSD_PY_PORT=8080); the command line wins.")


def _env(name: str, default: Any, convert: Callable[[str], Any] = str) -> Any:
    raw = os.environ.get(f"TUSD_PY_{name.upper().replace('-', '_')}")
    return default if raw is None else convert(raw)


def _bool(raw: str) -> bool:
    return raw.strip().lower() in ("1", "true", "yes", "on")


def _sizes(raw: str) -> list[int]:
    return [int(s) for s in raw.replace(",", " ").split()]


def _add_storage_flags(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--upload-dir", type=Path, default=_env("upload-dir", _DEFAULTS.upload_dir, Path),
        help="where partial files and upload state are stored")
    add("--redis-url", default=_env("redis-url", None),
        help="keep upload state, locks and completion jobs in Redis so several instances "
             "can share one upload dir: redis://host:6379/0, rediss://..., unix:///path, or "
             "redis+sentinel://host1:26379,host2:26379/mymaster (default: embedded, no Redis)")
    add("--s3-bucket", default=_env("s3-bucket", None),
        help="keep upload bytes in this S3 bucket (any S3-compatible server); with "
             "--redis-url instances share nothing but Redis and the bucket, without it the "
             "upload records are objects in the bucket too (one instance)")
    add("--s3-endpoint", default=_env("s3-endpoint", None),
        help="S3 endpoint URL, e.g. https://<account>.r2.cloudflarestorage.com or "
             "http://minio:9000 (default: AWS for --s3-region)")
    add("--s3-prefix", default=_env("s3-prefix", _DEFAULTS.s3_prefix),
        help="key prefix of every object written (e.g. 'uploads/')")
    add("--s3-region", default=_env("s3-region", None),
        help="S3 region (default: AWS_DEFAULT_REGION or ~/.aws/config)")
    add("--s3-part-size", type=int, default=_env("s3-part-size", _DEFAULTS.s3_part_size, int),
        help="preferred multipart part size in bytes; full parts upload while the body "
             "arrives")
    add("--s3-min-part-size", type=int,
        default=_env("s3-min-part-size", _DEFAULTS.s3_min_part_size, int),
        help="smallest non-last part the server accepts (AWS: 5 MiB); set it equal to "
             "--s3-part-size for servers that want equal parts (R2)")
    add("--s3-max-concurrent-part-uploads", type=int,
        default=_env("s3-max-concurrent-part-uploads",
                     _DEFAULTS.s3_max_concurrent_part_uploads, int),
        help="parts of one upload in flight at once (also bounds its local spool)")
    add("--durability", choices=["fsync", "os"],
        default=_env("durability", "fsync"),
        help="fsync: bytes are on disk before an offset is committed (survives power loss); "
             "os: the page cache is trusted (survives a killed process, like tusd)")
    add("--expiration", type=float, default=_env("expiration", _DEFAULTS.expiration, float),
        help="seconds of inactivity after which an unfinished upload is removed (0 = never)")


def _add_processing_flags(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--final-dir", type=Path, default=_env("final-dir", None, Path),
        help="where finished uploads are placed as <namespace>/<id>/<filename> "
             "(default: <upload-dir>/final)")
    add("--namespace-key", default=_env("namespace-key", _DEFAULTS.namespace_key),
        help="metadata key whose value names the namespace folder (missing: 'default')")
    add("--processors", type=int, default=_env("processors", _DEFAULTS.processors, int),
        help="completed uploads processed at once by this process")
    add("--thumbnail-size", type=int, action="append", dest="thumbnail_sizes",
        default=None, help=f"longest side of a thumbnail in px; repeat for several "
        f"(default: {' '.join(map(str, _DEFAULTS.thumbnail_sizes))}; env: space-separated)")
    add("--thumbnail-format", choices=["jpeg", "webp"],
        default=_env("thumbnail-format", _DEFAULTS.thumbnail_format))
    add("--processing-timeout", type=float,
        default=_env("processing-timeout", _DEFAULTS.processing_timeout, float),
        help="seconds one image job may take (enforced in its child process)")
    add("--processing-memory-mb", type=int,
        default=_env("processing-memory-mb", _DEFAULTS.processing_memory_mb, int),
        help="address-space limit of an image job's child process")
    add("--hooks-http", default=_env("hooks-http", None),
        help="URL called (POST, tusd v2 HTTP-hook JSON, type post-finish) after each upload "
             "is processed or finally fails; retried with backoff")
    add("--hooks-enabled-events",
        default=_env("hooks-enabled-events", _DEFAULTS.hooks_enabled_events),
        help="comma list of hook events to send: pre-create, post-create, post-receive, "
             "pre-finish, post-finish, pre-terminate, post-terminate")
    add("--hooks-http-retry", type=int,
        default=_env("hooks-http-retry", _DEFAULTS.hooks_http_retry, int),
        help="retries of a hook call after a network error or a 5xx")
    add("--hooks-http-backoff", type=float,
        default=_env("hooks-http-backoff", _DEFAULTS.hooks_http_backoff, float),
        help="seconds before the first retry of a hook call; doubles each time")
    add("--hooks-http-timeout", type=float,
        default=_env("hooks-http-timeout", _DEFAULTS.hooks_http_timeout, float),
        help="seconds one hook call may take")
    add("--processing-attempts", type=int,
        default=_env("processing-attempts", _DEFAULTS.processing_attempts, int),
        help="attempts before a failing job is dead-lettered and the upload marked failed")


def _add_access_flags(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--auth-token", default=_env("auth-token", None),
        help="require 'Authorization: Bearer <token>' with this static token")
    add("--jwt-secret", default=_env("jwt-secret", None),
        help="require a JWT signed with this HS256 secret; its 'sub' owns the uploads")
    add("--jwt-public-key", type=Path, default=_env("jwt-public-key", None, Path),
        help="require a JWT signed by this PEM public key (RS256 / ES256)")
    add("--jwt-algorithms", default=_env("jwt-algorithms", ""),
        help="comma list of accepted JWT algorithms (default: HS256 for --jwt-secret, "
             "RS256,ES256 for --jwt-public-key)")
    add("--jwt-audience", default=_env("jwt-audience", None), help="required JWT 'aud'")
    add("--jwt-issuer", default=_env("jwt-issuer", None), help="required JWT 'iss'")
    add("--auth-hook", default=_env("auth-hook", None),
        help="module:function called with each request; returns the subject or None")
    add("--max-concurrent-uploads", type=int,
        default=_env("max-concurrent-uploads", _DEFAULTS.max_concurrent_uploads, int),
        help="body transfers at once per owner (or client IP without auth); "
             "more are answered 429 (0 = no limit)")
    add("--buffer-memory", type=int,
        default=_env("buffer-memory", _DEFAULTS.write_buffer_total >> 20, int),
        help="MiB of write buffers shared by all body transfers of a process; each "
             "transfer's buffer (at most 1 MiB) shrinks as more run at once")
    add("--shutdown-timeout", type=float,
        default=_env("shutdown-timeout", _DEFAULTS.shutdown_timeout, float),
        help="on SIGTERM, seconds in-flight requests get to save their bytes and answer")


def _add_log_flags(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--log-level", default=_env("log-level", _DEFAULTS.log_level),
        choices=["debug", "info", "warning", "error"], help="log level")
    add("--log-format", default=_env("log-format", _DEFAULTS.log_format),
        choices=["text", "json"], help="one line per event, as text or JSON")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tusd-py", description="A tus 1.0 upload server.")
    commands = parser.add_subparsers(dest="command", required=True)
    fmt = argparse.ArgumentDefaultsHelpFormatter

    serve = commands.add_parser("serve", help="run the tus server (and its processors)",
                                description="Run the tus 1.0 server. " + _ENV_HELP,
                                formatter_class=fmt)
    add = serve.add_argument
    add("--host", default=_env("host", _DEFAULTS.host), help="address to listen on")
    add("--port", type=int, default=_env("port", _DEFAULTS.port, int), help="TCP port")
    add("--base-path", default=_env("base-path", _DEFAULTS.base_path),
        help="URL path of the upload endpoint")
    add("--max-size", type=int, default=_env("max-size", _DEFAULTS.max_size, int),
        help="largest upload in bytes, advertised as Tus-Max-Size (0 = unlimited)")
    add("--cors-origins", default=_env("cors-origins", _DEFAULTS.cors_origins),
        help="allowed browser origins: '*', a comma-separated list, or 're:<regex>'")
    add("--behind-proxy", action="store_true",
        default=_env("behind-proxy", _DEFAULTS.behind_proxy, _bool),
        help="trust Forwarded / X-Forwarded-Host / X-Forwarded-Proto for upload URLs")
    add("--network-timeout", type=float,
        default=_env("network-timeout", _DEFAULTS.network_timeout, float),
        help="end a PATCH whose body sends nothing for this many seconds (its bytes are kept)")
    add("--lock-timeout", type=float,
        default=_env("lock-timeout", _DEFAULTS.lock_timeout, float),
        help="seconds a request waits for a busy upload before answering 423")
    add("--workers", type=int, default=_env("workers", _DEFAULTS.workers, int),
        help="server processes sharing the port and the upload dir (embedded storage: "
             "flock-based locks across them; with --s3-bucket more than 1 needs --redis-url)")
    add("--no-dashboard", dest="dashboard", action="store_false",
        default=_env("dashboard", True, _bool), help="do not serve the upload page at /")
    add("--no-processing", dest="processing", action="store_false",
        default=_env("processing", True, _bool),
        help="do not process completed uploads here (run `tusd-py worker` instead)")
    _add_storage_flags(serve)
    _add_access_flags(serve)
    _add_processing_flags(serve)
    _add_log_flags(serve)

    worker = commands.add_parser(
        "worker", formatter_class=fmt,
        help="process completed uploads without serving HTTP (needs --redis-url)",
        description="Run processors only, so they scale apart from the servers. " + _ENV_HELP)
    _add_storage_flags(worker)
    _add_processing_flags(worker)
    _add_log_flags(worker)

    thumb = commands.add_parser(
        "thumbnail", help="make thumbnails of one image exactly as the processor does",
        description="Write thumbnails of PATH into --out and print the image metadata as "
                    "JSON. Exit code 2 and a one-line reason on bad input.")
    thumb.add_argument("path", type=Path)
    thumb.add_argument("--out", type=Path, required=True)
    thumb.add_argument("--size", type=int, action="append", dest="sizes")
    thumb.add_argument("--format", choices=["jpeg", "webp"], default="jpeg")
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    sizes = args.thumbnail_sizes or _env("thumbnail-sizes", list(_DEFAULTS.thumbnail_sizes),
                                         _sizes)
    serving = args.command == "serve"
    return Settings(
        upload_dir=args.upload_dir.resolve(), redis_url=args.redis_url or None,
        s3_bucket=args.s3_bucket or None, s3_endpoint=args.s3_endpoint or None,
        s3_prefix=args.s3_prefix, s3_region=args.s3_region or None,
        s3_part_size=args.s3_part_size, s3_min_part_size=args.s3_min_part_size,
        s3_max_concurrent_part_uploads=args.s3_max_concurrent_part_uploads,
        # A checkpoint on S3 uploads the spooled remainder: at least two parts between
        # checkpoints keep most bytes in full parts uploaded while the body arrives.
        checkpoint_bytes=max(_DEFAULTS.checkpoint_bytes, 2 * args.s3_part_size)
        if args.s3_bucket else _DEFAULTS.checkpoint_bytes,
        expiration=args.expiration, fsync=args.durability == "fsync",
        final_dir=args.final_dir.resolve() if args.final_dir else None,
        namespace_key=args.namespace_key,
        processors=args.processors if (not serving or args.processing) else 0,
        thumbnail_sizes=tuple(sizes), thumbnail_format=args.thumbnail_format,
        processing_timeout=args.processing_timeout,
        processing_memory_mb=args.processing_memory_mb,
        processing_attempts=args.processing_attempts, hooks_http=args.hooks_http or None,
        hooks_enabled_events=args.hooks_enabled_events, hooks_http_retry=args.hooks_http_retry,
        hooks_http_backoff=args.hooks_http_backoff, hooks_http_timeout=args.hooks_http_timeout,
        log_level=args.log_level, log_format=args.log_format,
        **({
            "host": args.host, "port": args.port, "base_path": args.base_path,
            "max_size": args.max_size, "cors_origins": args.cors_origins,
            "behind_proxy": args.behind_proxy, "network_timeout": args.network_timeout,
            "lock_timeout": args.lock_timeout, "dashboard": args.dashboard,
            "workers": args.workers, "auth_token": args.auth_token or None,
            "jwt_secret": args.jwt_secret or None,
            "jwt_public_key": args.jwt_public_key.resolve() if args.jwt_public_key else None,
            "jwt_algorithms": args.jwt_algorithms, "jwt_audience": args.jwt_audience or None,
            "jwt_issuer": args.jwt_issuer or None, "auth_hook": args.auth_hook or None,
            "max_concurrent_uploads": args.max_concurrent_uploads,
            "shutdown_timeout": args.shutdown_timeout,
            "write_buffer_total": max(args.buffer_memory, 1) << 20,
        } if serving else {}),
    )


def build_backend(settings: Settings) -> Backend:
    if settings.s3_bucket:
        from storage.s3 import S3Options, s3_backend

        options = S3Options(
            bucket=settings.s3_bucket, endpoint=settings.s3_endpoint, region=settings.s3_region,
            prefix=settings.s3_prefix, part_size=settings.s3_part_size,
            min_part_size=settings.s3_min_part_size,
            max_concurrent_part_uploads=settings.s3_max_concurrent_part_uploads)
        return s3_backend(options, settings.upload_dir, redis_url=settings.redis_url,
                          tombstone_seconds=settings.tombstone_seconds)
    if not settings.redis_url:
        # Several worker processes share the upload dir: cross-process locks and records.
        return embedded_backend(settings.upload_dir, fsync=settings.fsync,
                                shared=settings.workers > 1)
    from storage.redis import redis_backend

    return redis_backend(settings.redis_url, settings.upload_dir,
                         tombstone_seconds=settings.tombstone_seconds, fsync=settings.fsync)


def check_redis(url: str) -> str | None:
    """One line saying why Redis cannot be used, or None when it answers."""
    import anyio

    from storage.redis import connect

    async def ping() -> None:
        client = connect(url)
        try:
            with anyio.fail_after(5):
                await client.ping()
        finally:
            await client.aclose()

    try:
        anyio.run(ping)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    return None


def _require_redis(settings: Settings) -> None:
    if settings.redis_url:
        problem = check_redis(settings.redis_url)
        if problem:
            print(f"tusd-py: cannot reach Redis at {settings.redis_url}: {problem}",
                  file=sys.stderr)
            raise SystemExit(2)


def serve(settings: Settings) -> None:
    import uvicorn

    from .app import create_app
    from .http.informational import PROTOCOL_PATH

    logs.configure(settings.log_level, settings.log_format)
    malloc.tune()
    try:
        app = create_app(settings, build_backend(settings))  # also checks hooks and auth
    except (ValueError, ImportError, OSError) as exc:
        print(f"tusd-py: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if settings.workers > 1 and settings.s3_bucket and not settings.redis_url:
        # The S3 store's `.info` objects and locks belong to one process.
        print("tusd-py: --workers > 1 with --s3-bucket needs --redis-url", file=sys.stderr)
        raise SystemExit(2)
    _require_redis(settings)
    options: dict[str, Any] = dict(
        host=settings.host, port=settings.port, log_config=None,
        # Forwarded headers are handled by --behind-proxy, never implicitly by uvicorn.
        proxy_headers=False, server_header=False, access_log=False,
        timeout_graceful_shutdown=max(int(settings.shutdown_timeout), 1),
        # uvicorn's own protocol plus an ASGI extension for `104 Upload Resumption
        # Supported` interim responses (tusd_py/informational.py).
        http=PROTOCOL_PATH,
    )
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    logs.event("server.listening", url=f"http://{host}:{settings.port}{settings.base_path}",
               upload_dir=str(settings.upload_dir), max_size=settings.max_size,
               state="redis" if settings.redis_url else "embedded",
               expiration=settings.expiration, processors=settings.processors,
               auth=settings.auth_enabled, hooks=settings.hooks_enabled_events
               if settings.hooks_http else "")
    if settings.workers > 1:
        # Each worker process builds its own app (and Redis pool) from these settings.
        os.environ[SETTINGS_ENV] = settings.to_json()
        uvicorn.run("tusd_py.cli:app_from_environment", factory=True,
                    workers=settings.workers, **options)
    else:
        uvicorn.Server(uvicorn.Config(app, **options)).run()


SETTINGS_ENV = "TUSD_PY_SETTINGS_JSON"


def app_from_environment() -> Starlette:
    """The app factory of each `--workers` process."""
    from .app import create_app

    settings = Settings.from_json(os.environ[SETTINGS_ENV])
    logs.configure(settings.log_level, settings.log_format)
    malloc.tune()
    return create_app(settings, build_backend(settings))


def work(settings: Settings) -> None:
    import anyio

    from storage import FinalFiles

    from .hooks.configure import build_hooks
    from .processing.completion import start_processing
    from .processing.pipeline import FinalizeProcessor

    logs.configure(settings.log_level, settings.log_format)
    if not settings.redis_url:
        # The embedded store's locks live inside the server process: a second process
        # writing the same .info files could lose updates.
        print("tusd-py: `worker` needs --redis-url (the embedded store is one process)",
              file=sys.stderr)
        raise SystemExit(2)
    _require_redis(settings)
    backend = build_backend(settings)
    processor = FinalizeProcessor(settings, FinalFiles(settings.final_root))
    hooks = build_hooks(settings)

    async def run() -> None:
        async with anyio.create_task_group() as tg:
            for service in backend.services:
                tg.start_soon(service)
            if hooks is not None:
                tg.start_soon(hooks.run)
            logs.event("worker.started", processors=settings.processors)
            await start_processing(tg, backend, processor, settings, hooks)

    anyio.run(run)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "thumbnail":
        from thumbnailer.cli import main as thumbnail_main

        forwarded = [str(args.path), "--out", str(args.out), "--format", args.format]
        for size in args.sizes or []:
            forwarded += ["--size", str(size)]
        return thumbnail_main(forwarded, prog="tusd-py thumbnail")
    settings = settings_from_args(args)
    if args.command == "serve":
        serve(settings)
    else:
        work(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
