"""Mailgun: ``POST /v3/<domain>/messages`` (form fields; ``h:`` headers, ``v:`` variables); found
again among the domain's ``accepted`` events by our Message-ID or the reply key variable.

Mailgun's events are searchable for at least three days, and appear within seconds to minutes:
``outbound_lookup_after_s`` waits before asking. https://documentation.mailgun.com/
"""

from __future__ import annotations

from typing import Any

from handlers.outbound.base import SendFailed, call
from handlers.outbound.compose import ascii_email, formatted, threading_headers
from schemas.outbound import MailgunOutbound, OutboundMail

VARIABLE = "inboxsync-reply"


class MailgunSender:
    via = "mailgun"

    def send(self, mail: OutboundMail, config: MailgunOutbound) -> str:
        form: list[tuple[str, str]] = [
            ("from", formatted(mail.from_)),
            *[("to", formatted(a)) for a in mail.to],
            *[("cc", formatted(a)) for a in mail.cc],
            ("subject", mail.subject),
            ("text", mail.text),
            *[(f"h:{k}", v) for k, v in threading_headers(mail).items()],
            (f"v:{VARIABLE}", mail.reply_key),
        ]
        if mail.html:
            form.append(("html", mail.html))
        answer = call(
            "mailgun",
            "POST",
            f"{_base(config)}/messages",
            timeout_s=config.timeout_s,
            data=form,
            auth=("api", config.api_key),
        ).json()
        if not answer.get("id"):
            raise SendFailed(f"mailgun: no id in {answer}", outcome="permanent")
        return str(answer["id"]).strip("<>")

    def find(self, mail: OutboundMail, config: MailgunOutbound) -> str | None:
        answer = call(
            "mailgun",
            "GET",
            f"{_base(config)}/events",
            timeout_s=config.timeout_s,
            params={"event": "accepted", "recipient": ascii_email(mail.to[0]), "limit": 300},
            auth=("api", config.api_key),
        ).json()
        for event in answer.get("items") or []:
            if _is_ours(event, mail):
                return mail.message_id
        return None


def _is_ours(event: dict[str, Any], mail: OutboundMail) -> bool:
    headers = (event.get("message") or {}).get("headers") or {}
    variables = event.get("user-variables") or {}
    return (
        str(headers.get("message-id", "")).strip("<>") == mail.message_id
        or variables.get(VARIABLE) == mail.reply_key
    )


def _base(config: MailgunOutbound) -> str:
    return f"{config.api_url.rstrip('/')}/v3/{config.domain}"
