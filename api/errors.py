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
from starlette.exceptions import HTTPException as StarletteHTTPException

from handlers.channels.base import WebhookError

log = logging.getLogger(__name__)


class JSON(Response):
    """A JSON response serialized with orjson (datetimes included)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


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


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSON:
        return JSON(body(exc.error, exc.message, exc.details), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSON:
        details = [
            {"field": ".".join(str(p) for p in e["loc"]), "problem": e["msg"]} for e in exc.errors()
        ]
        message = "; ".join(f"{d['field']}: {d['problem']}" for d in details)
        return JSON(body("invalid_request", message, details), status_code=422)

    @app.exception_handler(WebhookError)
    async def _webhook(_: Request, exc: WebhookError) -> JSON:
        error = {401: "bad_signature", 413: "too_large"}.get(exc.status, "invalid_payload")
        details = {"field": exc.field} if exc.field else None
        return JSON(body(error, str(exc), details), status_code=exc.status)

    @app.exception_handler(BrokerError)
    async def _broker_down(_: Request, exc: BrokerError) -> JSON:
        log.warning("broker unavailable: %s", exc)
        return JSON(
            body("broker_unavailable", "the queue is unavailable; nothing was accepted, retry"),
            status_code=503,
            headers={"Retry-After": "5"},
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSON:
        error = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSON(body(error, str(exc.detail)), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSON:
        log.exception("unexpected error")
        return JSON(
            body("internal_error", f"{type(exc).__name__}; nothing was changed by this request"),
            status_code=500,
        )
