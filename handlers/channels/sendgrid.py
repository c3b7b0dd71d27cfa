"""SendGrid Inbound Parse: https://www.twilio.com/docs/sendgrid/for-developers/parsing-email/setting-up-the-inbound-parse-webhook

A multipart form, in one of two modes: parsed (``headers`` as a raw header block, ``text``,
``html``, ``from``, ``to``, ``envelope`` and ``charsets`` as JSON, files ``attachment1``…) or
raw (``email``: the whole MIME message).

Authenticity: Inbound Parse does not sign its posts. The inbox keeps either ``url_secret`` (the
webhook URL then ends in ``?secret=<url_secret>``) or ``basic_username`` / ``basic_password``
(HTTP basic auth in the URL); each is compared in constant time.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from datetime import datetime
from email.parser import HeaderParser
from email.policy import compat32
from typing import Any

from handlers.channels import mail
from handlers.channels.base import (
    Accepted,
    PayloadError,
    SignatureError,
    WebhookRequest,
    constant_time_equal,
)
from handlers.channels.forms import form_attachment, parse_form
from handlers.email.parse import UnparseableEmail, from_parts, parse_raw
from schemas.inbound import InboundMessage


class SendGridAdapter:
    name = "sendgrid"
    channels = frozenset({"email"})

    def verify(self, request: WebhookRequest, secrets: Mapping[str, Any], now: float) -> None:
        url_secret = secrets.get("url_secret")
        user, password = secrets.get("basic_username"), secrets.get("basic_password")
        if url_secret:
            if constant_time_equal(request.query.get("secret", ""), str(url_secret)):
                return
            raise SignatureError("missing or wrong ?secret= in the webhook URL")
        if user and password:
            scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
            try:
                given = base64.b64decode(encoded.strip(), validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                given = ""
            given_user, _, given_password = given.partition(":")
            ok = constant_time_equal(given_user, str(user)) & constant_time_equal(
                given_password, str(password)
            )
            if scheme.lower() == "basic" and ok:
                return
            raise SignatureError("missing or wrong basic auth credentials")
        raise SignatureError("inbox has neither url_secret nor basic_username/basic_password")

    def accept(self, request: WebhookRequest) -> Accepted:
        form = parse_form(request.headers.get("content-type", ""), request.body)
        fields = form["fields"]
        if "email" not in fields and "headers" not in fields:
            raise PayloadError("neither email (raw mode) nor headers (parsed mode)")
        return Accepted(payloads=[form])

    def normalize(
        self, inbox_id: int, received_at: datetime, payload: dict[str, Any]
    ) -> list[InboundMessage]:
        fields: dict[str, str] = payload.get("fields", {})
        try:
            if "email" in fields:
                raw = fields["email"].encode("utf-8", "surrogateescape")
                parsed, _contents = parse_raw(raw)
            else:
                block = HeaderParser(policy=compat32).parsestr(fields.get("headers", ""))
                parsed, _contents = from_parts(
                    headers=[(n, str(v)) for n, v in block.raw_items()],
                    text=fields.get("text"),
                    html=fields.get("html"),
                    attachments=[form_attachment(f) for f in payload.get("files", [])],
                )
        except UnparseableEmail as exc:
            raise PayloadError(f"unparseable mail: {exc}") from None
        return [
            mail.to_inbound(
                parsed,
                inbox_id=inbox_id,
                received_at=received_at,
                provider=self.name,
                provider_id=None,
                fallback_id=(fields.get("email") or fields.get("headers", "")).encode(),
            )
        ]
