"""Telegram Bot API webhooks: https://core.telegram.org/bots/api#setwebhook

Authenticity: Telegram does not sign updates. ``setWebhook``'s ``secret_token`` is sent back in
the ``X-Telegram-Bot-Api-Secret-Token`` header of every update; the inbox keeps it as
``secret_token`` and the header is compared in constant time, before the body is read.

One update, one payload: ``message`` / ``edited_message`` (chats with the bot), and a Telegram
Business account's ``business_message`` / ``edited_business_message`` /
``deleted_business_messages``. Other kinds (callback queries, member changes, channel posts) are
answered 2xx with nothing stored: Telegram redelivers an update until it gets a 2xx.

- Identity: ``telegram:<chat id>:<message_id>`` (message ids count per chat), so a redelivered
  update is stored once. An edit's event id is the ``update_id``; its time is ``edit_date``.
- Thread key ``telegram:<chat id>``: a private chat is one customer, a group is one conversation
  whoever writes in it. Business chats are another conversation with the same person, answered
  through the business account: ``telegram:biz:<connection id>:<chat id>`` (ids namespaced alike:
  a business chat's message ids are not the bot chat's).
- Sender ``telegram:<user id>``; the contact's name from first and last name.
- Messages written by a bot, or by the business account itself (its owner, or this bot on its
  behalf: in a private chat the chat id is the customer's user id), are ours: nothing is stored.
- Files (photo, document, voice, audio, video, animation, sticker) are fetched in the worker:
  ``getFile`` for their path, then ``/file/bot<token>/<path>``, from ``api.telegram.org`` only
  (``media_hosts``). The bot token for that is the inbox secret ``bot_token`` (the worker that
  fetches media reads the inbox's secrets, not its outbound setting: give the same token in
  both), and ``api_url`` (a secret too, default ``https://api.telegram.org``) for a stand-in.
  The token is part of those URLs: it is never in a file's ``source``, an error or a log line
  (handlers/outbound/telegram.py ``redact``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from pydantic import ValidationError

from handlers.channels.base import (
    Accepted,
    SignatureError,
    WebhookRequest,
    configured,
    constant_time_equal,
    validated,
)
from handlers.outbound.telegram import DEFAULT_API_URL, redact
from schemas.inbound import InboundMessage, MediaRef, MessageEdit, Normalized
from schemas.telegram import TgFile, TgFileAnswer, TgMessage, TgUpdate

if TYPE_CHECKING:
    from handlers.media import Get

SECRET_HEADER = "x-telegram-bot-api-secret-token"
# The kinds of file a message may carry, with the type to assume when Telegram gives none.
FILE_KINDS = {
    "document": "application/octet-stream",
    "voice": "audio/ogg",
    "audio": "audio/mpeg",
    "video": "video/mp4",
    "video_note": "video/mp4",
    "animation": "video/mp4",
    "sticker": "image/webp",
}


class TelegramAdapter:
    name = "telegram"
    channels = frozenset({"chat"})
    blocking = False
    media_hosts = (r"api\.telegram\.org",)

    def verify(self, request: WebhookRequest, secrets: Mapping[str, Any], now: float) -> None:
        expected = configured(secrets, "secret_token")
        given = request.headers.get(SECRET_HEADER, "")
        if not given or not constant_time_equal(given, expected):
            raise SignatureError(f"missing or wrong {SECRET_HEADER} header")

    def accept(self, request: WebhookRequest) -> Accepted:
        update = _parse(request.body)
        if not _relevant(update):
            return Accepted()  # 2xx, nothing journaled: Telegram would redeliver a refusal
        return Accepted(payloads=[update.model_dump(mode="json", by_alias=True, exclude_none=True)])

    def normalize(
        self, inbox_id: int, received_at: datetime, payload: dict[str, Any]
    ) -> Sequence[Normalized]:
        update = TgUpdate.model_validate(payload)
        if not _relevant(update):  # saved files (``inboxsync ingest``) are not checked at an edge
            return []
        if (new := update.message or update.business_message) is not None:
            return [_inbound(inbox_id, received_at, new)]
        if (edited := update.edited_message or update.edited_business_message) is not None:
            return [_edit(inbox_id, received_at, update.update_id, edited)]
        if (gone := update.deleted_business_messages) is not None:
            scope = _scope(gone.chat.id, gone.business_connection_id)
            return [
                MessageEdit(
                    inbox_id=inbox_id,
                    external_id=f"{scope}:{message_id}",
                    event_id=f"telegram:update:{update.update_id}:{message_id}",
                    deleted=True,
                    # Telegram gives no time for a deletion: when we heard of it. A deletion is
                    # final whatever its time (handlers/edits.py).
                    edited_at=received_at,
                    received_at=received_at,
                )
                for message_id in gone.message_ids
            ]
        return []

    def fetch_media(self, ref: MediaRef, secrets: Mapping[str, Any], get: Get) -> tuple[bytes, str]:
        """``getFile`` for the file's path, then the file (https://core.telegram.org/bots/api#getfile:
        up to 20 MB; a larger one is refused by Telegram and listed as not stored)."""
        # Imported here: handlers.media imports the senders, whose mail composer imports the
        # channel registry, which imports this module.
        from handlers.media import MediaError

        token = str(secrets.get("bot_token") or "")
        if not token or not ref.provider_ref:
            raise MediaError("the inbox has no bot_token secret to fetch Telegram files with")
        api = str(secrets.get("api_url") or DEFAULT_API_URL).rstrip("/")
        try:
            raw, _ = get(f"{api}/bot{token}/getFile?file_id={quote(ref.provider_ref)}", {})
            found = TgFileAnswer.model_validate(json.loads(raw).get("result") or {})
            data, content_type = get(f"{api}/file/bot{token}/{quote(found.file_path)}", {})
        except MediaError as exc:
            raise MediaError(redact(str(exc), token)) from None
        except (ValueError, AttributeError, ValidationError):
            raise MediaError("getFile answered without a file_path") from None
        # Telegram serves every file as application/octet-stream: the message said better.
        if not content_type or content_type.startswith("application/octet-stream"):
            content_type = ref.content_type
        return data, content_type


def _parse(body: bytes) -> TgUpdate:
    return validated(TgUpdate, body)


def _relevant(update: TgUpdate) -> bool:
    """A customer's message, an edit of one, or a deletion: what is journaled."""
    if (new := update.message or update.business_message) is not None:
        return _has_content(new) and not _ours(new)
    if (edited := update.edited_message or update.edited_business_message) is not None:
        # A live location moving is an edit every few seconds: not news for an agent.
        return edited.location is None and _has_content(edited) and not _ours(edited)
    return update.deleted_business_messages is not None


def _ours(message: TgMessage) -> bool:
    """Written by a bot (this one, another, or the anonymous-admin bot of a group), or by the
    business account itself in one of its chats: not a customer's message."""
    author = message.from_
    if author is None or author.is_bot or message.sender_business_bot is not None:
        return True
    # A business chat is private: its id is the customer's user id. Anyone else writing in it
    # is the business account (https://core.telegram.org/bots/api#chat).
    return message.business_connection_id is not None and author.id != message.chat.id


def _scope(chat_id: int, business_connection_id: str | None) -> str:
    if business_connection_id:
        return f"telegram:biz:{business_connection_id}:{chat_id}"
    return f"telegram:{chat_id}"


def _inbound(inbox_id: int, received_at: datetime, message: TgMessage) -> InboundMessage:
    author = message.from_
    assert author is not None  # _ours() keeps messages without an author out
    scope = _scope(message.chat.id, message.business_connection_id)
    name = " ".join(p for p in (author.first_name, author.last_name) if p) or author.username
    return InboundMessage(
        inbox_id=inbox_id,
        external_id=f"{scope}:{message.message_id}",
        provider_id=str(message.message_id),
        sender=f"telegram:{author.id}",
        thread_key=scope,
        contact_name=name[:200] if name else None,
        text=_text(message),
        sent_at=datetime.fromtimestamp(message.date, UTC),
        received_at=received_at,
        headers={"chat": _chat_headers(message)},
        media=_media(message),
    )


def _edit(inbox_id: int, received_at: datetime, update_id: int, message: TgMessage) -> MessageEdit:
    scope = _scope(message.chat.id, message.business_connection_id)
    return MessageEdit(
        inbox_id=inbox_id,
        external_id=f"{scope}:{message.message_id}",
        event_id=f"telegram:update:{update_id}",
        text=_text(message),
        edited_at=datetime.fromtimestamp(message.edit_date or message.date, UTC),
        received_at=received_at,
    )


def _text(message: TgMessage) -> str:
    """The message's text or its file's caption; a shared location or contact said in words."""
    if message.text is not None:
        return message.text
    if message.caption:
        return message.caption
    if (place := message.location) is not None:
        return f"[location {place.latitude:.6f}, {place.longitude:.6f}]"
    if (card := message.contact) is not None:
        name = " ".join(p for p in (card.first_name, card.last_name) if p)
        return f"[contact {name} {card.phone_number}]".replace("  ", " ")
    return ""


def _has_content(message: TgMessage) -> bool:
    """Text, a file, a location or a contact; not a service message (a member joined, a pin)."""
    return bool(_text(message)) or bool(_media(message))


def _chat_headers(message: TgMessage) -> dict[str, Any]:
    """What a reply needs to land in the same chat (and topic, and business account), and what
    an agent may want to see about where the message came from."""
    reply_to: dict[str, Any] = {
        "chat_id": message.chat.id,
        "chat_type": message.chat.type,
        "message_id": message.message_id,
    }
    if message.message_thread_id is not None:
        reply_to["message_thread_id"] = message.message_thread_id
    if message.business_connection_id:
        reply_to["business_connection_id"] = message.business_connection_id
    author = message.from_
    chat: dict[str, Any] = {"provider": "telegram", "reply_to": reply_to}
    if author is not None and author.username:
        chat["username"] = author.username
    if message.chat.title:
        chat["chat_title"] = message.chat.title
    return chat


def _media(message: TgMessage) -> list[MediaRef]:
    refs = []
    if message.photo:
        # Telegram lists a photo's sizes smallest first; the largest is the original.
        largest = message.photo[-1]
        refs.append(_ref(largest.file_id, "image/jpeg", f"photo-{message.message_id}.jpg"))
    for kind, default_type in FILE_KINDS.items():
        item: TgFile | None = getattr(message, kind)
        if item is not None:
            refs.append(_ref(item.file_id, item.mime_type or default_type, item.file_name))
    return refs


def _ref(file_id: str, content_type: str, filename: str | None) -> MediaRef:
    # No URL carries the bot token: the file is named by its id and fetched by ``fetch_media``.
    return MediaRef(
        url=f"telegram:file:{file_id}",
        content_type=content_type,
        filename=filename,
        provider_ref=file_id,
    )
