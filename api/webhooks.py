"""``POST /webhooks/{inbox_id}``: verify, accept, enqueue, answer. No database write here.

The inbox's provider adapter (handlers/channels) verifies the signature before anything is
parsed, then turns the body into payloads; the batcher (api/batcher.py) puts them on the broker.
202 means durably queued; 503 means the broker refused and the provider should retry.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from api import errors
from api.errors import ApiError, not_found
from handlers import journal
from handlers.channels import adapter_for
from handlers.channels.base import ChannelAdapter, SignatureError, WebhookRequest, methods_of
from observability import logs, metrics
from schemas.types import MAX_ID, Id
from schemas.widget import webhook_request_body
from store.db import reading
from store.models import Inbox

router = APIRouter(tags=["webhooks"])
log = logging.getLogger(__name__)
access = logging.getLogger("inboxsync.access")

INBOX_CACHE_SECONDS = 30.0


@dataclass(frozen=True)
class InboxInfo:
    id: int
    provider: str
    secrets: dict[str, Any]
    # While its secrets rotate: the ones replaced, accepted too until retired.
    previous_secrets: dict[str, Any] | None = None


_inboxes: dict[int, tuple[float, InboxInfo]] = {}
_loading: dict[int, asyncio.Future[InboxInfo | None]] = {}


def _load_inbox(inbox_id: int) -> InboxInfo | None:
    with reading() as session:
        inbox = session.get(Inbox, inbox_id)
        if inbox is None:
            return None
        previous = dict(inbox.previous_secrets) if inbox.previous_secrets else None
        return InboxInfo(inbox.id, inbox.provider, dict(inbox.secrets), previous)


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


@dataclass(frozen=True)
class Answer:
    """What a webhook request is answered: JSON ``body``, or ``text`` (a handshake)."""

    status: int
    body: Any = None
    text: str | None = None
    text_type: str = "text/plain; charset=utf-8"

    def render(self) -> tuple[bytes, bytes]:
        """(content type, bytes)."""
        if self.text is not None:
            return self.text_type.encode(), self.text.encode()
        return b"application/json", orjson.dumps(self.body, option=orjson.OPT_UTC_Z)


async def handle(
    state: Any,
    inbox_id: int,
    url: str,
    headers: dict[str, str],
    query: dict[str, str],
    body: bytes,
    method: str = "POST",
) -> Answer:
    """The whole webhook contract, framework-free: an ``Answer`` or a typed error.

    ``headers`` have lower-case names. Called by the FastAPI routes below and by the ASGI fast
    path (``Ingress``) that serves the same URL in production without the framework's cost."""
    settings = state.settings
    if len(body) > settings.max_body_bytes:
        raise ApiError(413, "too_large", f"body over {settings.max_body_bytes} bytes")
    inbox = await inbox_info(inbox_id) if inbox_id <= MAX_ID else None
    if inbox is None:
        raise not_found("inbox", inbox_id)
    adapter = adapter_for(inbox.provider)
    if method not in methods_of(adapter):
        allow = ", ".join(sorted(methods_of(adapter)))
        raise ApiError(
            405,
            "method_not_allowed",
            f"{inbox.provider} webhooks take no {method}",
            headers={"Allow": allow},
        )
    webhook = WebhookRequest(
        method=method, url=url, headers=headers, query=query, body=body, inbox_id=inbox.id
    )
    if adapter.blocking:
        await run_in_threadpool(_verify, adapter, webhook, inbox)
        accepted = await run_in_threadpool(adapter.accept, webhook)
    else:
        _verify(adapter, webhook, inbox)
        accepted = adapter.accept(webhook)
    ids: list[int | None] = []
    if accepted.payloads:
        deliveries = [journal.delivery(inbox.id, inbox.provider, p) for p in accepted.payloads]
        if accepted.replay_key:
            deliveries[0]["replay_key"] = accepted.replay_key
        ids = await state.batcher.submit(deliveries)
    if accepted.reply_text is not None:
        return Answer(
            accepted.status or 200, text=accepted.reply_text, text_type=accepted.reply_type
        )
    if accepted.reply is not None:
        return Answer(accepted.status or 200, accepted.reply)
    known = [i for i in ids if i is not None]
    # A replayed one-time token (Mailgun) was journaled the first time: nothing new here.
    out = {"accepted": len(known), "deliveries": known, "replay": len(known) < len(ids)}
    return Answer(accepted.status or 202, out)


def _verify(adapter: ChannelAdapter, webhook: WebhookRequest, inbox: InboxInfo) -> None:
    """The inbox's current secrets, then its previous ones while a rotation is in progress
    (handlers/admin.py rotate_secrets). Refused by both: the current secrets' reason."""
    now = time.time()
    try:
        adapter.verify(webhook, inbox.secrets, now)
        return
    except SignatureError as exc:
        if not inbox.previous_secrets:
            raise
        refused = exc
    try:
        adapter.verify(webhook, inbox.previous_secrets, now)
    except SignatureError:
        raise refused from None


async def observed(
    state: Any,
    inbox_id: int,
    url: str,
    headers: dict[str, str],
    query: dict[str, str],
    body: bytes,
    method: str = "POST",
) -> Answer:
    """``handle``, counted and logged the same way on both paths (the fast ingress skips the
    app's middleware): one access line with the request id and the deliveries it made, the
    webhook counter by provider and code, and a refused signature logged with the inbox, the
    provider and the reason, never the secret or the signature."""
    started = time.monotonic()
    request_id = headers.get("x-request-id") or uuid.uuid4().hex
    cached = _inboxes.get(inbox_id)
    provider = cached[1].provider if cached else "unknown"
    with logs.bind(request_id=request_id[:64], inbox_id=inbox_id):
        try:
            answer = await handle(state, inbox_id, url, headers, query, body, method)
        except Exception as exc:
            status = errors.render(exc, quiet=True)[0]
            if isinstance(exc, SignatureError):
                provider = _provider_of(inbox_id, provider)
                if metrics.enabled():
                    metrics.SIGNATURE_FAILURES.labels(provider).inc()
                log.warning(
                    "webhook refused", extra={"fields": {"provider": provider, "reason": str(exc)}}
                )
            _done(state, method, inbox_id, provider, status, started, [])
            raise
        provider = _provider_of(inbox_id, provider)
        ids = answer.body.get("deliveries", []) if isinstance(answer.body, dict) else []
        _done(state, method, inbox_id, provider, answer.status, started, ids)
        return answer


def _provider_of(inbox_id: int, known: str) -> str:
    cached = _inboxes.get(inbox_id)
    return cached[1].provider if cached else known


def _done(
    state: Any,
    method: str,
    inbox_id: int,
    provider: str,
    status: int,
    started: float,
    delivery_ids: list[int],
) -> None:
    if metrics.enabled():
        metrics.WEBHOOKS.labels(provider, str(status)).inc()
    if state.settings.access_log:
        took = (time.monotonic() - started) * 1000
        access.info(
            "%s /webhooks/%s %s %.1fms",
            method,
            inbox_id,
            status,
            took,
            extra={"delivery_ids": delivery_ids or None, "fields": {"provider": provider}},
        )


@router.post(
    "/webhooks/{inbox_id}",
    status_code=202,
    summary="Inbound webhook of an inbox's provider",
    responses={401: {}, 403: {}, 404: {}, 413: {}, 422: {}, 503: {}},
    openapi_extra={"requestBody": webhook_request_body()},
)
async def receive(inbox_id: Id, request: Request) -> Response:
    _check_declared_length(request.app.state.settings, request.headers.get("content-length"))
    answer = await observed(
        request.app.state,
        inbox_id,
        str(request.url),
        {k.lower(): v for k, v in request.headers.items()},
        dict(request.query_params),
        await request.body(),
    )
    return _response(answer)


@router.get(
    "/webhooks/{inbox_id}",
    summary="A provider's subscription handshake (WhatsApp Cloud's hub.challenge)",
    responses={200: {"content": {"text/plain": {}}}, 401: {}, 403: {}, 404: {}, 405: {}},
)
async def handshake(inbox_id: Id, request: Request) -> Response:
    answer = await observed(
        request.app.state,
        inbox_id,
        str(request.url),
        {k.lower(): v for k, v in request.headers.items()},
        dict(request.query_params),
        b"",
        method="GET",
    )
    return _response(answer)


def _response(answer: Answer) -> Response:
    media_type, content = answer.render()
    return Response(content, status_code=answer.status, media_type=media_type.decode())


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
            answer = await observed(self.state, int(tail), url, headers, query, body)
        except Exception as exc:
            status, out, extra = errors.render(exc)
            await errors.send_json(send, status, out, extra)
            return
        if answer.text is None:
            await errors.send_json(send, answer.status, answer.body)
            return
        media_type, content = answer.render()
        raw_headers = [(b"content-type", media_type), (b"content-length", b"%d" % len(content))]
        await send({"type": "http.response.start", "status": answer.status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": content})


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
