"""`tusd-py serve | worker | thumbnail`: flags and TUSD_PY_* variables generated from the
settings' declarations (tusd_py/config.py); tusd's own spellings are accepted too."""

from __future__ import annotations

import argparse
import functools
import os
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import SECTIONS, Option, Settings, options, parse_bool

if TYPE_CHECKING:
    import ssl  # only --tls-certificate needs it: `tusd-py thumbnail` starts without it

VERSION = "0.1.0"
_ENV_HELP = ("Each flag can also be set with its environment variable TUSD_PY_<FLAG> "
             "(e.g. TUSD_PY_PORT=8080); the command line wins. tusd's single-dash spellings "
             "(-upload-dir, -hooks-http, ...) are accepted as well.")

# tusd flags with no tusd-py counterpart: a tusd command line that uses one fails with
# this one line instead of argparse's "unrecognized arguments".
TUSD_ONLY = {
    "gcs-bucket": "Google Cloud Storage is not supported; use --s3-bucket (GCS speaks S3)",
    "gcs-object-prefix": "Google Cloud Storage is not supported; use --s3-prefix",
    "azure-storage": "Azure Blob Storage is not supported",
    "azure-container-access-type": "Azure Blob Storage is not supported",
    "azure-blob-access-tier": "Azure Blob Storage is not supported",
    "azure-object-prefix": "Azure Blob Storage is not supported",
    "azure-endpoint": "Azure Blob Storage is not supported",
    "hooks-plugin": "Go plugins do not exist here; use --hooks-python module:object",
    "s3-transfer-acceleration": "no equivalent (set --s3-endpoint to the accelerated one)",
    "s3-disable-ssl": "give an http:// --s3-endpoint instead",
    "dir-perms": "no equivalent (directories are created 0755, less the process umask)",
    "file-perms": "no equivalent (files are created 0644, less the process umask)",
}
# tusd flags that change nothing here: accepted (with their value) and logged, so a tusd
# unit file starts unchanged. name -> (takes a value, why it does nothing).
TUSD_IGNORED = {
    "enable-experimental-protocol": (False, "the IETF draft is always served"),
    "s3-disable-content-hashes": (False, "aiobotocore decides which hashes it sends"),
    "s3-max-buffered-parts": (True, "the spool holds --s3-max-concurrent-part-uploads parts"),
    "s3-log-api-calls": (False, "--log-level debug logs each S3 part"),
    "filelock-holder-poll-interval": (True, "release requests are sent, not polled for"),
    "filelock-acquirer-poll-interval": (True, "release requests are sent, not polled for"),
    "expose-pprof": (False, "there is no pprof; profile with py-spy"),
    "pprof-path": (True, "there is no pprof; profile with py-spy"),
    "pprof-block-profile-rate": (True, "there is no pprof; profile with py-spy"),
    "pprof-mutex-profile-rate": (True, "there is no pprof; profile with py-spy"),
}


def migration_table() -> str:
    """README's "Migrating from tusd" table: every tusd flag and what tusd-py does with it."""
    rows: list[tuple[str, str, str]] = []
    for option in options():
        tusd = [a for a in option.flag.aliases if a.startswith("-") and not a.startswith("--")]
        for name in tusd:
            rows.append((name, f"`{option.flag.name}`", option.flag.help))
    rows.append(("-version", "`--version`", "print the version"))
    rows += [(f"-{name}", "accepted, no effect", why) for name, (_, why) in TUSD_IGNORED.items()]
    rows += [(f"-{name}", "refused at start", why) for name, why in TUSD_ONLY.items()]
    lines = ["| tusd flag | tusd-py | notes |", "|---|---|---|"]
    lines += [f"| `{tusd}` | {ours} | {note.replace('|', '/')} |"
              for tusd, ours, note in sorted(rows)]
    return "\n".join(lines) + "\n"


def without_ignored(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """argv without TUSD_IGNORED flags (and their values); the names dropped."""
    kept: list[str] = []
    dropped: list[str] = []
    rest = iter(argv)
    for arg in rest:
        flag, equals, _ = arg.lstrip("-").partition("=")
        if arg.startswith("-") and flag in TUSD_IGNORED:
            if TUSD_IGNORED[flag][0] and not equals:
                next(rest, None)  # its value is the next argument
            dropped.append(flag)
            continue
        kept.append(arg)
    return kept, dropped


def _env_value(option: Option) -> Any:
    raw = os.environ.get(option.flag.env_name)
    if raw is None:
        return option.default
    flag = option.flag
    if flag.kind in ("switch", "negated"):
        return parse_bool(raw)
    if flag.repeat:
        parse = flag.parse or str
        return tuple(parse(part) for part in raw.replace(",", " ").split())
    return flag.parse(raw) if flag.parse else raw


def _typed(parse: Callable[[str], Any] | None, name: str) -> Callable[[str], Any]:
    def convert(raw: str) -> Any:
        try:
            return parse(raw) if parse else raw
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{name}: {exc}") from None

    return convert


def _help(option: Option) -> str:
    flag = option.flag
    text = flag.help
    default = option.shown_default()
    if (flag.repeat and default is not None) or default is not None:
        text += f" (default: {default})"
    return text + f" [{flag.env_name}]"


def _add_options(parser: argparse.ArgumentParser, command: str) -> None:
    groups = {s: parser.add_argument_group(s) for s in SECTIONS}
    for option in options(command):
        flag = option.flag
        add = groups[flag.section].add_argument
        names = (flag.name, *flag.aliases)
        default = _env_value(option)
        if flag.kind == "negated":
            add(*names, dest=option.field, action="store_false", default=default,
                help=_help(option))
        elif flag.kind == "switch":
            # Go's boolean flags: -x, -x=true, -x=false.
            add(*names, dest=option.field, nargs="?", const=True, default=default,
                type=_typed(parse_bool, flag.name), metavar="BOOL", help=_help(option))
        elif flag.repeat:
            add(*names, dest=option.field, action="append", default=None,
                type=_typed(flag.parse, flag.name), help=_help(option))
        else:
            value_default = (flag.show(default) if flag.show and flag.choices else default)
            add(*names, dest=option.field, default=value_default,
                type=_typed(None if flag.choices else flag.parse, flag.name),
                choices=flag.choices or None, help=_help(option),
                metavar=None if flag.choices else flag.name.lstrip("-").upper().replace("-", "_"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tusd-py", description="A tus 1.0 upload server.")
    parser.add_argument("--version", "-version", action="version", version=f"tusd-py {VERSION}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the tus server (and its processors)",
                                description="Run the tus 1.0 server. " + _ENV_HELP)
    _add_options(serve, "serve")
    worker = commands.add_parser(
        "worker", help="process completed uploads without serving HTTP (needs --redis-url)",
        description="Run processors only, so they scale apart from the servers. " + _ENV_HELP)
    _add_options(worker, "worker")
    thumb = commands.add_parser(
        "thumbnail", help="make thumbnails of one image exactly as the processor does",
        description="Write thumbnails of PATH into --out and print the image metadata as "
                    "JSON. Exit code 2 and a one-line reason on bad input.")
    thumb.add_argument("path", type=Path, help="the image")
    thumb.add_argument("--out", type=Path, required=True, help="folder for the thumbnails")
    thumb.add_argument("--size", type=int, action="append", dest="sizes",
                       help="longest side in px; repeat for several (default: 256 1024)")
    thumb.add_argument("--format", choices=["jpeg", "webp"], default="jpeg",
                       help="thumbnail format (default: jpeg)")
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    command = args.command
    values: dict[str, Any] = {}
    for option in options(command):
        value = getattr(args, option.field)
        flag = option.flag
        if flag.repeat:
            value = tuple(value) if value else _env_value(option)
        elif flag.choices and flag.parse and isinstance(value, str):
            value = flag.parse(value)
        values[option.field] = value
    settings = Settings(**values)
    # Paths are resolved once: workers and the processor's children see the same ones.
    settings = replace(
        settings, log_level=settings.log_level if settings.verbose else "warning",
        upload_dir=settings.upload_dir.resolve(),
        final_dir=settings.final_dir.resolve() if settings.final_dir else None,
        jwt_public_key=settings.jwt_public_key.resolve() if settings.jwt_public_key else None,
        processors=settings.processors if settings.processing else 0)
    if settings.s3_bucket:
        # A checkpoint on S3 uploads the spooled remainder: at least two parts between
        # checkpoints keep most bytes in full parts uploaded while the body arrives.
        settings = replace(settings, checkpoint_bytes=max(settings.checkpoint_bytes,
                                                          2 * settings.s3_part_size))
    return settings


def build_backend(settings: Settings) -> Any:
    from storage import embedded_backend

    if settings.s3_bucket:
        from storage.s3 import S3Options, s3_backend

        s3 = S3Options(
            bucket=settings.s3_bucket, endpoint=settings.s3_endpoint, region=settings.s3_region,
            prefix=settings.s3_prefix, part_size=settings.s3_part_size,
            min_part_size=settings.s3_min_part_size,
            max_concurrent_part_uploads=settings.s3_max_concurrent_part_uploads)
        return s3_backend(s3, settings.upload_dir, redis_url=settings.redis_url,
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


def _fail(message: str) -> None:
    print(f"tusd-py: {message}", file=sys.stderr)
    raise SystemExit(2)


def _require_redis(settings: Settings) -> None:
    if settings.redis_url:
        problem = check_redis(settings.redis_url)
        if problem:
            _fail(f"cannot reach Redis at {settings.redis_url}: {problem}")


def bind(settings: Settings) -> socket.socket:
    """The listening socket, bound before anything else happens: a busy port is one line
    and exit code 2, with nothing started and nothing touched."""
    try:
        if settings.unix_sock is not None:
            path = settings.unix_sock
            if path.is_socket():
                path.unlink()  # a stale socket of an earlier run
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(str(path))
            path.chmod(0o666)
        else:
            family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((settings.host, settings.port))
    except OSError as exc:
        where = settings.unix_sock or f"{settings.host}:{settings.port}"
        _fail(f"cannot listen on {where}: {exc.strerror or exc}")
    # Not inheritable: a process the server starts (a thumbnail worker, under uvloop's
    # spawn) would otherwise keep the port listening after the server was killed. uvicorn's
    # --workers processes receive it through multiprocessing instead.
    return sock


def tls_context(mode: str, config: Any, default_factory: Callable[[], ssl.SSLContext],
                ) -> ssl.SSLContext:
    """tusd's -tls-mode: the oldest protocol accepted (and strong ciphers for tls12-strong)."""
    import ssl

    context = default_factory()
    context.minimum_version = (ssl.TLSVersion.TLSv1_3 if mode == "tls13"
                               else ssl.TLSVersion.TLSv1_2)
    if mode == "tls12-strong":
        context.set_ciphers("ECDHE+AESGCM:ECDHE+CHACHA20")
    return context


def upload_url(settings: Settings) -> str:
    if settings.unix_sock is not None:
        return f"unix:{settings.unix_sock} {settings.base_path}"
    scheme = "https" if settings.tls_certificate else "http"
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    return f"{scheme}://{host}:{settings.port}{settings.base_path}"


def serve(settings: Settings) -> None:
    import logging

    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from .http.informational import PROTOCOL_PATH
    from .ops import logs, malloc
    from .ops.uvicorn_check import check_uvicorn

    problem = check_uvicorn()
    if problem:
        _fail(problem)
    if settings.tls_certificate and not settings.tls_key:
        _fail("--tls-certificate needs --tls-key")
    if settings.workers > 1 and settings.s3_bucket and not settings.redis_url:
        # The S3 store's `.info` objects and locks belong to one process.
        _fail("--workers > 1 with --s3-bucket needs --redis-url")
    sock = bind(settings)
    logs.configure(settings.log_level, settings.log_format)
    # uvicorn's own "Uvicorn running on ..." names no upload URL: server.listening does.
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    malloc.tune()
    _require_redis(settings)
    try:
        from .app import create_app

        app = create_app(settings, build_backend(settings))  # also checks hooks and auth
    except (ValueError, ImportError, OSError) as exc:
        _fail(str(exc))
    tls: dict[str, Any] = {}
    if settings.tls_certificate:
        tls = {"ssl_certfile": str(settings.tls_certificate),
               "ssl_keyfile": str(settings.tls_key),
               "ssl_context_factory": functools.partial(tls_context, settings.tls_mode)}
    options: dict[str, Any] = dict(
        log_config=None,
        # Forwarded headers are handled by --behind-proxy, never implicitly by uvicorn.
        proxy_headers=False, server_header=False, access_log=False,
        timeout_graceful_shutdown=max(int(settings.shutdown_timeout), 1),
        # uvicorn's own protocol plus an ASGI extension for `104 Upload Resumption
        # Supported` interim responses (tusd_py/http/informational.py).
        http=PROTOCOL_PATH, **tls,
    )
    logs.event("server.listening", url=upload_url(settings),
               upload_dir=str(settings.upload_dir), max_size=settings.max_size,
               state="redis" if settings.redis_url else "embedded",
               expiration=settings.expiration, processors=settings.processors,
               auth=settings.auth_enabled, hooks=_hooks_described(settings))
    if settings.workers > 1:
        # Each worker process builds its own app (and Redis pool) from these settings.
        os.environ[SETTINGS_ENV] = settings.to_json()
        config = uvicorn.Config("tusd_py.cli:app_from_environment", factory=True,
                                workers=settings.workers, **options)
        Multiprocess(config, sockets=[sock]).run()
    else:
        uvicorn.Server(uvicorn.Config(app, **options)).run(sockets=[sock])
    if settings.unix_sock is not None:
        settings.unix_sock.unlink(missing_ok=True)


def _hooks_described(settings: Settings) -> str:
    """'--hooks-dir: pre-create,post-finish' for the start-up line; '' without hooks."""
    from .hooks.configure import kind_of

    kind = kind_of(settings)  # several kinds were refused when the app was built
    return f"{kind}: {settings.hooks_enabled_events}" if kind else ""


SETTINGS_ENV = "TUSD_PY_SETTINGS_JSON"


def app_from_environment() -> Any:
    """The app factory of each `--workers` process."""
    from .app import create_app
    from .ops import logs, malloc

    settings = Settings.from_json(os.environ[SETTINGS_ENV])
    logs.configure(settings.log_level, settings.log_format)
    malloc.tune()
    return create_app(settings, build_backend(settings))


def work(settings: Settings) -> None:
    import anyio

    from storage import FinalFiles

    from .hooks.configure import build_hooks
    from .ops import logs
    from .processing.completion import start_processing
    from .processing.pipeline import FinalizeProcessor

    logs.configure(settings.log_level, settings.log_format)
    if not settings.redis_url:
        # The embedded store's locks live inside the server process: a second process
        # writing the same .info files could lose updates.
        _fail("`worker` needs --redis-url (the embedded store is one process)")
    _require_redis(settings)
    backend = build_backend(settings)
    processor = FinalizeProcessor(settings, FinalFiles(settings.final_root))
    try:
        hooks = build_hooks(settings)
    except (ValueError, ImportError, OSError) as exc:
        _fail(str(exc))

    async def run() -> None:
        async with anyio.create_task_group() as tg:
            for service in backend.services:
                tg.start_soon(service)
            if hooks is not None:
                tg.start_soon(hooks.run)
            logs.event("worker.started", processors=settings.processors)
            await start_processing(tg, backend, processor, settings, hooks)

    anyio.run(run)


def refuse_tusd_only(argv: Sequence[str]) -> None:
    for arg in argv:
        name = arg.lstrip("-").split("=", 1)[0]
        if arg.startswith("-") and name in TUSD_ONLY:
            _fail(f"tusd's -{name} has no tusd-py flag: {TUSD_ONLY[name]}")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["thumbnail"]:  # normally dispatched earlier, by tusd_py/entry.py
        from .entry import main as entry_main

        return entry_main(argv)
    refuse_tusd_only(argv)
    argv, ignored = without_ignored(argv)
    args = build_parser().parse_args(argv)
    settings = settings_from_args(args)
    if ignored:
        from .ops import logs

        logs.configure(settings.log_level, settings.log_format)
        for name in ignored:
            logs.event("server.tusd_flag_ignored", flag=f"-{name}", why=TUSD_IGNORED[name][1])
    if args.command == "serve":
        serve(settings)
    else:
        work(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
