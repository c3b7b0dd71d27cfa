"""Outbound mail: how an inbox sends (one config per provider), the mail we compose, the API.

An inbox's ``outbound`` config names the provider (``via``) and its credentials; ``api_url`` points
at the provider's API (change it for Mailgun's EU region, or a test's fake provider on loopback).
Here only the shape of ``api_url`` and SMTP ``host`` is checked; which addresses workers may
connect to is handlers/netguard.py's decision, at save time and again at connect time.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from schemas.email import Address
from schemas.types import Timestamp

ReplyState = Literal["queued", "sending", "sent", "failed"]
NUL_REFUSED = "contains NUL (\\u0000), which no text may hold (PostgreSQL cannot store it)"


def refuse_nul(value: Any) -> Any:
    """A field validator for request bodies: a text, or a list of texts, with no NUL in it (a 422
    naming the field, not a 500 from the store). schemas/api.py checks nested values too."""
    texts = value if isinstance(value, list | tuple) else [value]
    if any(isinstance(text, str) and "\x00" in text for text in texts):
        raise ValueError(NUL_REFUSED)
    return value


def _api_url(value: str) -> str:
    """An http(s) URL with a host and nothing that could make readers disagree on the host."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http(s) URL with a host, e.g. https://api.mailgun.net")
    if "@" in parts.netloc:
        raise ValueError("must not carry credentials (user@host): they go in their own fields")
    if parts.query or parts.fragment:
        raise ValueError("must not have a query or a fragment")
    _ = parts.port  # raises ValueError for a port that is not a number in range
    return value


# A host name (IDNA allowed) or an IP address; no scheme, port, path or credentials.
_HOST_NAME = re.compile(r"[^\s/:@?#\[\]]+")


def _smtp_host(value: str) -> str:
    try:
        ipaddress.ip_address(value.strip("[]"))
    except ValueError:
        if not _HOST_NAME.fullmatch(value):
            raise ValueError(
                "must be a host name or an IP address, without scheme, port or path"
            ) from None
    return value


ApiUrl = Annotated[str, AfterValidator(_api_url)]
SmtpHost = Annotated[str, AfterValidator(_smtp_host)]


class _Base(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    _no_nul = field_validator("*")(refuse_nul)

    # Seconds for connecting and, separately, for the provider's answer.
    timeout_s: float = Field(default=30.0, gt=0, le=300)


class _Config(_Base):
    """A mail provider's setting."""

    # The address replies come from: "Acme Support <support@acme.example>".
    from_: str = Field(alias="from", min_length=3, max_length=320)


class _ChatConfig(_Base):
    """A chat provider's setting: replies go back into the chat they answer."""


class PostmarkOutbound(_Config):
    via: Literal["postmark"]
    server_token: str = Field(min_length=1)
    message_stream: str = "outbound"
    api_url: ApiUrl = "https://api.postmarkapp.com"


class MailgunOutbound(_Config):
    via: Literal["mailgun"]
    api_key: str = Field(min_length=1)
    domain: str = Field(min_length=1)
    api_url: ApiUrl = "https://api.mailgun.net"


class SendGridOutbound(_Config):
    via: Literal["sendgrid"]
    api_key: str = Field(min_length=1)
    api_url: ApiUrl = "https://api.sendgrid.com"


class SmtpOutbound(_Config):
    via: Literal["smtp"]
    host: SmtpHost = Field(min_length=1, max_length=253)
    port: int = Field(default=587, ge=1, le=65535)
    # "starttls" upgrades a plain connection (port 587); "tls" is TLS from the start (465).
    security: Literal["starttls", "tls", "none"] = "starttls"
    username: str | None = None
    password: str | None = None


class SlackOutbound(_ChatConfig):
    """``chat.postMessage`` in the thread, with the bot token."""

    via: Literal["slack"]
    bot_token: str = Field(min_length=1)
    api_url: ApiUrl = "https://slack.com/api"


class TwilioOutbound(_ChatConfig):
    """Twilio Messages (SMS and WhatsApp), with the account's SID and auth token."""

    via: Literal["twilio"]
    account_sid: str = Field(min_length=1)
    auth_token: str = Field(min_length=1)
    api_url: ApiUrl = "https://api.twilio.com"
    # This inbox's public webhook URL, given to Twilio for delivery status callbacks.
    status_callback_url: ApiUrl | None = None


class WhatsAppOutbound(_ChatConfig):
    """WhatsApp Cloud API messages from one business phone number."""

    via: Literal["whatsapp"]
    access_token: str = Field(min_length=1)
    phone_number_id: str = Field(min_length=1)
    api_url: ApiUrl = "https://graph.facebook.com/v21.0"


class TelegramOutbound(_ChatConfig):
    """Telegram Bot API ``sendMessage``."""

    via: Literal["telegram"]
    bot_token: str = Field(min_length=1)
    api_url: ApiUrl = "https://api.telegram.org"


class WidgetOutbound(_ChatConfig):
    """The website widget: replies are posted to the site's server, signed the Standard
    Webhooks way with ``signing_secret``."""

    via: Literal["widget"]
    reply_url: ApiUrl
    # whsec_ and the base64 of the key (https://www.standardwebhooks.com/): refused at save time
    # if it is not one, rather than failing every reply.
    signing_secret: str = Field(min_length=1, pattern=r"^whsec_[A-Za-z0-9+/]+={0,2}$")


MAIL_VIAS = frozenset({"postmark", "mailgun", "sendgrid", "smtp"})

OutboundConfig = Annotated[
    PostmarkOutbound
    | MailgunOutbound
    | SendGridOutbound
    | SmtpOutbound
    | SlackOutbound
    | TwilioOutbound
    | WhatsAppOutbound
    | TelegramOutbound
    | WidgetOutbound,
    Field(discriminator="via"),
]


class OutboundMail(BaseModel):
    """A reply as it goes out, fixed when it is queued so that every attempt sends the same mail
    (same ``message_id``: receiving servers drop a second copy of a Message-ID they have)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    reply_key: str  # our identity of the reply, given to providers as metadata
    message_id: str  # RFC 5322 Message-ID, without angle brackets
    from_: Address = Field(alias="from")
    to: list[Address] = Field(min_length=1)
    cc: list[Address] = Field(default_factory=list)
    subject: str
    text: str
    html: str | None = None
    in_reply_to: str | None = None
    references: list[str] = Field(default_factory=list)
    date: AwareDatetime


class OutboundChat(BaseModel):
    """A chat reply as it goes out, fixed when it is queued (every attempt sends the same).

    ``target`` says where, in the provider's terms: what its adapter kept as
    ``headers["chat"]["reply_to"]`` of the customer's newest message (a Slack channel and thread,
    a phone number and ours, a Telegram chat id, a widget session). ``client_id`` is our id of
    the message: given to providers that take one (idempotency, metadata), and what a lookup
    after an unanswered attempt searches for."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    reply_key: str
    client_id: str
    text: str
    target: dict[str, Any]
    date: AwareDatetime


class ReplyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    _no_nul = field_validator("*")(refuse_nul)

    text: str = Field(min_length=1, max_length=1_000_000)
    html: str | None = Field(default=None, max_length=5_000_000)
    # Default: the customer (Reply-To, else From, of the newest mail from them).
    to: list[str] | None = Field(default=None, min_length=1, max_length=50)
    cc: list[str] = Field(default_factory=list, max_length=50)
    subject: str | None = Field(default=None, max_length=998)


class ReplyOut(BaseModel):
    id: int
    conversation_id: int
    message_id: int
    state: ReplyState
    via: str
    rfc_message_id: str
    to: list[str]
    subject: str
    attempts: int
    provider_message_id: str | None
    provider_status: Literal["sent", "delivered", "read", "failed"] | None = Field(
        default=None, description="Chat: what the provider last reported (delivered, read…)."
    )
    error: str | None
    created_at: Timestamp
    sent_at: Timestamp | None
    next_attempt_at: Timestamp | None
