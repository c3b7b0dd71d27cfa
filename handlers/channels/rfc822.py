"""Raw RFC 5322 mail posted as ``message/rfc822``: for any MTA, relay or import script.

Authenticity: ``Authorization: Bearer <secret>`` where the secret is the inbox's
``bearer_secret``, compared in constant time. The body is the whole mail, bytes as received; it is
enqueued base64-encoded and parsed in the worker (handlers/email/parse.py).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from handlers.channels import mail
from handlers.channels.base import (
    Accepted,
    PayloadError,
    SignatureError,
    WebhookRequest,
    constant_time_equal,
)
from handlers.email.parse import parse_raw
from schemas.inbound import InboundMessage

CONTENT_TYPES = ("message/rfc822", "application/octet-stream", "text/plain")


class Rfc822Adapter:
    name = "rfc822"
    channels = frozenset({"email"})
    saved_content_type = "message/rfc822"  # what `inboxsync ingest` posts a saved file as
    blocking = False

    def verify(self, request: WebhookRequest, secrets: Mapping[str, Any], now: float) -> None:
        secret = secrets.get("bearer_secret")
        if not secret:
            raise SignatureError("inbox has no bearer_secret configured")
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not constant_time_equal(given.strip(), str(secret)):
            raise SignatureError("missing or wrong bearer secret")

    def accept(self, request: WebhookRequest) -> Accepted:
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind not in CONTENT_TYPES:
            raise PayloadError(
                f"content type {kind or 'none'!r}: post the mail as message/rfc822",
                field="content-type",
            )
        if not request.body.strip():
            raise PayloadError("empty body: post the whole mail, headers and body")
        return Accepted(payloads=[{"raw": base64.b64encode(request.body).decode()}])

    def normalize(
        self, inbox_id: int, received_at: datetime, payload: dict[str, Any]
    ) -> list[InboundMessage]:
        try:
            raw = base64.b64decode(payload["raw"], validate=True)
        except (KeyError, TypeError, binascii.Error) as exc:
            raise PayloadError(f"payload has no base64 'raw' mail: {exc}") from None
        return mail.one_message(
            lambda: parse_raw(raw),
            inbox_id=inbox_id,
            received_at=received_at,
            provider=self.name,
            provider_id=None,
            fallback_id=raw,
        )
