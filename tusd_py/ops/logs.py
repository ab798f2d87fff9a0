"""Structured logging: one line per event, always with the upload id when there is one."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from typing import Any

LOGGER_NAME = "tusd_py"
logger = logging.getLogger(LOGGER_NAME)
# Set per HTTP request, so every event a request causes can be tied back to it.
request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)


def event(name: str, upload_id: str | None = None, *, level: int = logging.INFO,
          **fields: Any) -> None:
    """Log one event, e.g. event("upload.created", uid, size=10, filename="a.tif")."""
    if upload_id is not None:
        fields = {"upload_id": upload_id, **fields}
    rid = request_id.get()
    if rid is not None:
        fields["request_id"] = rid
    logger.log(level, name, extra={"fields": fields})


def _text_value(value: Any) -> str:
    text = str(value)
    if not text or any(c in text for c in ' "=\n\\'):
        return json.dumps(text, ensure_ascii=False)
    return text


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        fields: dict[str, Any] = getattr(record, "fields", {})
        parts = [f"{ts}.{int(record.msecs):03d}Z", record.levelname, record.getMessage()]
        parts += [f"{k}={_text_value(v)}" for k, v in fields.items()]
        line = " ".join(parts)
        if record.exc_info:
            line += " exc=" + json.dumps(self.formatException(record.exc_info))
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "event": record.getMessage(),
            "logger": record.name,
        }
        doc.update(getattr(record, "fields", {}))
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False, default=str)


def configure(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # Our own events cover every request that matters; per-request access lines are noise.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
