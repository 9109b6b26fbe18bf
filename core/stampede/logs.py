"""Structured JSON logs, one object per line, with the sale and reservation id as fields.

Every process calls ``configure`` once at start-up. Log calls pass context through ``extra``:
``log.info("settled", extra={"sale": s, "reservation_id": r})``; any extra key becomes a JSON field, so a
line about a reservation can always be found by its id. Every line is scrubbed of URL passwords
(``stampede.redact``), whatever exception or driver message it carries.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from .redact import scrub

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return scrub(json.dumps(out, default=str))


class PlainFormatter(logging.Formatter):
    """Plain text for a terminal, scrubbed like the JSON lines."""

    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


def configure(level: str = "INFO", json_lines: bool = True) -> None:
    """Routes the root logger to stderr, as JSON lines or plain text."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if json_lines else PlainFormatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
