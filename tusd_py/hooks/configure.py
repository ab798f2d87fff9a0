"""The process's hook sender, from the settings (the composition root calls this once)."""

from __future__ import annotations

from collections.abc import Mapping

from ..config import Settings
from .sender import Hooks, HookTransport, StorageOf, parse_events

# The kinds of hook, one at a time (tusd picks one; here giving two is an error).
KINDS = (("hooks_http", "--hooks-http"), ("hooks_dir", "--hooks-dir"),
         ("hooks_grpc", "--hooks-grpc"), ("hooks_python", "--hooks-python"))


def storage_of(settings: Settings) -> StorageOf:
    """What tusd puts under Event.Upload.Storage for an upload: the store's type and
    where its bytes are (tusd's filestore: Path; s3store: Bucket and Key)."""
    if settings.s3_bucket:
        bucket, prefix = settings.s3_bucket, settings.s3_prefix

        def s3(upload_id: str) -> Mapping[str, str]:
            return {"Type": "s3store", "Bucket": bucket, "Key": prefix + upload_id}

        return s3
    uploads = settings.upload_dir.resolve() / "uploads"  # storage.FileDataStore's layout

    def files(upload_id: str) -> Mapping[str, str]:
        return {"Type": "filestore", "Path": str(uploads / upload_id)}

    return files


def _split(names: str) -> list[str]:
    return [n.strip() for n in names.split(",") if n.strip()]


def kind_of(settings: Settings) -> str | None:
    """The one hook flag given, or None; ValueError when several are."""
    given = [flag for field, flag in KINDS if getattr(settings, field)]
    if len(given) > 1:
        raise ValueError(f"one kind of hook at a time: {' and '.join(given)} were given")
    return given[0] if given else None


def build_hooks(settings: Settings) -> Hooks | None:
    """None when no hook is configured; ValueError for unknown events, several kinds of
    hook, or a hook that cannot be set up (ImportError / OSError for what it loads)."""
    kind = kind_of(settings)
    if kind is None:
        return None
    events = parse_events(settings.hooks_enabled_events)
    transport: HookTransport
    retries, backoff = 0, 0.0  # file and Python hooks: their answer is final (tusd's too)
    if kind == "--hooks-http":
        from .http import HttpHook

        assert settings.hooks_http is not None
        transport = HttpHook(settings.hooks_http, timeout=settings.hooks_http_timeout,
                             forward_headers=_split(settings.hooks_http_forward_headers))
        retries, backoff = settings.hooks_http_retry, settings.hooks_http_backoff
    elif kind == "--hooks-dir":
        from .file import FileHook

        assert settings.hooks_dir is not None
        transport = FileHook(settings.hooks_dir, timeout=settings.hooks_timeout)
    elif kind == "--hooks-grpc":
        from .grpc_hook import GrpcHook

        assert settings.hooks_grpc is not None
        transport = GrpcHook(
            settings.hooks_grpc, timeout=settings.hooks_timeout,
            secure=settings.hooks_grpc_secure,
            server_certificate=settings.hooks_grpc_server_tls_certificate,
            client_certificate=settings.hooks_grpc_client_tls_certificate,
            client_key=settings.hooks_grpc_client_tls_key,
            forward_headers=_split(settings.hooks_grpc_forward_headers))
        retries, backoff = settings.hooks_grpc_retry, settings.hooks_grpc_backoff
    else:
        from .python import PythonHook

        assert settings.hooks_python is not None
        transport = PythonHook.load(settings.hooks_python, timeout=settings.hooks_timeout)
    return Hooks(transport, events, retries=retries, backoff=backoff,
                 storage=storage_of(settings),
                 progress_interval=settings.progress_hooks_interval)
