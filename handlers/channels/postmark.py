"""Postmark inbound (JSON): https://postmarkapp.com/developer/webhooks/inbound-webhook

Authenticity: Postmark does not sign inbound webhooks; the documented protection is HTTP basic
auth in the webhook URL (``https://user:password@host/webhooks/<inbox>``). The inbox keeps
``basic_username`` and ``basic_password``; both are compared in constant time.

Postmark has already split the mail: addresses, subject and date are top-level fields, the other
headers (Message-ID, In-Reply-To, References, Auto-Submitted, …) are in ``Headers``, attachments
are base64. With "include raw email content" on, ``RawEmail`` is parsed instead.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from datetime import datetime
from email.utils import formataddr
from typing import Any

from pydantic import ValidationError

from handlers.channels import mail
from handlers.channels.base import (
    Accepted,
    PayloadError,
    SignatureError,
    WebhookRequest,
    check_basic_auth,
    describe,
)
from handlers.email.parse import from_parts, parse_raw
from schemas.email import ParsedEmail
from schemas.inbound import InboundMessage
from schemas.postmark import PostmarkAddress, PostmarkInbound


def _address(name: str, email: str) -> str:
    """``Name <email>``; ``formataddr`` refuses a non-ASCII address (RFC 6531), which Postmark
    passes on as the sender wrote it: then the name is quoted by hand and the address kept."""
    try:
        return formataddr((name, email))
    except UnicodeEncodeError:
        if not name:
            return email
        quoted = name.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{quoted}" <{email}>'


def _addresses(items: list[PostmarkAddress]) -> str:
    return ", ".join(_address(a.name, a.email) for a in items)


class PostmarkAdapter:
    name = "postmark"
    channels = frozenset({"email"})
    blocking = False

    def verify(self, request: WebhookRequest, secrets: Mapping[str, Any], now: float) -> None:
        user, password = secrets.get("basic_username"), secrets.get("basic_password")
        if not user or not password:
            raise SignatureError("inbox has no basic_username / basic_password configured")
        check_basic_auth(request, user, password)

    def accept(self, request: WebhookRequest) -> Accepted:
        try:
            body = PostmarkInbound.model_validate_json(request.body)
        except ValidationError as exc:
            raise PayloadError(describe(exc)) from None
        for attachment in body.attachments:
            _b64(attachment.content)  # judged here (422), not dead-lettered by the worker
        return Accepted(payloads=[body.model_dump(mode="json", by_alias=True)])

    def normalize(
        self, inbox_id: int, received_at: datetime, payload: dict[str, Any]
    ) -> list[InboundMessage]:
        try:
            body = PostmarkInbound.model_validate(payload)
        except ValidationError as exc:
            raise PayloadError(describe(exc)) from None

        def parse() -> tuple[ParsedEmail, list[bytes]]:
            if body.raw_email:
                return parse_raw(body.raw_email.encode("utf-8", "surrogateescape"))
            return from_parts(
                headers=self._headers(body),
                text=body.text_body or None,
                html=body.html_body or None,
                attachments=[
                    (
                        a.name,
                        a.content_type,
                        _b64(a.content),
                        a.content_id or None,
                        bool(a.content_id),
                    )
                    for a in body.attachments
                ],
            )

        return mail.one_message(
            parse,
            inbox_id=inbox_id,
            received_at=received_at,
            provider=self.name,
            provider_id=body.message_id,
            fallback_id=body.message_id.encode(),
        )

    @staticmethod
    def _headers(body: PostmarkInbound) -> list[tuple[str, str]]:
        given = [(h.name, h.value) for h in body.headers]
        present = {name.lower() for name, _ in given}
        top = [
            ("From", _address(body.from_full.name, body.from_full.email)),
            ("To", _addresses(body.to_full)),
            ("Cc", _addresses(body.cc_full)),
            ("Reply-To", body.reply_to),
            ("Subject", body.subject),
            ("Date", body.date),
        ]
        return [(n, v) for n, v in top if v and n.lower() not in present] + given


def _b64(content: str) -> bytes:
    try:
        return base64.b64decode(content, validate=False)
    except ValueError:  # binascii.Error, or text that is not ASCII
        raise PayloadError("an attachment's Content is not base64", field="Attachments") from None
