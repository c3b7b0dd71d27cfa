"""SendGrid Inbound Parse: https://www.twilio.com/docs/sendgrid/for-developers/parsing-email/setting-up-the-inbound-parse-webhook

A multipart form, in one of two modes: parsed (``headers`` as a raw header block, ``text``,
``html``, ``from``, ``to``, ``envelope`` and ``charsets`` as JSON, files ``attachment1``…) or
raw (``email``: the whole MIME message).

Authenticity: Inbound Parse does not sign its posts. The inbox keeps either ``url_secret`` (the
webhook URL then ends in ``?secret=<url_secret>``) or ``basic_username`` / ``basic_password``
(HTTP basic auth in the URL); each is compared in constant time. ``verify`` reads only the URL
and the headers, so a stranger's form is never parsed: ``accept`` parses it, after ``verify``
(api/webhooks.py), within INBOXSYNC_MAX_FORM_PARTS and INBOXSYNC_MAX_HEADER_LINES.
"""

from __future__ import annotations

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
    TooLarge,
    WebhookRequest,
    check_basic_auth,
    constant_time_equal,
)
from handlers.channels.forms import form_mail, line_count, parse_form
from schemas.inbound import InboundMessage
from settings import get_settings


class SendGridAdapter:
    name = "sendgrid"
    channels = frozenset({"email"})
    # Parsing a signed form of many megabytes takes seconds: in a thread, not on the event loop.
    blocking = True

    def verify(self, request: WebhookRequest, secrets: Mapping[str, Any], now: float) -> None:
        url_secret = secrets.get("url_secret")
        user, password = secrets.get("basic_username"), secrets.get("basic_password")
        if url_secret:
            if constant_time_equal(request.query.get("secret", ""), str(url_secret)):
                return
            raise SignatureError("missing or wrong ?secret= in the webhook URL")
        if user and password:
            check_basic_auth(request, user, password)
            return
        raise SignatureError("inbox has neither url_secret nor basic_username/basic_password")

    def accept(self, request: WebhookRequest) -> Accepted:
        form = parse_form(request.headers.get("content-type", ""), request.body)
        fields = form["fields"]
        if "email" not in fields and "headers" not in fields:
            raise PayloadError("neither email (raw mode) nor headers (parsed mode)")
        limit = get_settings().max_header_lines
        if "headers" in fields and line_count(fields["headers"].encode()) > limit:
            raise TooLarge(
                f"more than {limit} lines in headers (INBOXSYNC_MAX_HEADER_LINES)", field="headers"
            )
        return Accepted(payloads=[form])

    def normalize(
        self, inbox_id: int, received_at: datetime, payload: dict[str, Any]
    ) -> list[InboundMessage]:
        fields: dict[str, str] = payload.get("fields", {})
        return mail.one_message(
            lambda: form_mail(
                payload,
                raw_field="email",
                headers=_headers,
                text_field="text",
                html_field="html",
            ),
            inbox_id=inbox_id,
            received_at=received_at,
            provider=self.name,
            provider_id=None,
            fallback_id=(fields.get("email") or fields.get("headers", "")).encode(),
        )


def _headers(fields: dict[str, str]) -> list[tuple[str, str]]:
    """Parsed mode's ``headers`` field: the mail's raw header block."""
    block = HeaderParser(policy=compat32).parsestr(fields.get("headers", ""))
    return [(name, str(value)) for name, value in block.raw_items()]
