"""Mailgun inbound routes: https://documentation.mailgun.com/docs/mailgun/user-manual/receive-forward-store/

Two forms, both posted as HTML forms: the parsed one (``body-plain``, ``stripped-text``,
``body-html``, ``message-headers`` as JSON, attachments as files ``attachment-N``) and, when the
route URL ends in ``mime``, the raw one (``body-mime``).

Authenticity: ``signature`` = hex HMAC-SHA256 of ``timestamp + token`` with the inbox's
``signing_key``; ``timestamp`` must be within the tolerance window, and a ``token`` is remembered
for that window (the journal refuses a second delivery with the same token: a replayed request
is answered 2xx and stores nothing).
"""

from __future__ import annotations

import json
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
    hmac_sha256_hex,
)
from handlers.channels.forms import form_mail, parse_form
from schemas.inbound import InboundMessage


def sign(signing_key: str, timestamp: str, token: str) -> str:
    """What Mailgun puts in ``signature``."""
    return hmac_sha256_hex(signing_key, (timestamp + token).encode())


class MailgunAdapter:
    name = "mailgun"
    channels = frozenset({"email"})
    blocking = False

    def __init__(self, tolerance_seconds: int = 300) -> None:
        self.tolerance_seconds = tolerance_seconds

    def verify(self, request: WebhookRequest, secrets: Mapping[str, Any], now: float) -> None:
        key = secrets.get("signing_key")
        if not key:
            raise SignatureError("inbox has no signing_key configured")
        try:
            fields = parse_form(request.headers.get("content-type", ""), request.body)["fields"]
        except PayloadError as exc:
            raise SignatureError(f"no signature to check: {exc}") from None
        timestamp, token = fields.get("timestamp", ""), fields.get("token", "")
        signature = fields.get("signature", "")
        if not (timestamp and token and signature):
            raise SignatureError("missing timestamp, token or signature")
        try:
            age = abs(now - int(timestamp))
        except ValueError:
            raise SignatureError("timestamp is not an integer") from None
        if age > self.tolerance_seconds:
            raise SignatureError(f"timestamp outside the {self.tolerance_seconds} s window")
        if not constant_time_equal(signature, sign(str(key), timestamp, token)):
            raise SignatureError("signature does not match")

    def accept(self, request: WebhookRequest) -> Accepted:
        form = parse_form(request.headers.get("content-type", ""), request.body)
        fields = form["fields"]
        if "body-mime" not in fields and "message-headers" not in fields:
            raise PayloadError("neither body-mime nor message-headers: not a Mailgun route post")
        return Accepted(payloads=[form], replay_key=f"mailgun:{fields.get('token', '')}")

    def normalize(
        self, inbox_id: int, received_at: datetime, payload: dict[str, Any]
    ) -> list[InboundMessage]:
        fields: dict[str, str] = payload.get("fields", {})
        return mail.one_message(
            lambda: form_mail(
                payload,
                raw_field="body-mime",
                headers=_headers,
                text_field="body-plain",
                html_field="body-html",
            ),
            inbox_id=inbox_id,
            received_at=received_at,
            provider=self.name,
            provider_id=fields.get("token"),
            fallback_id=json.dumps(fields, sort_keys=True).encode(),
        )


def _headers(fields: Mapping[str, str]) -> list[tuple[str, str]]:
    try:
        pairs = json.loads(fields.get("message-headers", "[]"))
    except json.JSONDecodeError:
        raise PayloadError("message-headers is not JSON", field="message-headers") from None
    headers = [(str(p[0]), str(p[1])) for p in pairs if isinstance(p, list) and len(p) == 2]
    present = {name.lower() for name, _ in headers}
    for name, field in (("From", "from"), ("Subject", "subject")):
        if name.lower() not in present and fields.get(field):
            headers.append((name, fields[field]))
    return headers
