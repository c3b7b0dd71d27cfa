"""The HTTP service: webhook ingress and the agents' API. ``inboxsync serve`` runs it."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from api import (
    attachments,
    batcher,
    bulk,
    cases,
    contacts,
    deadletters,
    deliveries,
    errors,
    health,
    history,
    limits,
    messages,
    reconcile,
    replies,
    resources,
    subscribers,
    webhooks,
)
from handlers import journal
from observability.http import Observed
from settings import Settings, get_settings
from version import version
from workers import periodic, publish

log = logging.getLogger(__name__)


def enqueue(deliveries: list[dict[str, Any]]) -> list[int | None]:
    """Journal a batch of deliveries in the store, then put one message with their ids on the
    broker; the id of each (None: a replay, journaled before). Either failing fails every request
    of the batch (503); a journaled batch whose publish failed is enqueued again by the periodic
    round (workers/periodic.py), and the providers' retries dedupe."""
    ids = journal.journal(deliveries)
    if kept := [i for i in ids if i is not None]:
        publish.ingest(kept)
    return ids


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.batcher = batcher.Batcher(
            enqueue,
            max_items=settings.ingest_batch_max,
            window_s=settings.ingest_batch_window_ms / 1000,
        )
        # The periodic work runs here too (and in workers): the store's lease picks one process.
        scheduler = periodic.Scheduler(settings).start() if settings.scheduler else None
        yield
        if scheduler is not None:
            await run_in_threadpool(scheduler.stop)
        app.state.batcher.close()

    app = FastAPI(
        title="inboxsync",
        version=version(),
        summary="Support-inbox webhooks in, conversations and tickets out, kept in sync.",
        lifespan=lifespan,
        # FastAPI's built-in OpenTelemetry costs ~15 % of a webhook request even with no exporter;
        # on only when asked for (INBOXSYNC_TELEMETRY=true, then the usual OTEL_* variables).
        telemetry={
            "tracing": settings.telemetry,
            "metrics": settings.telemetry,
            "logs": settings.telemetry,
            "operation_spans": settings.telemetry,
        },
    )
    app.state.settings = settings
    errors.install(app)
    # Outermost, so that they refuse before routing, body parsing and authentication.
    app.add_middleware(limits.NoNul)
    app.add_middleware(limits.BodyLimit, settings=settings)
    app.add_middleware(Observed, access_log=settings.access_log)
    app.include_router(webhooks.router)
    app.include_router(resources.router)
    app.include_router(cases.router)
    app.include_router(history.router)
    app.include_router(replies.router)
    app.include_router(attachments.router)
    app.include_router(messages.router)
    app.include_router(contacts.router)
    app.include_router(deliveries.router)
    app.include_router(deadletters.router)
    app.include_router(reconcile.router)
    app.include_router(subscribers.router)
    app.include_router(bulk.router)

    app.include_router(health.router)
    return app
