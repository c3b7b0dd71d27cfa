"""The reply as a mail: who it goes to, its subject, and the headers that thread it.

The customer's mail client threads our reply under their mail by ``In-Reply-To`` / ``References``
(RFC 5322 §3.6.4); our own ``Message-ID`` lets their answer thread back to this conversation
(handlers/ingest.py), and the ``[#C123]`` subject token does the same for clients that drop the
headers.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from email.headerregistry import Address as MimeAddress
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, getaddresses, parseaddr
from typing import Any

from handlers.channels.mail import SUBJECT_TOKEN
from schemas.email import Address
from schemas.outbound import OutboundMail, ReplyIn

REPLY_PREFIX = re.compile(r"^\s*(re|aw|sv|antw|ynt|odp)\s*:", re.IGNORECASE)
MAX_REFERENCES = 20


class ComposeError(ValueError):
    """The reply cannot be addressed or is malformed; the message says what to give."""


def compose(
    *,
    reply_key: str,
    conversation_id: int,
    sender: str,
    answered: dict[str, Any] | None,
    body: ReplyIn,
    now: datetime,
) -> OutboundMail:
    """The mail answering ``answered`` (the parsed form of the customer's newest mail, as kept
    under ``Message.headers["email"]``; ``None`` when the conversation has no mail to answer)."""
    answered = answered or {}
    from_ = _address(sender, "the inbox's outbound 'from'")
    if body.to:
        to = [_address(a, "to") for a in body.to]
    else:
        # Kept mails store the sender under "from_" (ParsedEmail's field name).
        author = answered.get("from_") or answered.get("from")
        to = [Address(**a) for a in answered.get("reply_to") or []] or (
            [Address(**author)] if author else []
        )
        if not to:
            raise ComposeError("the conversation has no mail to answer: give 'to'")
    cc = [_address(a, "cc") for a in body.cc]
    domain = from_.email.rpartition("@")[2] or "inboxsync.invalid"
    parent = answered.get("message_id")
    references = [*answered.get("references", []), *([parent] if parent else [])]
    if len(references) > MAX_REFERENCES:  # keep the thread's root and the newest (RFC 5322)
        references = [references[0], *references[-(MAX_REFERENCES - 1) :]]
    return OutboundMail.model_validate(
        {
            "reply_key": reply_key,
            "message_id": f"{uuid.uuid4().hex}.c{conversation_id}@{_ascii_domain(domain)}",
            "from": from_,
            "to": to,
            "cc": cc,
            "subject": _subject(body.subject or answered.get("subject") or "", conversation_id),
            "text": body.text,
            "html": body.html,
            "in_reply_to": parent,
            "references": references,
            "date": now,
        }
    )


def _subject(subject: str, conversation_id: int) -> str:
    subject = " ".join(subject.split()) or "Your message"
    if not REPLY_PREFIX.match(subject):
        subject = f"Re: {subject}"
    if not SUBJECT_TOKEN.search(subject):
        subject = f"{subject} [#C{conversation_id}]"
    return subject


def _address(value: str, what: str) -> Address:
    parsed = getaddresses([value])
    if len(parsed) != 1 or "@" not in parsed[0][1] or parseaddr(value)[1] == "":
        raise ComposeError(f"{what}: {value!r} is not one email address")
    name, email = parsed[0]
    local, _, domain = email.rpartition("@")
    if not local or not domain or any(c.isspace() for c in email):
        raise ComposeError(f"{what}: {value!r} is not one email address")
    return Address(name=name, email=email)


def _ascii_domain(domain: str) -> str:
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return domain


def ascii_email(address: Address) -> str:
    """The address as SMTP and the providers' APIs take it: the domain in IDNA (punycode)."""
    local, _, domain = address.email.rpartition("@")
    return f"{local}@{_ascii_domain(domain)}"


def formatted(address: Address) -> str:
    """``Name <local@domain>``, the name encoded as RFC 2047 needs."""
    local, _, domain = ascii_email(address).rpartition("@")
    return str(MimeAddress(display_name=address.name, username=local, domain=domain))


def threading_headers(mail: OutboundMail) -> dict[str, str]:
    headers = {"Message-ID": f"<{mail.message_id}>"}
    if mail.in_reply_to:
        headers["In-Reply-To"] = f"<{mail.in_reply_to}>"
    if mail.references:
        headers["References"] = " ".join(f"<{r}>" for r in mail.references)
    return headers


def to_mime(mail: OutboundMail) -> EmailMessage:
    """The whole mail as MIME (for SMTP): text, and HTML as an alternative when there is one."""
    msg = EmailMessage(policy=SMTP)
    msg["From"] = formatted(mail.from_)
    msg["To"] = ", ".join(formatted(a) for a in mail.to)
    if mail.cc:
        msg["Cc"] = ", ".join(formatted(a) for a in mail.cc)
    msg["Subject"] = mail.subject
    msg["Date"] = format_datetime(mail.date)
    for name, value in threading_headers(mail).items():
        msg[name] = value
    msg.set_content(mail.text)
    if mail.html:
        msg.add_alternative(mail.html, subtype="html")
    return msg
