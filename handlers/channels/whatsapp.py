"""WhatsApp Cloud API webhooks (Meta's Graph API; inbox ``channel: "chat"``).

- Subscription (GET): Meta calls the webhook URL with ``hub.mode=subscribe``,
  ``hub.verify_token`` and ``hub.challenge``; the token must equal the inbox secret
  ``verify_token`` (else 403), and the challenge is answered as plain text
  (https://developers.facebook.com/documentation/business-messaging/whatsapp/webhooks/create-webhook-endpoint).
- Authenticity (POST): ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body with the
  app secret>``, the inbox secret ``app_secret``, compared in constant time before the body is
  parsed. Meta signs no time: a replayed post stores nothing new (ids below, statuses only move
  forward, edits applied once).
- One post may carry several messages and statuses (of several numbers of the business): one
  payload each. Answered 200, as Meta asks; Meta retries what it got no 2xx for.

Messages (``entry[].changes[].value.messages[]``, ``field: "messages"``):

- identity ``whatsapp:<wamid>`` (a retry is stored once); sender: the E.164 of the ``wa_id``
  (handlers/channels/phones.py), so it is the same contact as their SMS through Twilio; thread
  key ``whatsapp:<phone_number_id>:<wa_id>``: one conversation per customer and business number
  (one app's webhook receives every number of the business; a reply must come from the number
  the customer wrote to, kept in ``reply_to``); contact name from ``contacts[].profile.name``;
- text, a caption, a button or list choice, a location: the message's text;
- image, video, audio, document, sticker: a media id, fetched in the worker in two steps
  (``fetch_media``): ``GET {api_url}/{media id}`` with the access token gives a short-lived URL on
  ``lookaside.fbsbx.com``, fetched with the same token. The worker reads the token from the inbox
  secrets (``access_token``, and ``api_url``, default https://graph.facebook.com/v21.0): give the
  token of the outbound setting there too;
- ``edit`` and ``revoke`` (WhatsApp Business app numbers on Cloud API, "coexistence"): an edit of
  ``original_message_id`` (event id: the edit's own wamid, in the order of its ``timestamp``), or
  its deletion (final);
- reactions, system notices (a customer changed number) and ``unsupported`` messages are
  answered 200 and not kept.

Statuses (``value.statuses[]``): ``sent``, ``delivered``, ``read``, ``failed`` (with the first
error's code and title) of one of our replies, by its wamid.

What the business sends itself is never a customer message: Cloud API reports it as statuses,
and what the WhatsApp Business app sends arrives under another field (``smb_message_echoes``),
not read.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydantic import TypeAdapter, ValidationError

from handlers.channels.base import (
    Accepted,
    Forbidden,
    PayloadError,
    SignatureError,
    WebhookRequest,
    configured,
    constant_time_equal,
    hmac_sha256_hex,
    validated,
)
from handlers.channels.phones import e164
from schemas.inbound import DeliveryUpdate, InboundMessage, MediaRef, MessageEdit, Normalized
from schemas.whatsapp import (
    WaItem,
    WaMedia,
    WaMediaAnswer,
    WaMessage,
    WaMessageItem,
    WaStatusItem,
    WaValue,
    WaWebhook,
)

if TYPE_CHECKING:
    from handlers.media import Get

SIGNATURE_HEADER = "x-hub-signature-256"
DEFAULT_API_URL = "https://graph.facebook.com/v21.0"
ITEM: TypeAdapter[WaMessageItem | WaStatusItem] = TypeAdapter(WaItem)
# The kinds of file a message may carry, with the type to assume when Meta gives none.
MEDIA_KINDS = {
    "image": "image/jpeg",
    "video": "video/mp4",
    "audio": "audio/ogg",
    "document": "application/octet-stream",
    "sticker": "image/webp",
}
STORED_TYPES = frozenset({"text", "location", "interactive", "button", *MEDIA_KINDS})
EDIT_TYPES = frozenset({"edit", "revoke"})
STATES = frozenset({"sent", "delivered", "read", "failed"})
MAX_CHALLENGE = 500


def sign(app_secret: str, body: bytes) -> str:
    """What Meta puts in ``X-Hub-Signature-256``."""
    return "sha256=" + hmac_sha256_hex(app_secret, body)


class WhatsAppAdapter:
    name = "whatsapp"
    channels = frozenset({"chat"})
    blocking = False
    methods = frozenset({"GET", "POST"})
    media_hosts = (r"graph\.facebook\.com", r"lookaside\.fbsbx\.com")

    def verify(self, request: WebhookRequest, secrets: Mapping[str, Any], now: float) -> None:
        if request.method == "GET":
            _verify_subscription(request, secrets)
            return
        secret = configured(secrets, "app_secret")
        given = request.headers.get(SIGNATURE_HEADER, "").strip()
        if not given.startswith("sha256="):
            raise SignatureError("missing or malformed X-Hub-Signature-256 header")
        if not constant_time_equal(given.lower(), sign(secret, request.body)):
            raise SignatureError("signature does not match")

    def accept(self, request: WebhookRequest) -> Accepted:
        if request.method == "GET":
            challenge = request.query.get("hub.challenge", "")
            if not challenge or len(challenge) > MAX_CHALLENGE or not challenge.isprintable():
                raise PayloadError(
                    "hub.challenge missing or not a short text", field="hub.challenge"
                )
            return Accepted(reply_text=challenge, status=200)
        webhook = validated(WaWebhook, request.body)
        if webhook.object != "whatsapp_business_account":
            raise PayloadError(f"object is {webhook.object!r}, not whatsapp_business_account")
        items = [item.model_dump(mode="json", by_alias=True) for item in _items(webhook)]
        # Meta asks for 200 (not 202) to every notification.
        return Accepted(payloads=items, status=200)

    def normalize(
        self, inbox_id: int, received_at: datetime, payload: dict[str, Any]
    ) -> Sequence[Normalized]:
        item = ITEM.validate_python(payload)
        if isinstance(item, WaStatusItem):
            return _delivery_update(inbox_id, item)
        message = item.message
        if message.type == "edit" and message.edit is not None:
            return _edit(inbox_id, received_at, message)
        if message.type == "revoke" and message.revoke is not None:
            return [_deletion(inbox_id, received_at, message)]
        if message.type in STORED_TYPES:
            return [_inbound(inbox_id, received_at, item)]
        return []

    def fetch_media(self, ref: MediaRef, secrets: Mapping[str, Any], get: Get) -> tuple[bytes, str]:
        """Two steps: the media id's URL, then the file, both with the access token."""
        from handlers.media import MediaError  # handlers.media imports the senders, and so this

        token = str(secrets.get("access_token") or "")
        if not token or not ref.provider_ref:
            raise MediaError("the inbox has no access_token secret to fetch WhatsApp media with")
        api = str(secrets.get("api_url") or DEFAULT_API_URL).rstrip("/")
        auth = {"Authorization": f"Bearer {token}"}
        raw, _ = get(f"{api}/{ref.provider_ref}", auth)
        try:
            found = WaMediaAnswer.model_validate(json.loads(raw))
        except (ValueError, ValidationError):
            raise MediaError("the media lookup answered without a url") from None
        data, content_type = get(found.url, auth)
        return data, content_type or found.mime_type or ref.content_type


def _verify_subscription(request: WebhookRequest, secrets: Mapping[str, Any]) -> None:
    expected = configured(secrets, "verify_token")
    if request.query.get("hub.mode") != "subscribe":
        raise Forbidden("hub.mode is not subscribe", field="hub.mode")
    if not constant_time_equal(request.query.get("hub.verify_token", ""), expected):
        raise Forbidden("hub.verify_token does not match", field="hub.verify_token")


def _items(webhook: WaWebhook) -> list[WaMessageItem | WaStatusItem]:
    """The messages and statuses worth journaling, one item each."""
    items: list[WaMessageItem | WaStatusItem] = []
    for entry in webhook.entry:
        for change in entry.changes:
            if change.field != "messages":
                continue  # smb_message_echoes (our own messages), templates, account news
            value = validated(WaValue, change.value)
            number = value.metadata
            contacts = {c.wa_id: c for c in value.contacts}
            for message in value.messages:
                if message.type in STORED_TYPES or message.type in EDIT_TYPES:
                    items.append(
                        WaMessageItem(
                            phone_number_id=number.phone_number_id,
                            display_phone_number=number.display_phone_number,
                            contact=contacts.get(message.from_),
                            message=message,
                        )
                    )
            items += [
                WaStatusItem(phone_number_id=number.phone_number_id, status=status)
                for status in value.statuses
                if status.status in STATES
            ]
    return items


def _at(timestamp: int) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)


def _sender(wa_id: str) -> str:
    try:
        return e164(wa_id)
    except ValueError:
        return f"whatsapp:{wa_id}"


def _inbound(inbox_id: int, received_at: datetime, item: WaMessageItem) -> InboundMessage:
    message = item.message
    profile = item.contact.profile if item.contact else None
    reply_to = {
        "phone_number_id": item.phone_number_id,
        "to": message.from_,
        "message_id": message.id,
    }
    chat: dict[str, Any] = {"provider": "whatsapp", "reply_to": reply_to}
    if item.display_phone_number:
        chat["business_number"] = item.display_phone_number
    return InboundMessage(
        inbox_id=inbox_id,
        external_id=f"whatsapp:{message.id}",
        provider_id=message.id,
        sender=_sender(message.from_),
        thread_key=f"whatsapp:{item.phone_number_id}:{message.from_}",
        contact_name=profile.name[:200] if profile and profile.name else None,
        text=_text(message),
        sent_at=_at(message.timestamp),
        received_at=received_at,
        headers={"chat": chat},
        media=_media(message),
    )


def _text(message: WaMessage) -> str:
    if message.text is not None:
        return message.text.body
    for kind in MEDIA_KINDS:
        media: WaMedia | None = getattr(message, kind)
        if media is not None and media.caption:
            return media.caption
    if (place := message.location) is not None:
        named = " ".join(p for p in (place.name, place.address) if p)
        return (
            f"[location {place.latitude:.6f}, {place.longitude:.6f}{' ' + named if named else ''}]"
        )
    if (choice := message.interactive) is not None:
        picked = choice.button_reply or choice.list_reply
        return picked.title if picked else ""
    if message.button is not None:
        return message.button.text
    return ""


def _media(message: WaMessage) -> list[MediaRef]:
    refs = []
    for kind, default_type in MEDIA_KINDS.items():
        media: WaMedia | None = getattr(message, kind)
        if media is None:
            continue
        refs.append(
            MediaRef(
                # No URL yet: the media id is looked up by ``fetch_media``.
                url=f"whatsapp:media:{media.id}",
                content_type=(media.mime_type or default_type).split(";")[0].strip(),
                filename=media.filename or f"{kind}-{media.id}",
                provider_ref=media.id,
            )
        )
    return refs


def _edit(inbox_id: int, received_at: datetime, message: WaMessage) -> list[MessageEdit]:
    """The message's new text; nothing for an edit whose content we cannot read (rather than
    blanking the message)."""
    assert message.edit is not None
    content = message.edit.message
    text = content.text.body if content.text is not None else None
    for media in (content.image, content.video, content.document):
        if text is None and media is not None:
            text = media.caption or ""
    if text is None:
        return []
    return [
        MessageEdit(
            inbox_id=inbox_id,
            external_id=f"whatsapp:{message.edit.original_message_id}",
            event_id=f"whatsapp:{message.id}",
            text=text,
            edited_at=_at(message.timestamp),
            received_at=received_at,
        )
    ]


def _deletion(inbox_id: int, received_at: datetime, message: WaMessage) -> MessageEdit:
    assert message.revoke is not None
    return MessageEdit(
        inbox_id=inbox_id,
        external_id=f"whatsapp:{message.revoke.original_message_id}",
        event_id=f"whatsapp:{message.id}",
        deleted=True,
        edited_at=_at(message.timestamp),
        received_at=received_at,
    )


def _delivery_update(inbox_id: int, item: WaStatusItem) -> list[DeliveryUpdate]:
    status = item.status
    if status.status not in STATES:
        return []
    error = None
    if status.errors:
        first = status.errors[0]
        error = f"WhatsApp error {first.code}: {first.title or first.message or 'no title'}"
    return [
        DeliveryUpdate(
            inbox_id=inbox_id,
            provider_message_id=status.id[:300],
            state=status.status,  # type: ignore[arg-type]
            error=error[:2000] if error else None,
            at=_at(status.timestamp),
        )
    ]
