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

from handlers.channels.base import (
    Accepted,
    PayloadError,
    SignatureError,
    WebhookRequest,
    configured,
    constant_time_equal,
    hmac_sha256_hex,
    stamped_signature,
    validated,
)
from schemas.inbound import GenericWebhook, InboundMessage

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
        secret = configured(secrets, "signing_secret")
        stamp, given = stamped_signature(request, now, TIMESTAMP_HEADER, SIGNATURE_HEADER)
        candidates = [part.strip() for part in given.split(",")]
        expected = sign(secret, int(stamp), request.body)
        if not any(constant_time_equal(candidate, expected) for candidate in candidates):
            raise SignatureError("signature does not match")

    def accept(self, request: WebhookRequest) -> Accepted:
        body = validated(GenericWebhook, request.body)
        # Refused here, while the sender waits for the answer, rather than a 202 and then a
        # dead letter in the worker (normalize checks it again for what the CLI enqueues).
        if request.inbox_id is not None:
            _check_inbox(body, request.inbox_id)
        return Accepted(payloads=[body.model_dump(mode="json")])

    def normalize(
        self, inbox_id: int, received_at: datetime, payload: dict[str, Any]
    ) -> list[InboundMessage]:
        body = validated(GenericWebhook, payload)
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
