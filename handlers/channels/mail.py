"""What every email provider shares once a mail is parsed: one ``InboundMessage`` per mail.

- Identity: ``mid:<Message-ID>`` when the mail has one, so the same mail arriving twice through
  one provider or once through each of two providers is one message (the store's unique
  ``(inbox, external_id)``); else the provider's own id.
- Threading: the ids the mail answers (In-Reply-To, then References from the newest) and our reply
  token (``[#C123]`` in the subject, or ``+c123`` in a recipient address) go to the store, which
  follows them to a conversation (handlers/ingest.py); a mail that matches nothing starts a new
  conversation under its own Message-ID. Never by subject text.
- Auto-replies and bounces are marked ``automatic``: stored, they reopen nothing.
- Everything parsed (addresses, subject, sanitized HTML, visible and quoted text, attachments with
  their hashes, all headers) is kept with the message under ``headers["email"]``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

from handlers.channels.base import PayloadError
from handlers.email.parse import UnparseableEmail
from schemas.email import ParsedEmail
from schemas.inbound import InboundMessage
from settings import get_settings

SUBJECT_TOKEN = re.compile(r"\[#C(\d{1,18})\]")
PLUS_TOKEN = re.compile(r"^[^+@]+\+c(\d{1,18})@", re.IGNORECASE)
MAX_TEXT = 1_000_000


def reply_token(parsed: ParsedEmail) -> int | None:
    """The conversation id we put in outgoing mail, if the customer's reply carries it back."""
    if match := SUBJECT_TOKEN.search(parsed.subject):
        return int(match.group(1))
    for address in [*parsed.to, *parsed.cc]:
        if match := PLUS_TOKEN.match(address.email):
            return int(match.group(1))
    return None


def thread_refs(parsed: ParsedEmail) -> list[str]:
    """The ids this mail answers, most telling first, each once."""
    ordered = [*parsed.in_reply_to, *reversed(parsed.references)]
    return list(dict.fromkeys(ref for ref in ordered if ref and ref != parsed.message_id))[:200]


def to_inbound(
    parsed: ParsedEmail,
    *,
    inbox_id: int,
    received_at: datetime,
    provider: str,
    provider_id: str | None,
    fallback_id: bytes,
) -> InboundMessage:
    """One normalized message; ``fallback_id`` (the raw payload) names a mail without any id."""
    if parsed.message_id:
        external_id = f"mid:{parsed.message_id}"
    elif provider_id:
        external_id = f"{provider}:{provider_id}"
    else:
        external_id = f"sha256:{hashlib.sha256(fallback_id).hexdigest()}"
    sender = parsed.from_.email if parsed.from_ and parsed.from_.email else "unknown"
    return InboundMessage(
        inbox_id=inbox_id,
        external_id=external_id[:500],
        provider_id=provider_id[:500] if provider_id else None,
        sender=sender[:320],
        thread_key=external_id[:500],
        text=parsed.text[:MAX_TEXT],
        sent_at=parsed.date or received_at,
        received_at=received_at,
        headers={"email": _kept(parsed, provider, provider_id)},
        thread_refs=thread_refs(parsed),
        reply_token=reply_token(parsed),
        automatic=parsed.auto_submitted or parsed.bounce,
    )


def one_message(
    parse: Callable[[], tuple[ParsedEmail, list[bytes]]],
    *,
    inbox_id: int,
    received_at: datetime,
    provider: str,
    provider_id: str | None,
    fallback_id: bytes,
) -> list[InboundMessage]:
    """What an email adapter's ``normalize`` returns: the mail ``parse`` reads, as one message;
    a mail with nothing usable in it is a ``PayloadError`` (the worker dead-letters it)."""
    try:
        parsed, contents = parse()
    except UnparseableEmail as exc:
        raise PayloadError(f"unparseable mail: {exc}") from None
    parsed = _within_attachment_count(parsed, get_settings().max_attachments_kept)
    message = to_inbound(
        parsed,
        inbox_id=inbox_id,
        received_at=received_at,
        provider=provider,
        provider_id=provider_id,
        fallback_id=fallback_id,
    )
    kept = [data for a, data in zip(parsed.attachments, contents, strict=True) if a.stored]
    return [message.model_copy(update={"blobs": kept})] if kept else [message]


def _within_attachment_count(parsed: ParsedEmail, limit: int) -> ParsedEmail:
    """Keep the bytes of the first ``limit`` attachments; list the others as not stored. Each
    kept one is a file written and fsynced: a mail with ten thousand of them cost a worker a
    minute and more."""
    stored = [i for i, a in enumerate(parsed.attachments) if a.stored]
    if len(stored) <= limit:
        return parsed
    dropped = set(stored[limit:])
    attachments = [
        a.model_copy(update={"stored": False}) if i in dropped else a
        for i, a in enumerate(parsed.attachments)
    ]
    problem = (
        f"{len(stored)} attachments: the bytes of the first {limit} are kept "
        "(INBOXSYNC_MAX_ATTACHMENTS_KEPT), the others are listed only"
    )
    return parsed.model_copy(
        update={"attachments": attachments, "problems": [*parsed.problems, problem]}
    )


def _kept(parsed: ParsedEmail, provider: str, provider_id: str | None) -> dict[str, Any]:
    kept = parsed.model_dump(mode="json", exclude={"text"})
    kept["provider"] = provider
    kept["provider_id"] = provider_id
    return kept
