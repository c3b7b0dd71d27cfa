"""``POST /webhooks/{inbox_id}``: verify, accept, enqueue, answer. No database write here.

The inbox's provider adapter (handlers/channels) verifies the signature before anything is
parsed, then turns the body into payloads; the batcher (api/batcher.py) puts them on the broker.
202 means durably queued; 503 means the broker refused and the provider should retry.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from api.errors import JSON, ApiError, not_found
from handlers import pipeline
from handlers.channels import adapter_for
from handlers.channels.base import WebhookRequest
from store.db import reading
from store.models import Inbox

router = APIRouter(tags=["webhooks"])

INBOX_CACHE_SECONDS = 30.0


@dataclass(frozen=True)
class InboxInfo:
    id: int
    provider: str
    secrets: dict[str, Any]


_inboxes: dict[int, tuple[float, InboxInfo | None]] = {}


def _load_inbox(inbox_id: int) -> InboxInfo | None:
    with reading() as session:
        inbox = session.get(Inbox, inbox_id)
        return None if inbox is None else InboxInfo(inbox.id, inbox.provider, dict(inbox.secrets))


async def inbox_info(inbox_id: int) -> InboxInfo | None:
    """Inboxes change rarely and are read on every delivery: cached for a few seconds."""
    now = time.monotonic()
    hit = _inboxes.get(inbox_id)
    if hit is None or hit[0] < now:
        hit = (now + INBOX_CACHE_SECONDS, await run_in_threadpool(_load_inbox, inbox_id))
        _inboxes[inbox_id] = hit
    return hit[1]


def forget_inbox(inbox_id: int) -> None:
    _inboxes.pop(inbox_id, None)


@router.post(
    "/webhooks/{inbox_id}",
    status_code=202,
    summary="Inbound webhook of an inbox's provider",
    responses={401: {}, 404: {}, 413: {}, 422: {}, 503: {}},
)
async def receive(inbox_id: int, request: Request) -> JSON:
    settings = request.app.state.settings
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > settings.max_body_bytes:
        raise ApiError(413, "too_large", f"body over {settings.max_body_bytes} bytes")
    body = await request.body()
    if len(body) > settings.max_body_bytes:
        raise ApiError(413, "too_large", f"body over {settings.max_body_bytes} bytes")
    inbox = await inbox_info(inbox_id)
    if inbox is None:
        raise not_found("inbox", inbox_id)
    adapter = adapter_for(inbox.provider)
    webhook = WebhookRequest(
        method=request.method,
        url=str(request.url),
        headers={k.lower(): v for k, v in request.headers.items()},
        query=dict(request.query_params),
        body=body,
    )
    adapter.verify(webhook, inbox.secrets, time.time())
    accepted = adapter.accept(webhook)
    if accepted.payloads:
        await request.app.state.batcher.submit(
            [pipeline.delivery(inbox.id, inbox.provider, p) for p in accepted.payloads]
        )
    if accepted.reply is not None:
        return JSON(accepted.reply, status_code=200)
    return JSON({"accepted": len(accepted.payloads)}, status_code=202)
