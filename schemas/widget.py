"""The website chat widget: our own format, for a site's server that relays its chat widget.

**Inbound** (``POST /webhooks/{inbox_id}`` of an inbox with provider ``widget``): one event per
request, shaped as Standard Webhooks recommends (``type``, optional ``timestamp``, ``data``) and
signed with its headers (https://www.standardwebhooks.com/):

- ``webhook-id``: the event's id, the same on every retry of it (a retry is stored once);
- ``webhook-timestamp``: unix seconds, within ``INBOXSYNC_WEBHOOK_TOLERANCE_SECONDS`` (300) of ours;
- ``webhook-signature``: ``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``, the key being
  the base64 after ``whsec_`` of the inbox secret ``signing_secret``; several space-separated
  signatures are allowed (while a secret is being rotated), one must match.

Events: ``message`` (a visitor wrote), ``message.edited``, ``message.deleted`` (a deletion is
final), ``reply.status`` (what became of one of our replies in the visitor's browser:
``delivered``, ``read``, ``failed``). Ids (``session_id``, ``message_id``, a visitor's ``id``)
are 1-200 characters without spaces, colons or control characters; an attachment's fields and a
reply's ``client_id`` hold no control characters either (NUL above all: PostgreSQL stores none).
Times are ISO 8601 with their offset, within the years 1 to 9999 once in UTC (the store keeps
them in UTC).

**Outbound** (``WidgetReply``): an agent's reply is posted to the site's ``reply_url`` with the
same three headers, signed with the outbound setting's ``signing_secret``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    RootModel,
    model_validator,
)

from schemas.inbound import GenericWebhook

WidgetId = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\s:\x00-\x1f\x7f]+$")]


def _in_utc(value: datetime) -> datetime:
    # 0001-01-01T00:00:00+01:00 is a valid time whose UTC is before year 1 (and
    # 9999-12-31T23:59:59-01:00 after 9999): no datetime, and no store, holds it.
    try:
        value.astimezone(UTC)
    except OverflowError:
        raise ValueError("a time whose UTC is outside years 1 to 9999") from None
    return value


# A time of the widget's: ISO 8601 with its offset, within what a store holds once in UTC.
WidgetTime = Annotated[AwareDatetime, AfterValidator(_in_utc)]
# No NUL (PostgreSQL text holds none) nor other control characters.
Printable = r"^[^\x00-\x1f\x7f]*$"


class _Widget(BaseModel):
    # Our own format: a misspelt field is the site developer's mistake, said at once (422).
    model_config = ConfigDict(extra="forbid")


class WidgetVisitor(_Widget):
    id: WidgetId
    name: str | None = Field(default=None, max_length=200)
    # When given, the visitor is this email's contact (their mail and chats meet there).
    email: str | None = Field(default=None, max_length=320, pattern=r"^[^@\s\x00]+@[^@\s\x00]+$")


class WidgetAttachment(_Widget):
    """A file the visitor sent, by URL: fetched by the worker from the hosts the operator allows
    for the widget (``INBOXSYNC_MEDIA_HOSTS``, e.g. ``{"widget": ["uploads\\\\.acme\\\\.test"]}``);
    none by default, and then the file is listed as not stored."""

    url: str = Field(max_length=2000, pattern=r"^https?://[^\x00-\x1f\x7f]*$")
    content_type: str = Field(default="application/octet-stream", max_length=200, pattern=Printable)
    filename: str | None = Field(default=None, max_length=500, pattern=Printable)


class WidgetMessage(_Widget):
    session_id: WidgetId = Field(description="One chat session: one conversation.")
    message_id: WidgetId = Field(description="Unique within its session.")
    visitor: WidgetVisitor
    text: str = Field(default="", max_length=1_000_000)
    sent_at: WidgetTime
    attachments: list[WidgetAttachment] = Field(default_factory=list, max_length=50)

    @model_validator(mode="after")
    def _says_something(self) -> WidgetMessage:
        if not self.text and not self.attachments:
            raise ValueError("a message has text, attachments or both")
        return self


class WidgetEdit(_Widget):
    session_id: WidgetId
    message_id: WidgetId
    text: str = Field(max_length=1_000_000)
    edited_at: WidgetTime = Field(
        description="Edits apply in this order; an older one late changes nothing."
    )


class WidgetDeletion(_Widget):
    session_id: WidgetId
    message_id: WidgetId
    deleted_at: WidgetTime


class WidgetReplyStatus(_Widget):
    client_id: str = Field(
        min_length=1, max_length=300, pattern=Printable, description="The reply's client_id."
    )
    state: Literal["delivered", "read", "failed"]
    at: WidgetTime
    error: str | None = Field(default=None, max_length=2000)


class _Event(_Widget):
    timestamp: AwareDatetime | None = Field(default=None, description="When the event happened.")


class MessageEvent(_Event):
    type: Literal["message"]
    data: WidgetMessage


class MessageEditedEvent(_Event):
    type: Literal["message.edited"]
    data: WidgetEdit


class MessageDeletedEvent(_Event):
    type: Literal["message.deleted"]
    data: WidgetDeletion


class ReplyStatusEvent(_Event):
    type: Literal["reply.status"]
    data: WidgetReplyStatus


class WidgetWebhook(
    RootModel[
        Annotated[
            MessageEvent | MessageEditedEvent | MessageDeletedEvent | ReplyStatusEvent,
            Field(discriminator="type"),
        ]
    ]
):
    """Body of ``POST /webhooks/{inbox_id}`` for an inbox whose provider is ``widget``."""


class WidgetReply(BaseModel):
    """An agent's reply, as the site's ``reply_url`` receives it (JSON, UTF-8), with
    ``webhook-id`` = ``client_id``, ``webhook-timestamp`` and ``webhook-signature`` computed as
    for inbound events with the outbound setting's ``signing_secret``.

    **The site's side of the contract: deduplicate by ``webhook-id``.** A reply is posted again
    with the same ``webhook-id`` and the same body when we could not learn whether the site took
    it (no answer in time, a worker stopped mid-request). The site must show a ``webhook-id`` it
    has already taken only once, and answer it 2xx again (Standard Webhooks: the id is the
    idempotency key of the message). So a second post is safe, and it is how we ask the site
    whether it has the reply (handlers/outbound/widget.py ``find``). Only the timestamp and the
    signature differ between the posts. Any 2xx means "shown, or already shown"; 429 and 5xx
    are retried (``Retry-After`` honoured); other 4xx fail the reply.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    session_id: str
    client_id: str = Field(description="Our id of the reply; also its webhook-id.")
    text: str
    sent_at: AwareDatetime = Field(description="When the agent sent it (the same on every post).")


def webhook_request_body() -> dict[str, Any]:
    """The OpenAPI request body of ``POST /webhooks/{inbox_id}`` for the JSON providers whose
    format is ours: the generic body or the widget's (by the inbox's provider). Schemas are
    inlined: a route's extra OpenAPI cannot add to the document's components."""
    return {
        "required": True,
        "description": (
            "The body the inbox's provider posts. Documented here: the formats that are ours, "
            "`generic` and `widget` (signed as README.md and schemas/widget.py say). Other "
            "providers post their own documented formats: Postmark, SNS and Telegram JSON, "
            "Mailgun and SendGrid forms, raw mail (message/rfc822)."
        ),
        "content": {
            "application/json": {
                "schema": {
                    "oneOf": [
                        _inlined(GenericWebhook.model_json_schema()),
                        _inlined(WidgetWebhook.model_json_schema()),
                    ]
                }
            }
        },
    }


def _inlined(schema: dict[str, Any]) -> dict[str, Any]:
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return walk(defs[ref.removeprefix("#/$defs/")])
            if "propertyName" in node:  # a discriminator: its mapping names $defs entries
                return {k: v for k, v in node.items() if k != "mapping"}
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(item) for item in node]
        return node

    return walk(schema)  # type: ignore[no-any-return]


class WidgetDelivery(BaseModel):
    """What the edge journals for one widget event: the event and its ``webhook-id`` (a digest
    of the body for a saved event fed to ``inboxsync ingest``, which has no headers)."""

    model_config = ConfigDict(extra="forbid")

    webhook_id: str = Field(min_length=1, max_length=300)
    event: WidgetWebhook
