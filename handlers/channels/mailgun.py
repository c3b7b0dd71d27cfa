"""Mailgun inbound routes: https://documentation.mailgun.com/docs/mailgun/user-manual/receive-forward-store/

Two forms, both posted as HTML forms: the parsed one (``body-plain``, ``stripped-text``,
``body-html``, ``message-headers`` as JSON, attachments as files ``attachment-N``) and, when the
route URL ends in ``mime``, the raw one (``body-mime``).

Authenticity: ``signature`` = hex HMAC-SHA256 of ``timestamp + token`` with the inbox's
``signing_key``; ``timestamp`` must be within the tolerance window
(``INBOXSYNC_WEBHOOK_TOLERANCE_SECONDS``), and a ``token`` is remembered for that window (the
journal refuses a second delivery with the same token: a replayed request is answered 2xx and
stores nothing). The three fields are read by a scan of the form's part headers
(forms.signature_fields), each once; the form is parsed only after they check out.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pydantic import TypeAdapter, ValidationError

from handlers.channels import mail
from handlers.channels.base import (
    Accepted,
    PayloadError,
    SignatureError,
    TooLarge,
    WebhookRequest,
    constant_time_equal,
    describe,
    hmac_sha256_hex,
)
from handlers.channels.forms import form_mail, parse_form, signature_fields
from schemas.inbound import InboundMessage
from settings import get_settings

SIGNED = ("timestamp", "token", "signature")
# Mailgun's ``message-headers``: a JSON list of [name, value] pairs of strings, nothing deeper.
HEADER_PAIRS: TypeAdapter[list[tuple[str, str]]] = TypeAdapter(list[tuple[str, str]])


def sign(signing_key: str, timestamp: str, token: str) -> str:
    """What Mailgun puts in ``signature``."""
    return hmac_sha256_hex(signing_key, (timestamp + token).encode())


class MailgunAdapter:
    name = "mailgun"
    channels = frozenset({"email"})
    # Parsing a signed form of many megabytes takes seconds: in a thread, not on the event loop.
    blocking = True

    def verify(self, request: WebhookRequest, secrets: Mapping[str, Any], now: float) -> None:
        key = secrets.get("signing_key")
        if not key:
            raise SignatureError("inbox has no signing_key configured")
        try:
            fields = _signature_fields(request)
        except PayloadError as exc:
            raise SignatureError(f"no signature to check: {exc}") from None
        if missing := [name for name in SIGNED if not fields.get(name)]:
            raise SignatureError(
                f"no {', '.join(missing)} among the form's first "
                f"{get_settings().max_form_parts} parts (INBOXSYNC_MAX_FORM_PARTS)"
            )
        timestamp, token, signature = (fields[name] for name in SIGNED)
        tolerance = get_settings().webhook_tolerance_seconds
        try:
            age = abs(now - int(timestamp))
        except (ValueError, OverflowError):  # OverflowError: an integer no float can hold
            raise SignatureError("timestamp is not a unix time") from None
        if age > tolerance:
            raise SignatureError(f"timestamp outside the {tolerance} s window")
        if not constant_time_equal(signature, sign(str(key), timestamp, token)):
            raise SignatureError("signature does not match")

    def accept(self, request: WebhookRequest) -> Accepted:
        form = parse_form(request.headers.get("content-type", ""), request.body)
        fields = form["fields"]
        if "body-mime" not in fields and "message-headers" not in fields:
            raise PayloadError("neither body-mime nor message-headers: not a Mailgun route post")
        if "message-headers" in fields:
            _check_message_headers(fields["message-headers"])
        # The token verify checked, read the way verify read it: the parser could see another.
        token = _signature_fields(request).get("token", "")
        return Accepted(payloads=[form], replay_key=f"mailgun:{token}")

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


def _signature_fields(request: WebhookRequest) -> dict[str, str]:
    return signature_fields(
        request.headers.get("content-type", ""),
        request.body,
        frozenset(SIGNED),
        max_parts=get_settings().max_form_parts,
    )


def _check_message_headers(raw: str) -> None:
    """Refused at the edge, not dead-lettered in the worker: ``message-headers`` that is not a
    list of [name, value] string pairs (422), or longer than INBOXSYNC_MAX_HEADER_LINES (413)."""
    try:
        pairs = HEADER_PAIRS.validate_json(raw)
    except ValidationError as exc:
        raise PayloadError(
            f"message-headers is not a JSON list of [name, value] pairs: {describe(exc)}",
            field="message-headers",
        ) from None
    limit = get_settings().max_header_lines
    if len(pairs) > limit:
        raise TooLarge(
            f"more than {limit} message-headers (INBOXSYNC_MAX_HEADER_LINES)",
            field="message-headers",
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
