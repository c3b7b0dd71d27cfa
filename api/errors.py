"""Every error the API answers, mapped in one place: a status and a JSON body that says what is
wrong, ``{"error": <code>, "message": <text>, "details": ...}``. Never a bare 500."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.routing import APIRoute, iter_route_contexts
from kombu.exceptions import OperationalError as BrokerError
from pydantic import BaseModel, Field
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from handlers import admin, bulk
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


class ErrorOut(BaseModel):
    """The body of every error the API answers (OpenAPI: each operation's 4xx and 5xx)."""

    error: str = Field(description="A code: not_found, invalid_request, unauthenticated, …")
    message: str = Field(description="What is wrong, for a person.")
    details: Any = Field(default=None, description="invalid_request: each field and its problem.")


WHY: dict[int, str] = {
    401: "No token, or an unknown one.",
    403: "This needs the admin token.",
    404: "Not found, or not the caller's.",
    405: "Not a method this path takes (`Allow` names those it does).",
    409: "Refused: it conflicts with the state of what it names (the body says why).",
    413: "The body is too large.",
    422: "Invalid input (`details` names each field).",
    503: "The store or the queue is unavailable: nothing was done, retry (`Retry-After`).",
}


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for a route's error statuses, with the error body."""
    return {s: {"model": ErrorOut, "description": WHY.get(s, "Error.")} for s in statuses}


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        error: str,
        message: str,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.error, self.message, self.details = status, error, message, details
        self.headers = headers or {}


def not_found(entity: str, entity_id: object) -> ApiError:
    return ApiError(404, "not_found", f"{entity} {entity_id} not found")


def body(error: str, message: str, details: Any = None) -> dict[str, Any]:
    out: dict[str, Any] = {"error": error, "message": message}
    if details is not None:
        out["details"] = details
    return out


def render(exc: Exception, quiet: bool = False) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Status, JSON body and extra headers for any error: the one mapping. ``quiet``: only to
    know the status (whoever answers the request logs)."""
    if isinstance(exc, ApiError):
        return exc.status, body(exc.error, exc.message, exc.details), dict(exc.headers)
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
    if isinstance(exc, bulk.BulkError):
        return exc.status, body(exc.code, str(exc)), {}
    if isinstance(exc, sa_exc.DataError):
        # The last line behind the schemas' checks (schemas/api.py json_safe, schemas/types.py
        # Id): a value the store refuses (NUL in text, a number out of range) is the caller's.
        # The code, not the text: PostgreSQL's message quotes the refused value (customer data).
        sqlstate = getattr(exc.orig, "sqlstate", None) or type(exc.orig).__name__
        if not quiet:
            log.warning("the store refused a value of the request (%s)", sqlstate)
        return 422, body("invalid_request", "a value of this request cannot be stored"), {}
    if schema_behind(exc):
        message = "the store's schema is not at the newest version: run `inboxsync migrate`"
        return 503, body("schema_not_at_head", message), {"Retry-After": "30"}
    if isinstance(exc, BrokerError | sa_exc.OperationalError | sa_exc.InterfaceError):
        if not quiet:
            log.warning("queue or store unavailable: %s", exc)
        message = "the queue or the store is unavailable; nothing was accepted, retry"
        return 503, body("unavailable", message), {"Retry-After": "5"}
    if isinstance(exc, StarletteHTTPException):
        error = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(
            exc.status_code, "http_error"
        )
        # The router's own headers (a 405's ``Allow``) are kept.
        return exc.status_code, body(error, str(exc.detail)), dict(exc.headers or {})
    if not quiet:
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


def allowed_methods(request: Request) -> str:
    """The methods the request's path takes, for a 405's ``Allow`` (RFC 9110 15.5.6)."""
    methods: set[str] = set()
    for context in iter_route_contexts(request.app.routes):
        path, taken = context.path, getattr(context.original_route, "methods", None)
        if path and taken and compile_path(path)[0].fullmatch(request.url.path):
            methods |= set(taken)
    return ", ".join(sorted(methods))


def document(app: FastAPI) -> None:
    """The app's OpenAPI with every error as it is answered: each 4xx/5xx an ``ErrorOut`` (not
    FastAPI's ``HTTPValidationError``, which no answer has), a 401 on every route that takes a
    token, a 403 on every admin-only one."""
    from api import auth  # it answers with these errors: imported when the app is made

    original = app.openapi
    amended: list[int] = []  # the id of the spec amended last

    def openapi() -> dict[str, Any]:
        spec = original()  # FastAPI's, made again when routes change
        if amended and amended[0] == id(spec):
            return spec
        amended[:] = [id(spec)]
        spec.setdefault("components", {}).setdefault("schemas", {})["ErrorOut"] = (
            ErrorOut.model_json_schema(ref_template="#/components/schemas/{model}")
        )
        error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}}
        for context in iter_route_contexts(app.routes):
            route = context.original_route
            if not isinstance(route, APIRoute) or context.path_format not in spec["paths"]:
                continue
            calls = {d.call for d in _dependencies(route.dependant)}
            added = [401] if auth.principal in calls else []
            added += [403] if auth.admin in calls else []
            for method in route.methods or ():
                operation = spec["paths"][context.path_format].get(method.lower())
                if operation is None:
                    continue
                answers = operation.setdefault("responses", {})
                for status in added:
                    answers.setdefault(str(status), {})
                for status, answer in answers.items():
                    if status.isdigit() and status[0] in "45":
                        answer["content"] = error
                        if not answer.get("description") or status == "422":
                            answer["description"] = WHY.get(int(status), "Error.")
                    elif status in ("4XX", "5XX"):
                        answer["content"] = error
        return spec

    app.openapi = openapi  # type: ignore[method-assign]


def _dependencies(dependant: Any) -> Iterator[Any]:
    for sub in dependant.dependencies:
        yield sub
        yield from _dependencies(sub)


def install(app: FastAPI) -> None:
    async def handler(request: Request, exc: Exception) -> JSON:
        status, content, headers = render(exc)
        if status == 405 and isinstance(exc, StarletteHTTPException):
            # The router names only the first route of the path; the path may have several.
            headers["Allow"] = allowed_methods(request) or headers.get("Allow", "")
        return JSON(content, status_code=status, headers=headers)

    document(app)
    for kind in (
        ApiError,
        RequestValidationError,
        WebhookError,
        ReplyNotFound,
        ReplyRefused,
        ComposeError,
        admin.AdminError,
        bulk.BulkError,
        BrokerError,
        sa_exc.DataError,
        sa_exc.ProgrammingError,
        sa_exc.OperationalError,
        sa_exc.InterfaceError,
        StarletteHTTPException,
        Exception,
    ):
        app.add_exception_handler(kind, handler)
