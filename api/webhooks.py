"""``POST /webhooks/{inbox_id}``: verify, accept, enqueue, answer. No database write here.

The inbox's provider adapter (handlers/channels) verifies the signature before anything is
parsed, then turns the body into payloads; the batcher (api/batcher.py) puts them on the broker.
202 means durably queued; 503 means the broker refused and the provider should retry.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from api import errors
from api.errors import JSON, ApiError, not_found
from handlers import journal
from handlers.channels import adapter_for
from handlers.channels.base import WebhookRequest
from schemas.types import MAX_ID, Id
from store.db import reading
from store.models import Inbox

router = APIRouter(tags=["webhooks"])

INBOX_CACHE_SECONDS = 30.0


@dataclass(frozen=True)
class InboxInfo:
    id: int
    provider: str
    secrets: dict[str, Any]


_inboxes: dict[int, tuple[float, InboxInfo]] = {}
_loading: dict[int, asyncio.Future[InboxInfo | None]] = {}


def _load_inbox(inbox_id: int) -> InboxInfo | None:
    with reading() as session:
        inbox = session.get(Inbox, inbox_id)
        return None if inbox is None else InboxInfo(inbox.id, inbox.provider, dict(inbox.secrets))


async def inbox_info(inbox_id: int) -> InboxInfo | None:
    """Inboxes change rarely and are read on every delivery: cached for a few seconds."""
    now = time.monotonic()
    hit = _inboxes.get(inbox_id)
    if hit is not None and hit[0] >= now:
        return hit[1]
    # One load per inbox at a time: when the entry expires under load, the requests that
    # arrive meanwhile wait for that load instead of each reading the inbox again.
    loading = _loading.get(inbox_id)
    if loading is None:
        loading = asyncio.ensure_future(run_in_threadpool(_load_inbox, inbox_id))
        _loading[inbox_id] = loading
        loading.add_done_callback(lambda _: _loading.pop(inbox_id, None))
    info = await asyncio.shield(loading)
    if info is not None:  # an unknown id is not remembered: the inbox may be created next
        _inboxes[inbox_id] = (now + INBOX_CACHE_SECONDS, info)
    return info


async def handle(
    state: Any, inbox_id: int, url: str, headers: dict[str, str], query: dict[str, str], body: bytes
) -> tuple[int, Any]:
    """The whole webhook contract, framework-free: (status, JSON body) or a typed error.

    ``headers`` have lower-case names. Called by the FastAPI route below and by the ASGI fast
    path (``Ingress``) that serves the same URL in production without the framework's cost."""
    settings = state.settings
    if len(body) > settings.max_body_bytes:
        raise ApiError(413, "too_large", f"body over {settings.max_body_bytes} bytes")
    inbox = await inbox_info(inbox_id) if inbox_id <= MAX_ID else None
    if inbox is None:
        raise not_found("inbox", inbox_id)
    adapter = adapter_for(inbox.provider)
    webhook = WebhookRequest(
        method="POST", url=url, headers=headers, query=query, body=body, inbox_id=inbox.id
    )
    if adapter.blocking:
        await run_in_threadpool(adapter.verify, webhook, inbox.secrets, time.time())
        accepted = await run_in_threadpool(adapter.accept, webhook)
    else:
        adapter.verify(webhook, inbox.secrets, time.time())
        accepted = adapter.accept(webhook)
    ids: list[int | None] = []
    if accepted.payloads:
        deliveries = [journal.delivery(inbox.id, inbox.provider, p) for p in accepted.payloads]
        if accepted.replay_key:
            deliveries[0]["replay_key"] = accepted.replay_key
        ids = await state.batcher.submit(deliveries)
    if accepted.reply is not None:
        return 200, accepted.reply
    known = [i for i in ids if i is not None]
    # A replayed one-time token (Mailgun) was journaled the first time: nothing new here.
    return 202, {"accepted": len(known), "deliveries": known, "replay": len(known) < len(ids)}


@router.post(
    "/webhooks/{inbox_id}",
    status_code=202,
    summary="Inbound webhook of an inbox's provider",
    responses={401: {}, 404: {}, 413: {}, 422: {}, 503: {}},
)
async def receive(inbox_id: Id, request: Request) -> JSON:
    _check_declared_length(request.app.state.settings, request.headers.get("content-length"))
    status, out = await handle(
        request.app.state,
        inbox_id,
        str(request.url),
        {k.lower(): v for k, v in request.headers.items()},
        dict(request.query_params),
        await request.body(),
    )
    return JSON(out, status_code=status)


def _check_declared_length(settings: Any, declared: str | None) -> None:
    if declared and declared.isdigit() and int(declared) > settings.max_body_bytes:
        raise ApiError(413, "too_large", f"body over {settings.max_body_bytes} bytes")


class Ingress:
    """ASGI front: ``POST /webhooks/{id}`` straight to ``handle``; everything else to the app.

    Routing, dependency injection and request objects cost more than the webhook itself does;
    this path skips them (about twice the accepted requests per second on one core), and errors
    are rendered by the same mapping as the app's (api/errors.py)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    @property
    def state(self) -> Any:
        return self.app.state

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path: str = scope.get("path", "")
        if scope["type"] != "http" or scope["method"] != "POST" or not path.startswith(PREFIX):
            await self.app(scope, receive, send)
            return
        tail = path[len(PREFIX) :]
        # ASCII only: "²" is a digit to str.isdigit() but not to int(); the route answers it.
        if not (tail.isascii() and tail.isdigit()):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            _check_declared_length(self.state.settings, headers.get("content-length"))
            body = await _read_body(receive, self.state.settings.max_body_bytes)
            query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
            host = headers.get("host", "")
            url = f"{scope.get('scheme', 'http')}://{host}{scope.get('root_path', '')}{path}"
            if query:
                url += "?" + scope["query_string"].decode("latin-1")
            if len(tail) > len(str(MAX_ID)):  # no row has it, and int() refuses 4,300 digits
                raise not_found("inbox", tail[:20] + "…")
            status, out = await handle(self.state, int(tail), url, headers, query, body)
            extra: dict[str, str] = {}
        except Exception as exc:
            status, out, extra = errors.render(exc)
        await errors.send_json(send, status, out, extra)


PREFIX = "/webhooks/"


async def _read_body(receive: Any, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "too_large", f"body over {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
