"""Logs: readable lines by default, one JSON object per line with ``LOG_FORMAT=json``.

Every line carries the ids that follow one message through the system, bound in a context
(``bind``) rather than formatted into the text: ``request_id`` (an HTTP request, also answered as
``X-Request-Id``), ``delivery_ids`` (a webhook's deliveries: its 202 names them, the worker's
line names them again with the messages and conversations they became), ``change_id`` (an API
write, from the request to the worker that applies it), ``reply_id``. ``grep 812`` follows
delivery 812 from the ingress to its conversation.

What is never logged: secrets, tokens, signatures, message text (SQL parameters are hidden at the
engine: store/db.py; tests/test_log_hygiene.py checks every path).
"""

from __future__ import annotations

import contextvars
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import orjson

_context: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("log_context")
FIELDS = ("request_id", "delivery_ids", "change_id", "reply_id", "inbox_id", "task_id")


@contextmanager
def bind(**fields: Any) -> Iterator[None]:
    """Add ``fields`` to every log line written within the block (this thread or task)."""
    token = _context.set({**_context.get({}), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


def bound() -> dict[str, Any]:
    return dict(_context.get({}))


class _Context(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _context.get({}).items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    found = {k: getattr(record, k) for k in FIELDS if getattr(record, k, None) is not None}
    extra = getattr(record, "fields", None)
    if isinstance(extra, dict):
        found.update(extra)
    return found


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
        extra = " ".join(f"{k}={_plain(v)}" for k, v in _fields(record).items())
        line = f"{when}Z {record.levelname:<7} {record.name}: {record.getMessage()}"
        line = f"{line} {extra}" if extra else line
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _plain(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def configure(fmt: str = "text", level: str = "INFO") -> None:
    """Send every logger's lines to stderr in ``fmt`` ("text" or "json"), at ``level``.
    Celery's and uvicorn's own loggers go through the same handler."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_Context())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "celery", "kombu"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    logging.getLogger("alembic").setLevel(logging.WARNING)  # a line per migration plugin
