"""Postmark: ``POST /email`` with the server token; found again by searching outbound messages
for the reply key we put in the mail's ``Metadata`` (Postmark keeps both for its retention period).

Postmark answers 422 with an ``ErrorCode`` for what it refuses (an inactive recipient, a bad
address): permanent. https://postmarkapp.com/developer/api/email-api
"""

from __future__ import annotations

from typing import Any

from handlers.outbound.base import SendFailed, call
from handlers.outbound.compose import ascii_email, formatted, threading_headers
from schemas.outbound import OutboundMail, PostmarkOutbound

METADATA_KEY = "inboxsync_reply"


class PostmarkSender:
    via = "postmark"

    def send(self, mail: OutboundMail, config: PostmarkOutbound) -> str:
        body: dict[str, Any] = {
            "From": formatted(mail.from_),
            "To": ", ".join(formatted(a) for a in mail.to),
            "Subject": mail.subject,
            "TextBody": mail.text,
            "Headers": [{"Name": k, "Value": v} for k, v in threading_headers(mail).items()],
            "Metadata": {METADATA_KEY: mail.reply_key},
            "MessageStream": config.message_stream,
        }
        if mail.cc:
            body["Cc"] = ", ".join(formatted(a) for a in mail.cc)
        if mail.html:
            body["HtmlBody"] = mail.html
        answer = call(
            "postmark",
            "POST",
            f"{config.api_url.rstrip('/')}/email",
            timeout_s=config.timeout_s,
            json=body,
            headers=_headers(config),
        ).json()
        if answer.get("ErrorCode", 0) != 0 or not answer.get("MessageID"):
            raise SendFailed(f"postmark: {answer}", outcome="permanent")
        return str(answer["MessageID"])

    def find(self, mail: OutboundMail, config: PostmarkOutbound) -> str | None:
        answer = call(
            "postmark",
            "GET",
            f"{config.api_url.rstrip('/')}/messages/outbound",
            timeout_s=config.timeout_s,
            params={
                "count": 50,
                "offset": 0,
                "recipient": ascii_email(mail.to[0]),
                f"metadata_{METADATA_KEY}": mail.reply_key,
            },
            headers=_headers(config),
        ).json()
        for message in answer.get("Messages") or []:
            if (message.get("Metadata") or {}).get(METADATA_KEY) == mail.reply_key:
                return str(message["MessageID"])
        return None


def _headers(config: PostmarkOutbound) -> dict[str, str]:
    return {"Accept": "application/json", "X-Postmark-Server-Token": config.server_token}
