"""The JSON shape of an upload, shared by the API and the post-finish hook."""

from __future__ import annotations

from typing import Any

from storage import UploadInfo

from ..service.metadata import decoded_metadata


def upload_json(base_path: str, info: UploadInfo) -> dict[str, Any]:
    result = dict(info.result or {})
    thumbs = [
        {"name": t["name"], "width": t.get("width"), "height": t.get("height"),
         "url": f"/api/uploads/{info.id}/thumbnails/{t['name']}"}
        for t in result.get("thumbnails") or []
    ]
    return {
        "id": info.id, "url": f"{base_path}{info.id}",
        "state": info.state.value, "size": info.size, "offset": info.offset,
        "metadata": decoded_metadata(info.metadata), "partial": info.partial,
        "parts": list(info.parts), "created_at": info.created_at,
        "updated_at": info.updated_at, "completed_at": info.completed_at,
        "expires_at": info.expires_at,
        "processing": {"attempts": info.attempts, "error": info.error,
                       "started_at": info.started_at, "finished_at": info.finished_at},
        "file": result.get("file"), "image": result.get("image"), "thumbnails": thumbs,
    }
