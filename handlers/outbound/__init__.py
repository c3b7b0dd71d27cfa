"""Replies going out: composing the mail, the providers that send it, and its delivery state."""

from __future__ import annotations

from handlers.outbound.base import Sender
from handlers.outbound.mailgun import MailgunSender
from handlers.outbound.postmark import PostmarkSender
from handlers.outbound.sendgrid import SendGridSender
from handlers.outbound.slack import SlackSender
from handlers.outbound.smtp import SmtpSender
from handlers.outbound.telegram import TelegramSender
from handlers.outbound.twilio import TwilioSender
from handlers.outbound.whatsapp import WhatsAppSender
from handlers.outbound.widget import WidgetSender

SENDERS: dict[str, Sender] = {
    "mailgun": MailgunSender(),
    "postmark": PostmarkSender(),
    "sendgrid": SendGridSender(),
    "slack": SlackSender(),
    "smtp": SmtpSender(),
    "telegram": TelegramSender(),
    "twilio": TwilioSender(),
    "whatsapp": WhatsAppSender(),
    "widget": WidgetSender(),
}
