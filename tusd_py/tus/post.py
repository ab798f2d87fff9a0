"""Creation (and creation-with-upload, creation-defer-length, concatenation's final
uploads): POST on the upload collection."""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

from storage import UploadInfo, is_valid_upload_id

from ..errors import TusError
from ..http.fields import (
    OFFSET_OCTET_STREAM,
    content_length,
    http_date,
    media_type,
    parse_metadata,
    parse_non_negative,
)
from ..http.request import body_of, caller_of, service_of, upload_url
from ..service import Caller, Created, UploadService
from .headers import TUS_VERSION, parse_checksum, parse_concat, require_tus_resumable
from .patch import finish_response


def _declared_size(request: Request) -> int | None:
    """'The Client MUST include either the Upload-Length or the Upload-Defer-Length header.'"""
    length = request.headers.get("upload-length")
    defer = request.headers.get("upload-defer-length")
    if length is not None and defer is not None:
        raise TusError.ambiguous_length()
    if defer is not None:
        if defer.strip() != "1":
            raise TusError.invalid_length("Upload-Defer-Length must be 1")
        return None
    if length is None:
        raise TusError.invalid_length("send Upload-Length or Upload-Defer-Length: 1")
    return parse_non_negative(length, TusError.invalid_length())


def part_ids(base_path: str, urls: list[str]) -> list[str]:
    """Upload ids from Upload-Concat URLs (absolute or relative, under our base path)."""
    ids = []
    for url in urls:
        try:
            path = urlsplit(url).path
        except ValueError:  # e.g. 'http://[' (an unterminated IPv6 host)
            raise TusError.invalid_concat(url) from None
        if not path.startswith(base_path):
            raise TusError.invalid_concat(url)
        upload_id = path[len(base_path):]
        if not is_valid_upload_id(upload_id):
            raise TusError.invalid_concat(url)
        ids.append(upload_id)
    return ids


async def post(request: Request) -> Response:
    require_tus_resumable(request)
    service = service_of(request)
    concat = parse_concat(request.headers.get("upload-concat"))
    metadata = parse_metadata(request.headers.get("upload-metadata"))
    # A POST without a tus body may carry any Content-Type: some HTTP clients force one.
    with_body = media_type(request) == OFFSET_OCTET_STREAM
    caller = caller_of(request)
    if concat is not None and not concat[0]:
        return await _create_final(service, request, caller, concat[1], metadata, with_body)
    size = _declared_size(request)
    service.check_length(size)
    checksum = parse_checksum(request.headers.get("upload-checksum")) if with_body else None
    body = body_of(request) if with_body else None
    limit = size if size is not None else (service.settings.max_size or None)
    if body is not None and body.length is not None and limit is not None and (
            body.length > limit):
        raise TusError.too_large(f"body of {body.length} bytes exceeds the upload's length")
    new = service.new_upload(size, metadata, partial=concat is not None)

    if body is None or size == 0:
        if service.fits_in_one_write(new, body):
            return _created(request, await service.create_complete(new, caller, body))
        return _created(request, await service.create(new, caller))
    with service.transfer_slot(caller):  # a creation with a body is a transfer too
        if service.fits_in_one_write(new, body):
            created = await service.create_complete(new, caller, body, checksum)
            return _created(request, created, with_offset=True)
        created = await service.create(new, caller)
        async with service.hold(created.info.id) as hold:
            result = await service.append(created.info, hold, body, caller, checksum,
                                          fresh=True)
    created.info, created.answer = result.info, result.answer
    try:
        service.raise_for(result)
    except TusError as exc:
        # The upload exists even if its first bytes failed: tell the client where.
        exc.headers.update(_headers(request, created, with_offset=True))
        raise
    return _created(request, created, with_offset=True)


def _headers(request: Request, created: Created, *, with_offset: bool) -> dict[str, str]:
    info = created.info
    headers = {**created.headers, "Tus-Resumable": TUS_VERSION,
               "Location": upload_url(request, info.id)}
    if with_offset:
        headers["Upload-Offset"] = str(info.offset)
    return headers


def _created(request: Request, created: Created, *, with_offset: bool = False) -> Response:
    info = created.info
    headers = _headers(request, created, with_offset=with_offset)
    if info.expires_at is not None and not info.state.finished:
        headers["Upload-Expires"] = http_date(info.expires_at)
    return finish_response(201, headers, created.answer)


async def _create_final(
    service: UploadService, request: Request, caller: Caller, urls: list[str],
    metadata: dict[str, str | None], with_body: bool,
) -> Response:
    """'The Client MUST NOT include the Upload-Length header in the final upload creation.'"""
    if "upload-length" in request.headers or "upload-defer-length" in request.headers:
        raise TusError.invalid_length("a final upload's length is the sum of its partials")
    if with_body and content_length(request) != 0:
        raise TusError.modify_final()
    ids = part_ids(service.settings.base_path, urls)
    return _created(request, await service.create_final(ids, metadata, caller))


__all__ = ["UploadInfo", "part_ids", "post"]
