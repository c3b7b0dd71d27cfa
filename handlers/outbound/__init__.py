"""Replies going out: composing the mail, the providers that send it, and its delivery state."""

from __future__ import annotations

from handlers.outbound.base import Sender
from handlers.outbound.mailgun import MailgunSender
from handlers.outbound.postmark import PostmarkSender
from handlers.outbound.sendgrid import SendGridSender
from handlers.outbound.smtp import SmtpSender

SENDERS: dict[str, Sender] = {
    "mailgun": MailgunSender(),
    "postmark": PostmarkSender(),
    "sendgrid": SendGridSender(),
    "smtp": SmtpSender(),
}
