"""The provider registry: one line per provider (see handlers/channels/base.py)."""

from __future__ import annotations

from handlers.channels.base import ChannelAdapter, PayloadError
from handlers.channels.generic import GenericAdapter
from handlers.channels.mailgun import MailgunAdapter
from handlers.channels.postmark import PostmarkAdapter
from handlers.channels.rfc822 import Rfc822Adapter
from handlers.channels.sendgrid import SendGridAdapter
from handlers.channels.ses import SesAdapter
from handlers.channels.slack import SlackAdapter
from handlers.channels.telegram import TelegramAdapter
from handlers.channels.twilio import TwilioAdapter
from handlers.channels.whatsapp import WhatsAppAdapter
from handlers.channels.widget import WidgetAdapter

REGISTRY: dict[str, ChannelAdapter] = {
    "generic": GenericAdapter(),
    "mailgun": MailgunAdapter(),
    "postmark": PostmarkAdapter(),
    "rfc822": Rfc822Adapter(),
    "sendgrid": SendGridAdapter(),
    "ses": SesAdapter(),
    "slack": SlackAdapter(),
    "telegram": TelegramAdapter(),
    "twilio": TwilioAdapter(),
    "whatsapp": WhatsAppAdapter(),
    "widget": WidgetAdapter(),
}


def adapter_for(provider: str) -> ChannelAdapter:
    try:
        return REGISTRY[provider]
    except KeyError:
        raise PayloadError(f"unknown provider {provider!r}; known: {sorted(REGISTRY)}") from None
