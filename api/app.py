"""The HTTP service: webhook ingress and the agents' API. ``inboxsync serve`` runs it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from api import (
    attachments,
    batcher,
    cases,
    contacts,
    deliveries,
    errors,
    limits,
    messages,
    replies,
    resources,
    webhooks,
)
from handlers import edits, journal, pipeline
from handlers.outbound import replies as outbound_replies
from settings import Settings, get_settings

log = logging.getLogger(__name__)


def publish_ids(delivery_ids: list[int]) -> None:
    from workers.app import app

    app.send_task(
        pipeline.INGEST_TASK,
        args=[delivery_ids],
        queue="ingest",
        retry=True,
        retry_policy={"max_retries": 2, "interval_start": 0.1, "interval_step": 0.2},
    )


def enqueue(deliveries: list[dict[str, Any]]) -> list[int | None]:
    """Journal a batch of deliveries in the store, then put one message with their ids on the
    broker; the id of each (None: a replay, journaled before). Either failing fails every request
    of the batch (503); a journaled batch whose publish failed is enqueued again by the sweeper,
    and the providers' retries dedupe."""
    ids = journal.journal(deliveries)
    if kept := [i for i in ids if i is not None]:
        publish_ids(kept)
    return ids


def publish_replies(reply_ids: list[int]) -> None:
    from workers.tasks import enqueue_reply

    for reply_id in reply_ids:
        enqueue_reply(reply_id)


async def sweep_forever(settings: Settings) -> None:
    """Re-enqueue journaled deliveries and pending changes whose broker message was lost (see
    handlers/journal.py), and replies that are due but not on the broker or whose worker died
    (see replies.sweep)."""
    while True:
        await asyncio.sleep(settings.sweep_interval_s)
        try:
            await run_in_threadpool(sweep_once, settings)
        except Exception:
            log.exception("sweep failed; trying again in %s s", settings.sweep_interval_s)


def sweep_once(settings: Settings) -> None:
    from api.changes import publish

    journal.forget_tokens(2 * settings.webhook_tolerance_seconds)
    page = 1000  # a full page means there may be more; a short one ends the pass
    while ids := journal.sweep(settings.sweep_after_s, limit=page):
        for start in range(0, len(ids), settings.ingest_batch_max):
            publish_ids(ids[start : start + settings.ingest_batch_max])
        log.warning("re-enqueued %d deliveries whose broker message was lost", len(ids))
        if len(ids) < page:
            break
    while lost := journal.sweep_changes(settings.sweep_after_s, limit=page):
        for queue, envelope in lost:
            publish(envelope, queue)
        log.warning("re-enqueued %d changes whose broker message was lost", len(lost))
        if len(lost) < page:
            break
    if due := outbound_replies.sweep():
        publish_replies(due)
    edits.sweep()  # an edit that raced its message's transaction


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.batcher = batcher.Batcher(
            enqueue,
            max_items=settings.ingest_batch_max,
            window_s=settings.ingest_batch_window_ms / 1000,
        )
        sweeper = asyncio.create_task(sweep_forever(settings))
        yield
        sweeper.cancel()
        with suppress(asyncio.CancelledError):
            await sweeper
        app.state.batcher.close()

    app = FastAPI(
        title="inboxsync",
        version="0.1.0",
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
    app.include_router(webhooks.router)
    app.include_router(resources.router)
    app.include_router(cases.router)
    app.include_router(replies.router)
    app.include_router(attachments.router)
    app.include_router(messages.router)
    app.include_router(contacts.router)
    app.include_router(deliveries.router)

    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
