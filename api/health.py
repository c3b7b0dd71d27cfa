"""``/healthz``: the process answers (and which version it is). ``/readyz``: it can do its work:
the store answers, its schema is at the newest migration, the broker takes connections; 503
naming the part that fails, so a load balancer or an orchestrator can hold traffic back."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from api.errors import JSON
from observability import metrics
from store.db import engine
from version import version

router = APIRouter(tags=["ops"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok", "version": version()}


@router.get("/readyz", responses={503: {"description": "A part is not ready; the body names it."}})
async def readyz() -> JSON:
    checks = {
        "store": await run_in_threadpool(_store),
        "schema": await run_in_threadpool(schema_problem),
        "broker": await run_in_threadpool(_broker),
    }
    failing = {part: problem for part, problem in checks.items() if problem}
    body: dict[str, Any] = {"status": "ready" if not failing else "not_ready", "version": version()}
    body["checks"] = {part: problem or "ok" for part, problem in checks.items()}
    return JSON(body, status_code=503 if failing else 200)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}},
    summary="Prometheus metrics: this service's counts, and the store's and broker's state",
)
async def prometheus() -> Response:
    body, content_type = await run_in_threadpool(metrics.exposition, True)
    return Response(body, media_type=content_type)


def _store() -> str | None:
    try:
        with engine().connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        return f"unreachable: {type(exc).__name__}"
    return None


def schema_problem() -> str | None:
    """Why the store's schema is not the one this code needs, or None."""
    from alembic.script import ScriptDirectory

    from store.migrate import alembic_config

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    try:
        with engine().connect() as conn:
            current = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except Exception:
        return f"no schema: run `inboxsync migrate` (newest is {head})"
    if current != head:
        return f"schema at {current}, newest is {head}: run `inboxsync migrate`"
    return None


def _broker() -> str | None:
    from workers.app import app

    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=3)
    except Exception as exc:
        return f"unreachable: {type(exc).__name__}"
    return None
