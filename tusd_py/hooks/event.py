"""tusd v2's hook JSON, both ways, so receivers written for tusd keep working."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from storage import UploadInfo

from ..service.caller import NOBODY, Caller
from ..service.metadata import decoded_metadata

HOOK_TYPES = ("pre-create", "post-create", "post-receive", "pre-finish", "post-finish",
              "pre-terminate", "post-terminate")
BLOCKING = frozenset({"pre-create", "pre-finish", "pre-terminate"})
# tusd's defaults: the blocking pre-finish and pre-terminate are opt-in.
DEFAULT_EVENTS = ("pre-create", "post-create", "post-receive", "post-terminate", "post-finish")


@dataclass(frozen=True)
class HookResponse:
    """The parts of tusd's hook response that tusd-py honours."""

    status: int | None = None
    body: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    reject_upload: bool = False
    reject_termination: bool = False
    stop_upload: bool = False
    change_id: str | None = None
    change_metadata: Mapping[str, str] | None = None

    @classmethod
    def parse(cls, doc: Any) -> HookResponse:
        """tusd's HookResponse; ValueError when it is not one (tusd refuses those too)."""
        if not isinstance(doc, dict):
            raise ValueError("a hook response must be a JSON object")
        http = doc.get("HTTPResponse") or {}
        change = doc.get("ChangeFileInfo") or {}
        if not isinstance(http, dict) or not isinstance(change, dict):
            raise ValueError("HTTPResponse and ChangeFileInfo must be JSON objects")
        metadata = change.get("MetaData")
        try:
            status = int(http["StatusCode"]) if http.get("StatusCode") else None
        except (TypeError, ValueError):
            raise ValueError("HTTPResponse.StatusCode must be a number") from None
        return cls(
            status=status,
            body=str(http.get("Body") or ""),
            headers={str(k): str(v) for k, v in (http.get("Header") or {}).items()},
            reject_upload=bool(doc.get("RejectUpload")),
            reject_termination=bool(doc.get("RejectTermination")),
            stop_upload=bool(doc.get("StopUpload")),
            change_id=str(change["ID"]) if change.get("ID") else None,
            change_metadata=({str(k): str(v) for k, v in metadata.items()}
                             if isinstance(metadata, dict) else None),
        )


def tusd_event(hook_type: str, info: UploadInfo, *, caller: Caller = NOBODY,
               storage: Mapping[str, str] | None = None,
               extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The JSON tusd's hooks send (its HookRequest)."""
    body: dict[str, Any] = {
        "Type": hook_type,
        "Event": {
            "Upload": {
                # 'Upload ID will be null for pre-create hook.'
                "ID": info.id or None, "Size": info.size or 0,
                "SizeIsDeferred": info.size is None, "Offset": info.offset,
                "MetaData": {k: v or "" for k, v in decoded_metadata(info.metadata).items()},
                "IsPartial": info.partial, "IsFinal": info.is_final,
                "PartialUploads": list(info.parts) or None,
                "Storage": {} if hook_type == "pre-create" else dict(storage or {}),
            },
            "HTTPRequest": {"Method": caller.method, "URI": caller.uri,
                            "RemoteAddr": caller.remote_addr, "Header": dict(caller.header)},
        },
    }
    if extra is not None:
        # What tusd cannot tell: the processing result (state, file, image, thumbnails).
        body["TusdPy"] = dict(extra)
    return body
