"""Every error the API answers, mapped in one place: a status and a JSON body that says what is
wrong, ``{"error": <code>, "message": <text>, "details": ...}``. Never a bare 500."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException

from handlers import admin
from handlers.channels.base import WebhookError
from handlers.outbound.compose import ComposeError
from handlers.outbound.replies import ReplyNotFound, ReplyRefused

log = logging.getLogger(__name__)


class JSON(Response):
    """A JSON response serialized with orjson (datetimes included)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        # UTC as "Z", like the models' timestamps (schemas/timestamps.py).
        return orjson.dumps(content, option=orjson.OPT_UTC_Z)


async def send_json(
    send: Any, status: int, content: Any, headers: dict[str, str] | None = None
) -> None:
    """Answer with a JSON body at the ASGI level, as ``JSON`` would: for what answers before the
    app (the webhook fast path, api/webhooks.py; the edge limits, api/limits.py)."""
    payload = orjson.dumps(content, option=orjson.OPT_UTC_Z)
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        *((k.lower().encode(), v.encode()) for k, v in (headers or {}).items()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": payload})


class ApiError(Exception):
    def __init__(self, status: int, error: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.status, self.error, self.message, self.details = status, error, message, details


def not_found(entity: str, entity_id: object) -> ApiError:
    return ApiError(404, "not_found", f"{entity} {entity_id} not found")


def body(error: str, message: str, details: Any = None) -> dict[str, Any]:
    out: dict[str, Any] = {"error": error, "message": message}
    if details is not None:
        out["details"] = details
    return out


def render(exc: Exception) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Status, JSON body and extra headers for any error: the one mapping."""
    if isinstance(exc, ApiError):
        return exc.status, body(exc.error, exc.message, exc.details), {}
    if isinstance(exc, RequestValidationError):
        details = [
            {"field": ".".join(str(p) for p in e["loc"]), "problem": e["msg"]} for e in exc.errors()
        ]
        message = "; ".join(f"{d['field']}: {d['problem']}" for d in details)
        return 422, body("invalid_request", message, details), {}
    if isinstance(exc, WebhookError):
        error = {401: "bad_signature", 403: "forbidden", 413: "too_large"}.get(
            exc.status, "invalid_payload"
        )
        field = [{"field": exc.field, "problem": str(exc)}] if exc.field else None
        return exc.status, body(error, str(exc), field), {}
    if isinstance(exc, ReplyNotFound):
        return 404, body("not_found", str(exc)), {}
    if isinstance(exc, ReplyRefused):
        status = 422 if exc.code == "idempotency_key_reused" else 409
        return status, body(exc.code, str(exc)), {}
    if isinstance(exc, ComposeError):
        return 422, body("invalid_request", str(exc)), {}
    # Admin writes (handlers/admin.py), shared with the CLI.
    if isinstance(exc, admin.NotFound):
        return 404, body("not_found", str(exc)), {}
    if isinstance(exc, admin.Invalid):
        return 422, body("invalid_request", str(exc)), {}
    if isinstance(exc, sa_exc.DataError):
        # The last line behind the schemas' checks (schemas/api.py json_safe, schemas/types.py
        # Id): a value the store refuses (NUL in text, a number out of range) is the caller's.
        # The code, not the text: PostgreSQL's message quotes the refused value (customer data).
        sqlstate = getattr(exc.orig, "sqlstate", None) or type(exc.orig).__name__
        log.warning("the store refused a value of the request (%s)", sqlstate)
        return 422, body("invalid_request", "a value of this request cannot be stored"), {}
    if schema_behind(exc):
        message = "the store's schema is not at the newest version: run `inboxsync migrate`"
        return 503, body("schema_not_at_head", message), {"Retry-After": "30"}
    if isinstance(exc, BrokerError | sa_exc.OperationalError | sa_exc.InterfaceError):
        log.warning("queue or store unavailable: %s", exc)
        message = "the queue or the store is unavailable; nothing was accepted, retry"
        return 503, body("unavailable", message), {"Retry-After": "5"}
    if isinstance(exc, StarletteHTTPException):
        error = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(
            exc.status_code, "http_error"
        )
        return exc.status_code, body(error, str(exc.detail)), {}
    log.exception("unexpected error", exc_info=exc)
    message = f"{type(exc).__name__}; nothing was changed by this request"
    return 500, body("internal_error", message), {}


def schema_behind(exc: Exception) -> bool:
    """A table or column this code uses is missing: the store was not migrated."""
    if isinstance(exc, sa_exc.ProgrammingError):
        return getattr(exc.orig, "sqlstate", None) in ("42P01", "42703")  # undefined table/column
    if isinstance(exc, sa_exc.OperationalError):
        text = str(exc.orig)  # SQLite: "no such table: x", "table x has no column named y"
        return text.startswith(("no such table", "no such column")) or (
            text.startswith("table ") and " has no column" in text
        )
    return False


def install(app: FastAPI) -> None:
    async def handler(_: Request, exc: Exception) -> JSON:
        status, content, headers = render(exc)
        return JSON(content, status_code=status, headers=headers)

    for kind in (
        ApiError,
        RequestValidationError,
        WebhookError,
        ReplyNotFound,
        ReplyRefused,
        ComposeError,
        admin.AdminError,
        BrokerError,
        sa_exc.DataError,
        sa_exc.ProgrammingError,
        sa_exc.OperationalError,
        sa_exc.InterfaceError,
        StarletteHTTPException,
        Exception,
    ):
        app.add_exception_handler(kind, handler)
