"""The generic JSON webhook: for any system that can post JSON and sign it.

Signature (Stripe-style, so a replayed request is refused after the tolerance window,
``INBOXSYNC_WEBHOOK_TOLERANCE_SECONDS``):
``X-Inboxsync-Timestamp: <unix seconds>`` and
``X-Inboxsync-Signature: v1=<hex HMAC-SHA256 of "<timestamp>." + body with the inbox's
signing_secret>``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from handlers.channels.base import (
    Accepted,
    PayloadError,
    SignatureError,
    WebhookRequest,
    constant_time_equal,
    describe,
    hmac_sha256_hex,
)
from schemas.inbound import GenericWebhook, InboundMessage
from settings import get_settings

TIMESTAMP_HEADER = "x-inboxsync-timestamp"
SIGNATURE_HEADER = "x-inboxsync-signature"


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The header value a sender puts in ``X-Inboxsync-Signature``."""
    return "v1=" + hmac_sha256_hex(secret, f"{timestamp}.".encode() + body)


class GenericAdapter:
    name = "generic"
    channels = frozenset({"email", "chat"})
    blocking = False

    def verify(self, request: WebhookRequest, secrets: Mapping[str, Any], now: float) -> None:
        secret = secrets.get("signing_secret")
        if not secret:
            raise SignatureError("inbox has no signing_secret configured")
        stamp = request.headers.get(TIMESTAMP_HEADER, "")
        given = request.headers.get(SIGNATURE_HEADER, "")
        if not stamp or not given:
            raise SignatureError(f"missing {TIMESTAMP_HEADER} or {SIGNATURE_HEADER} header")
        try:
            timestamp = int(stamp)
            age = abs(now - timestamp)  # OverflowError: an integer no float can hold
        except (ValueError, OverflowError):
            raise SignatureError(f"{TIMESTAMP_HEADER} is not a unix time") from None
        tolerance = get_settings().webhook_tolerance_seconds
        if age > tolerance:
            raise SignatureError(f"timestamp outside the {tolerance} s tolerance window")
        candidates = [part.strip() for part in given.split(",")]
        expected = sign(secret, timestamp, request.body)
        if not any(constant_time_equal(candidate, expected) for candidate in candidates):
            raise SignatureError("signature does not match")

    def accept(self, request: WebhookRequest) -> Accepted:
        try:
            body = GenericWebhook.model_validate_json(request.body)
        except ValidationError as exc:
            raise PayloadError(describe(exc)) from None
        # Refused here, while the sender waits for the answer, rather than a 202 and then a
        # dead letter in the worker (normalize checks it again for what the CLI enqueues).
        if request.inbox_id is not None:
            _check_inbox(body, request.inbox_id)
        return Accepted(payloads=[body.model_dump(mode="json")])

    def normalize(
        self, inbox_id: int, received_at: datetime, payload: dict[str, Any]
    ) -> list[InboundMessage]:
        try:
            body = GenericWebhook.model_validate(payload)
        except ValidationError as exc:
            raise PayloadError(describe(exc)) from None
        _check_inbox(body, inbox_id)
        return [
            InboundMessage(
                inbox_id=inbox_id,
                external_id=body.external_id,
                sender=body.sender,
                thread_key=body.thread_key,
                text=body.text,
                sent_at=body.sent_at,
                received_at=received_at,
            )
        ]


def _check_inbox(body: GenericWebhook, inbox_id: int) -> None:
    if body.inbox is not None and body.inbox != inbox_id:
        raise PayloadError(f"body names inbox {body.inbox}, URL inbox {inbox_id}", field="inbox")
