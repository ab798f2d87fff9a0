"""`tusd-py serve`: every flag also readable from TUSD_PY_<FLAG>."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from storage import Backend, embedded_backend

from . import logs
from .settings import Settings

_DEFAULTS = Settings()


def _env(name: str, default: Any, convert: Callable[[str], Any] = str) -> Any:
    raw = os.environ.get(f"TUSD_PY_{name.upper().replace('-', '_')}")
    return default if raw is None else convert(raw)


def _bool(raw: str) -> bool:
    return raw.strip().lower() in ("1", "true", "yes", "on")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tusd-py", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve", help="run the tus server",
        description="Run the tus 1.0 server. Each flag can also be set with the "
                    "environment variable TUSD_PY_<FLAG> (e.g. TUSD_PY_PORT=8080).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = serve.add_argument
    add("--host", default=_env("host", _DEFAULTS.host), help="address to listen on")
    add("--port", type=int, default=_env("port", _DEFAULTS.port, int), help="TCP port")
    add("--base-path", default=_env("base-path", _DEFAULTS.base_path),
        help="URL path of the upload endpoint")
    add("--upload-dir", type=Path, default=_env("upload-dir", _DEFAULTS.upload_dir, Path),
        help="where partial files and upload state are stored")
    add("--max-size", type=int, default=_env("max-size", _DEFAULTS.max_size, int),
        help="largest upload in bytes, advertised as Tus-Max-Size (0 = unlimited)")
    add("--expiration", type=float, default=_env("expiration", _DEFAULTS.expiration, float),
        help="seconds of inactivity after which an unfinished upload is removed (0 = never)")
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
    add("--redis-url", default=_env("redis-url", None),
        help="keep upload state, locks and completion jobs in Redis so several instances "
             "can share one upload dir: redis://host:6379/0, rediss://..., unix:///path, or "
             "redis+sentinel://host1:26379,host2:26379/mymaster (default: embedded, no Redis)")
    add("--no-dashboard", dest="dashboard", action="store_false",
        default=_env("dashboard", True, _bool), help="do not serve the upload page at /")
    add("--log-level", default=_env("log-level", _DEFAULTS.log_level),
        choices=["debug", "info", "warning", "error"], help="log level")
    add("--log-format", default=_env("log-format", _DEFAULTS.log_format),
        choices=["text", "json"], help="one line per event, as text or JSON")
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    return Settings(
        host=args.host, port=args.port, base_path=args.base_path,
        upload_dir=args.upload_dir.resolve(), max_size=args.max_size,
        expiration=args.expiration, cors_origins=args.cors_origins,
        behind_proxy=args.behind_proxy, network_timeout=args.network_timeout,
        lock_timeout=args.lock_timeout, log_level=args.log_level, log_format=args.log_format,
        redis_url=args.redis_url or None, dashboard=args.dashboard,
    )


def build_backend(settings: Settings) -> Backend:
    if not settings.redis_url:
        return embedded_backend(settings.upload_dir)
    from storage.redis import redis_backend

    return redis_backend(settings.redis_url, settings.upload_dir,
                         tombstone_seconds=settings.tombstone_seconds)


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


def serve(settings: Settings) -> None:
    import uvicorn

    from .app import create_app

    logs.configure(settings.log_level, settings.log_format)
    if settings.redis_url:
        problem = check_redis(settings.redis_url)
        if problem:
            print(f"tusd-py: cannot reach Redis at {settings.redis_url}: {problem}",
                  file=sys.stderr)
            raise SystemExit(2)
    app = create_app(settings, build_backend(settings))
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_config=None,
        # Forwarded headers are handled by --behind-proxy, never implicitly by uvicorn.
        proxy_headers=False, server_header=False, access_log=False,
        timeout_graceful_shutdown=10,
    )
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    logs.event("server.listening", url=f"http://{host}:{settings.port}{settings.base_path}",
               upload_dir=str(settings.upload_dir), max_size=settings.max_size,
               state="redis" if settings.redis_url else "embedded",
               expiration=settings.expiration)
    uvicorn.Server(config).run()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        serve(settings_from_args(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
