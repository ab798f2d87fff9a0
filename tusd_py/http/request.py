"""From a Starlette request to what the upload service takes: the caller, the body,
the service itself, and the URL a client uses for an upload."""

from __future__ import annotations

from starlette.requests import ClientDisconnect, Request

from ..service import Body, Caller, UploadService
from .fields import content_length
from .proxy import public_origin


def service_of(request: Request) -> UploadService:
    service: UploadService = request.app.state.uploads
    return service


def client_key(request: Request, subject: str | None, *, behind_proxy: bool) -> str:
    """The owner when authenticated, else the client's address."""
    if subject is not None:
        return f"owner:{subject}"
    if behind_proxy:
        forwarded = request.headers.get("x-forwarded-for", "").split(",")[0].strip()
        if forwarded:
            return f"ip:{forwarded}"
    return f"ip:{request.client.host if request.client else '?'}"


def caller_of(request: Request) -> Caller:
    service = service_of(request)
    client = request.client
    query = request.scope.get("query_string", b"")
    uri = request.scope["path"] + (f"?{query.decode('latin-1')}" if query else "")
    return Caller(
        method=request.method, uri=uri,
        remote_addr=f"{client.host}:{client.port}" if client else "",
        client_key=client_key(request, service.subject(),
                              behind_proxy=service.settings.behind_proxy),
        raw_headers=request.scope["headers"])


def body_of(request: Request) -> Body:
    return Body(request.stream(), content_length(request), (ClientDisconnect,))


def upload_url(request: Request, upload_id: str) -> str:
    settings = service_of(request).settings
    if settings.relative_location:
        return f"{settings.base_path}{upload_id}"
    origin = public_origin(request, behind_proxy=settings.behind_proxy)
    return f"{origin}{settings.base_path}{upload_id}"
