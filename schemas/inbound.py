"""What channel adapters produce from a webhook, and the generic webhook's body.

An adapter's ``normalize`` returns ``Normalized`` items: mostly ``InboundMessage`` (a message
that joins a conversation); chat providers also send ``MessageEdit`` (a message edited or
deleted) and ``DeliveryUpdate`` (the provider's news about one of our replies: delivered, read,
failed)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

from schemas.types import Id

PG_MAX_OFFSET = timedelta(hours=15, minutes=59)


class MediaRef(BaseModel):
    """A file a chat message carries, by reference: the worker fetches it from the provider's
    own hosts into the blob store (handlers/media.py) before the message is stored."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(max_length=2000)
    content_type: str = Field(default="application/octet-stream", max_length=200)
    filename: str | None = Field(default=None, max_length=500)
    # The provider's id of the file when fetching it takes a lookup first (WhatsApp, Telegram).
    provider_ref: str | None = Field(default=None, max_length=500)


class InboundMessage(BaseModel):
    """What the conversation upsert consumes, whatever the provider."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    inbox_id: int
    external_id: str = Field(min_length=1, max_length=500)
    # The provider's own id of the message, when it differs from ``external_id`` (a mail keyed by
    # its Message-ID also has Postmark's MessageID, SES's messageId, …).
    provider_id: str | None = Field(default=None, max_length=500)
    sender: str = Field(min_length=1, max_length=320)
    # Messages with one thread key share a conversation; None threads by sender.
    thread_key: str | None = Field(default=None, max_length=500)
    text: str = Field(max_length=1_000_000)
    sent_at: AwareDatetime
    received_at: AwareDatetime
    headers: dict[str, Any] = Field(default_factory=dict)
    # Threading hints a channel may give (email): the message ids this one answers, most telling
    # first, and the conversation named by a reply token we put in outgoing mail. The store
    # follows them to an existing conversation before falling back to ``thread_key``.
    thread_refs: list[str] = Field(default_factory=list, max_length=200)
    reply_token: int | None = None
    # An auto-reply or a bounce: stored, but it reopens nothing and asks for no answer.
    automatic: bool = False
    # Chat: the contact's display name as the provider gives it (kept when first seen), and the
    # files the message carries, to fetch.
    contact_name: str | None = Field(default=None, max_length=200)
    media: list[MediaRef] = Field(default_factory=list, max_length=50)
    # Attachment contents, for the blob store (store/blobs.py); never serialized with the message.
    blobs: list[bytes] = Field(default_factory=list, exclude=True, repr=False)

    @model_validator(mode="before")
    @classmethod
    def _storable_text(cls, data: Any) -> Any:
        # PostgreSQL's text and jsonb hold no NUL: in a sender's text it is noise, not meaning,
        # and every store keeps the same text (as the chat providers' schemas do).
        return without_nul(data) if isinstance(data, dict) else data

    @field_validator("sent_at", "received_at")
    @classmethod
    def _storable_offset(cls, value: datetime) -> datetime:
        # Senders may write offsets up to ±23:59 (ISO 8601, RFC 5322); PostgreSQL's timestamptz
        # takes ±15:59. Past that, the same instant in UTC.
        offset = value.utcoffset()
        if offset is not None and abs(offset) > PG_MAX_OFFSET:
            return value.astimezone(UTC)
        return value

    @property
    def effective_thread_key(self) -> str:
        return self.thread_key if self.thread_key else f"sender:{self.sender.lower()}"


def without_nul(value: Any) -> Any:
    """``value`` with every NUL in its strings (keys too, at any depth) made U+FFFD."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd") if "\x00" in value else value
    if isinstance(value, dict):
        return {without_nul(k): without_nul(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(without_nul(v) for v in value)
    return value


class MessageEdit(BaseModel):
    """A stored message edited (``text``) or deleted (``deleted``) at the provider. Applied once
    (``event_id``) and in the provider's order of edits (``edited_at``): an older edit arriving
    after a newer one changes nothing, and a deletion is final. An edit of a message not stored
    yet waits for it (handlers/edits.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    inbox_id: int
    external_id: str = Field(min_length=1, max_length=500)  # the message's
    event_id: str = Field(min_length=1, max_length=500)
    text: str | None = Field(default=None, max_length=1_000_000)
    deleted: bool = False
    edited_at: AwareDatetime
    received_at: AwareDatetime


class DeliveryUpdate(BaseModel):
    """The provider's news about a message we sent (a reply), by the id it gave it: its state
    moves forward only (sent → delivered → read; failed is final), whatever the order the
    callbacks arrive in."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    inbox_id: int
    provider_message_id: str = Field(min_length=1, max_length=300)
    state: Literal["sent", "delivered", "read", "failed"]
    error: str | None = Field(default=None, max_length=2000)
    at: AwareDatetime


Normalized = InboundMessage | MessageEdit | DeliveryUpdate


class GenericWebhook(BaseModel):
    """Body of ``POST /webhooks/{inbox_id}`` for an inbox whose provider is ``generic``."""

    model_config = ConfigDict(extra="forbid")

    inbox: Id | None = Field(default=None, description="Optional; must match the URL if given.")
    external_id: str = Field(min_length=1, max_length=500, description="Provider message id.")
    sender: str = Field(min_length=1, max_length=320)
    thread_key: str | None = Field(default=None, max_length=500)
    text: str = Field(max_length=1_000_000)
    sent_at: AwareDatetime


@dataclass(frozen=True)
class IngestOutcome:
    """What storing one inbound message did (internal: a plain dataclass, built per message on
    the hot path)."""

    inbox_id: int
    external_id: str
    message_id: int | None
    conversation_id: int | None
    duplicate: bool = False
    effects: list[dict[str, Any]] = field(default_factory=list)
