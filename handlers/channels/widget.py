"""The website chat widget: a site's server relays its widget's events (format: schemas/widget.py).

Authenticity: Standard Webhooks (https://www.standardwebhooks.com/, spec "Verifying webhook
authenticity"), checked here rather than by the ``standardwebhooks`` package's ``verify``, which
fixes its window at five minutes and raises on malformed headers: the expected signature is
computed with its ``Webhook.sign``; the window is ``INBOXSYNC_WEBHOOK_TOLERANCE_SECONDS``; any
of several space-separated signatures may match, compared in constant time; a missing or
malformed header, a secret that is not base64, a body that is not UTF-8 are all a plain 401.

Retries: the site retries an event with the same ``webhook-id``. Within the signature window the
id is a one-time token (``Accepted.replay_key``): the retry is answered 2xx and not journaled.
Later retries (Standard Webhooks senders retry for hours) are journaled and stored once all the
same, by identities that never expire: a message's ``widget:<session_id>:<message_id>``, an
edit's or deletion's event id ``widget:<webhook-id>``, a reply status's forward-only state.

- Thread key ``widget:<session_id>``: one chat session, one conversation.
- Sender: the visitor's email when the site knows it (the visitor is then that email's contact,
  whose mail threads meet their chats), else ``widget:<visitor id>``.
- Attachments are URLs on the site's hosts: fetched by the worker from the hosts the operator
  allows for ``widget`` (``INBOXSYNC_MEDIA_HOSTS``); none by default.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from handlers.channels.base import (
    Accepted,
    SignatureError,
    WebhookRequest,
    configured,
    constant_time_equal,
    validated,
)
from handlers.outbound.widget import ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from schemas.inbound import DeliveryUpdate, InboundMessage, MediaRef, MessageEdit, Normalized
from schemas.widget import (
    MessageDeletedEvent,
    MessageEditedEvent,
    MessageEvent,
    WidgetDeletion,
    WidgetDelivery,
    WidgetEdit,
    WidgetMessage,
    WidgetWebhook,
)
from settings import get_settings

MAX_ID_LENGTH = 256
MAX_SIGNATURES = 10


class WidgetAdapter:
    name = "widget"
    channels = frozenset({"chat"})
    blocking = False

    def verify(self, request: WebhookRequest, secrets: Mapping[str, Any], now: float) -> None:
        secret = configured(secrets, "signing_secret")
        webhook_id, stamp, given = (
            request.headers.get(h, "") for h in (ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER)
        )
        if not webhook_id or not stamp or not given:
            raise SignatureError(f"missing {ID_HEADER}, {TIMESTAMP_HEADER} or {SIGNATURE_HEADER}")
        _check_id(webhook_id)
        # Digits only: int() would also take "+1_700_000_000" and " 17".
        if not (stamp.isascii() and stamp.isdigit() and len(stamp) <= 12):
            raise SignatureError(f"{TIMESTAMP_HEADER} is not unix seconds")
        tolerance = get_settings().webhook_tolerance_seconds
        if abs(now - int(stamp)) > tolerance:
            raise SignatureError(f"{TIMESTAMP_HEADER} outside the {tolerance} s tolerance window")
        try:
            expected = sign(secret, webhook_id, int(stamp), request.body)
        except ValueError as exc:  # the secret, or a body that is not UTF-8
            raise SignatureError(f"cannot check the signature: {_reason(exc)}") from None
        candidates = given.split()[:MAX_SIGNATURES]
        if not any(constant_time_equal(candidate, expected) for candidate in candidates):
            raise SignatureError("no signature matches")

    def accept(self, request: WebhookRequest) -> Accepted:
        event = validated(WidgetWebhook, request.body)
        given_id = request.headers.get(ID_HEADER)
        webhook_id = given_id or "sha256:" + hashlib.sha256(request.body).hexdigest()
        delivery = WidgetDelivery(webhook_id=webhook_id, event=event)
        return Accepted(
            payloads=[delivery.model_dump(mode="json")],
            replay_key=f"widget:{given_id}" if given_id else None,
        )

    def normalize(
        self, inbox_id: int, received_at: datetime, payload: dict[str, Any]
    ) -> Sequence[Normalized]:
        delivery = WidgetDelivery.model_validate(payload)
        event = delivery.event.root
        if isinstance(event, MessageEvent):
            return [_inbound(inbox_id, received_at, event.data)]
        if isinstance(event, MessageEditedEvent):
            edit = event.data
            return [_revision(inbox_id, received_at, delivery.webhook_id, edit, edit.edited_at)]
        if isinstance(event, MessageDeletedEvent):
            gone = event.data
            return [_revision(inbox_id, received_at, delivery.webhook_id, gone, gone.deleted_at)]
        status = event.data
        return [
            DeliveryUpdate(
                inbox_id=inbox_id,
                provider_message_id=status.client_id,
                state=status.state,
                error=_clean(status.error) if status.error else None,
                at=status.at,
            )
        ]


def _revision(
    inbox_id: int,
    received_at: datetime,
    webhook_id: str,
    target: WidgetEdit | WidgetDeletion,
    at: datetime,
) -> MessageEdit:
    """An edit (``WidgetEdit``) or a deletion of a visitor's message; the event's identity is
    its ``webhook-id``, the same on every retry."""
    deleted = isinstance(target, WidgetDeletion)
    return MessageEdit(
        inbox_id=inbox_id,
        external_id=_identity(target.session_id, target.message_id),
        event_id=f"widget:{webhook_id}",
        text=None if isinstance(target, WidgetDeletion) else _clean(target.text),
        deleted=deleted,
        edited_at=at,
        received_at=received_at,
    )


def _check_id(webhook_id: str) -> None:
    """Printable ASCII, bounded: it becomes a replay key and an event id."""
    if len(webhook_id) > MAX_ID_LENGTH or not all(" " < c <= "~" for c in webhook_id):
        raise SignatureError(f"{ID_HEADER} must be 1-{MAX_ID_LENGTH} printable ASCII characters")


def _reason(exc: ValueError) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return "the body is not UTF-8"
    return f"the inbox's signing_secret is {exc}"


def _identity(session_id: str, message_id: str) -> str:
    return f"widget:{session_id}:{message_id}"


def _clean(text: str) -> str:
    # PostgreSQL text cannot hold NUL; in a visitor's text it is noise, not meaning.
    return text.replace("\x00", "\ufffd")


def _sender(message: WidgetMessage) -> str:
    email = message.visitor.email
    if email:
        local, _, domain = email.rpartition("@")
        return f"{local}@{domain.lower()}"
    return f"widget:{message.visitor.id}"


def _inbound(inbox_id: int, received_at: datetime, message: WidgetMessage) -> InboundMessage:
    visitor = message.visitor
    chat: dict[str, Any] = {
        "provider": "widget",
        "reply_to": {"session_id": message.session_id},
        "visitor_id": visitor.id,
    }
    return InboundMessage(
        inbox_id=inbox_id,
        external_id=_identity(message.session_id, message.message_id),
        provider_id=message.message_id,
        sender=_clean(_sender(message)),
        thread_key=f"widget:{message.session_id}",
        contact_name=_clean(visitor.name) if visitor.name else None,
        text=_clean(message.text),
        sent_at=message.sent_at,
        received_at=received_at,
        headers={"chat": chat},
        media=[
            MediaRef(url=a.url, content_type=a.content_type, filename=a.filename)
            for a in message.attachments
        ],
    )
