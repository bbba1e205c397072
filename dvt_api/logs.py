"""Structured JSON log lines on the standard library's logging.

The standard library is enough for one JSON object per line, and it keeps the service free of
a logging dependency that hosts mounting the app would have to adopt; hosts configure handlers
as usual. Only the fields listed here are written: never headers or bodies.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

FIELDS = ("request_id", "trace_id", "tenant_id", "key_id", "run_id", "event_type", "run_status",
          "run_seq", "plan_id", "method", "route", "status", "duration_ms", "code", "engine",
          "store")


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message and the known fields."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one JSON line."""
        data: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                data[name] = value
        if record.exc_info and record.exc_info[0] is not None:
            data["exc_type"] = record.exc_info[0].__name__
            # The traceback names code lines, never values: it stays in the log, never in a
            # response body.
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False, default=str)


def configure(level: int = logging.INFO) -> None:
    """JSON lines on stderr for the service's loggers (``dvt serve`` calls this)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    for name in ("dvt_api", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False
    # One line per request comes from dvt_api.middleware; uvicorn's own would repeat it.
    logging.getLogger("uvicorn.access").disabled = True
