"""The HTTP service: webhook ingress and the agents' API. ``inboxsync serve`` runs it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from api import batcher, cases, errors, resources, webhooks
from handlers import pipeline
from settings import Settings, get_settings


def publish_ingest_batch(deliveries: list[dict[str, Any]]) -> None:
    """One broker message for a whole batch of deliveries (see api/batcher.py)."""
    from workers.app import app

    app.send_task(
        pipeline.INGEST_TASK,
        args=[deliveries],
        queue="ingest",
        retry=True,
        retry_policy={"max_retries": 2, "interval_start": 0.1, "interval_step": 0.2},
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.batcher = batcher.Batcher(
            publish_ingest_batch,
            max_items=settings.ingest_batch_max,
            window_s=settings.ingest_batch_window_ms / 1000,
        )
        yield
        app.state.batcher.close()

    app = FastAPI(
        title="inboxsync",
        version="0.1.0",
        summary="Support-inbox webhooks in, conversations and tickets out, kept in sync.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    errors.install(app)
    app.include_router(webhooks.router)
    app.include_router(resources.router)
    app.include_router(cases.router)

    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
