"""Twilio Messaging webhooks (SMS, MMS, WhatsApp), as the edge journals them.

Twilio posts HTML forms (https://www.twilio.com/docs/messaging/guides/webhook-request): an
incoming message (``MessageSid``, ``From``, ``To``, ``Body``, ``NumMedia`` with ``MediaUrl<n>``
and ``MediaContentType<n>``; for WhatsApp also ``ProfileName``, ``WaId`` and, for a shared
place, ``Latitude``/``Longitude``/``Address``/``Label``), or a status callback of a message we
sent (``MessageSid``, ``MessageStatus``, ``ErrorCode``). Only what inboxsync reads is declared;
the form's other fields (``FromCity``, ``NumSegments``, …) are dropped at the edge.

The journaled payload is one of the two models below, dumped with Twilio's names and a ``kind``.
Texts lose NUL characters (PostgreSQL cannot store them; in a customer's text they are noise).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field


def _no_nul(value: str) -> str:
    return value.replace("\x00", "\ufffd")


Text = Annotated[str, Field(max_length=1_000_000), AfterValidator(_no_nul)]
Name = Annotated[str, Field(max_length=500), AfterValidator(_no_nul)]
# Every Twilio resource id: two letters and 32 hex digits (SM…/MM… for messages, AC… accounts).
Sid = Annotated[str, Field(pattern=r"^[A-Z]{2}[0-9a-fA-F]{32}$")]
# A number in E.164, a channel address (``whatsapp:+14155550100``), a short code (``32665``).
Address = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_no_nul)]
Url = Annotated[str, Field(min_length=1, max_length=2000, pattern=r"^https?://")]


class _Twilio(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)


class TwilioMedia(_Twilio):
    """``MediaUrl<n>`` and ``MediaContentType<n>`` of an incoming message."""

    url: Url
    content_type: Annotated[str, Field(max_length=200)] = "application/octet-stream"


class TwilioMessage(_Twilio):
    """An incoming message (SMS, MMS or WhatsApp)."""

    kind: Literal["message"] = "message"
    message_sid: Sid = Field(alias="MessageSid")
    account_sid: Name = Field(default="", alias="AccountSid")
    messaging_service_sid: Name | None = Field(default=None, alias="MessagingServiceSid")
    from_: Address = Field(alias="From")
    to: Address = Field(alias="To")
    body: Text = Field(default="", alias="Body")
    # WhatsApp: the sender's profile name and WhatsApp id (their number, digits only).
    profile_name: Name | None = Field(default=None, alias="ProfileName")
    wa_id: Name | None = Field(default=None, alias="WaId")
    # WhatsApp: a shared location.
    latitude: float | None = Field(default=None, ge=-90, le=90, alias="Latitude")
    longitude: float | None = Field(default=None, ge=-180, le=180, alias="Longitude")
    address: Name | None = Field(default=None, alias="Address")
    label: Name | None = Field(default=None, alias="Label")
    # Twilio: "up to 10 media files" per message (https://www.twilio.com/docs/messaging/api/media-resource).
    media: list[TwilioMedia] = Field(default_factory=list, max_length=10)


class TwilioStatus(_Twilio):
    """A status callback of a message we sent: our reply's ``MessageSid`` and its new state."""

    kind: Literal["status"] = "status"
    message_sid: Sid = Field(alias="MessageSid")
    message_status: Name = Field(alias="MessageStatus")
    error_code: Name | None = Field(default=None, alias="ErrorCode")
    error_message: Name | None = Field(default=None, alias="ErrorMessage")
    from_: Address | None = Field(default=None, alias="From")
    to: Address | None = Field(default=None, alias="To")


TwilioPayload = Annotated[TwilioMessage | TwilioStatus, Field(discriminator="kind")]
