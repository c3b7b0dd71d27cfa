"""SendGrid: ``POST /v3/mail/send`` with a bearer API key; 202 and the id in ``X-Message-Id``.

SendGrid cannot be asked whether it has a mail without the paid Email Logs add-on, so ``find`` is
unsupported: a SendGrid attempt with an unknown outcome is not retried blindly (see
handlers/outbound/replies.py). https://www.twilio.com/docs/sendgrid/api-reference/mail-send
"""

from __future__ import annotations

from typing import Any

from handlers.outbound.base import LookupUnsupported, call
from handlers.outbound.compose import ascii_email, threading_headers
from schemas.email import Address
from schemas.outbound import OutboundMail, SendGridOutbound


class SendGridSender:
    via = "sendgrid"

    def send(self, mail: OutboundMail, config: SendGridOutbound) -> str:
        personalization: dict[str, Any] = {"to": [_who(a) for a in mail.to]}
        if mail.cc:
            personalization["cc"] = [_who(a) for a in mail.cc]
        content = [{"type": "text/plain", "value": mail.text}]
        if mail.html:
            content.append({"type": "text/html", "value": mail.html})
        body = {
            "personalizations": [personalization],
            "from": _who(mail.from_),
            "subject": mail.subject,
            "content": content,
            "headers": threading_headers(mail),
            "custom_args": {"inboxsync_reply": mail.reply_key},
        }
        response = call(
            "sendgrid",
            "POST",
            f"{config.api_url.rstrip('/')}/v3/mail/send",
            timeout_s=config.timeout_s,
            json=body,
            headers={"Authorization": f"Bearer {config.api_key}"},
        )
        return response.headers.get("x-message-id") or mail.message_id

    def find(self, mail: OutboundMail, config: SendGridOutbound) -> str | None:
        raise LookupUnsupported("SendGrid cannot be searched without the Email Logs add-on")


def _who(address: Address) -> dict[str, str]:
    who = {"email": ascii_email(address)}
    if address.name:
        who["name"] = address.name
    return who
