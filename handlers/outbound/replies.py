"""An agent's reply, from the queue to the customer, sent once: ``queued`` → ``sending`` →
``sent`` / ``failed``.

1. ``queue_reply`` (API, CLI) composes the mail once, stores it as an outbound ``Message`` and a
   ``Reply`` in one transaction, keyed by the caller's idempotency key; the task
   ``inboxsync.send_reply`` follows.
2. ``attempt`` (the task) claims the reply with a conditional update, ``queued`` → ``sending`` with
   a lease, and commits that before it talks to the provider. A second run of the task (Celery
   redelivered it, a retry raced it) finds nothing ``queued`` and sends nothing.
3. It then sends (outside any transaction) and records the outcome, fenced by the attempt number:
   a worker whose lease ran out cannot overwrite what a later attempt recorded.
4. A failure the provider certainly did not act on is retried with exponential backoff and jitter
   (``outbound_retry_*``); a permanent one fails the reply. An attempt whose outcome is unknown (no
   answer in time, a worker that died mid-send: its lease runs out and ``sweep`` requeues it) marks
   the reply ``uncertain``: the next attempt first asks the provider whether it has the mail
   (handlers/outbound/base.py) and sends only if not. A provider that cannot be asked gets no blind
   second send: the reply fails with the reason, and an agent who checked resends it (``resend``).
"""

from __future__ import annotations

import hashlib
import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from pydantic import TypeAdapter, ValidationError
from sqlalchemy import Row, and_, or_, select, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

from handlers.channels.base import describe
from handlers.outbound import SENDERS
from handlers.outbound.base import LookupUnsupported, Outcome, SendFailed
from handlers.outbound.chat import compose_chat
from handlers.outbound.compose import compose
from schemas.outbound import MAIL_VIAS, OutboundChat, OutboundConfig, OutboundMail, ReplyIn
from settings import Settings, get_settings
from store import threads
from store.db import reading, transaction
from store.models import Conversation, Inbox, Message, Reply

SEND_TASK = "inboxsync.send_reply"
CONFIG = TypeAdapter(OutboundConfig)


class ReplyNotFound(LookupError):
    pass


class ReplyRefused(ValueError):
    """The reply cannot be queued (or resent); ``code`` names why for the API."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Attempted:
    """What ``attempt`` did: ``sent``, ``failed``, ``retry`` (in ``retry_in_s``) or ``skipped``
    (nothing was due: another run has it, or it is done)."""

    outcome: str
    retry_in_s: float | None = None


def parse_config(raw: dict[str, Any] | None) -> Any:
    if not raw:
        raise ReplyRefused("no_outbound", "this inbox has no outbound configuration")
    try:
        return CONFIG.validate_python(raw)
    except ValidationError as exc:
        # describe() names fields and problems, never values: this one holds credentials.
        raise ReplyRefused(
            "bad_outbound", f"the inbox's outbound configuration: {describe(exc)}"
        ) from None


# ---- queueing ----------------------------------------------------------------------------------


def request_digest(body: ReplyIn) -> str:
    return hashlib.sha256(orjson.dumps(body.model_dump(), option=orjson.OPT_SORT_KEYS)).hexdigest()


def queue_reply(
    *,
    account_id: int | None,
    conversation_id: int,
    body: ReplyIn,
    key: str | None,
    now: datetime | None = None,
) -> tuple[int, bool]:
    """Queue a reply; returns its id and whether this call created it (``False``: a retry with
    the same key, answered with the first reply). ``account_id`` ``None`` is the admin."""
    now = now or datetime.now(UTC)
    digest = request_digest(body)
    reply_key = key or f"reply:{uuid.uuid4()}"
    if (prior := _prior(reply_key, digest)) is not None:
        return prior, False
    try:
        with transaction() as session:
            return _insert(session, account_id, conversation_id, body, reply_key, digest, now), True
    except sa_exc.IntegrityError:
        if (prior := _prior(reply_key, digest)) is not None:  # a concurrent retry won
            return prior, False
        raise


def _prior(reply_key: str, digest: str) -> int | None:
    with reading() as session:
        row = session.execute(
            select(Reply.id, Reply.request_sha256).where(Reply.key == reply_key)
        ).first()
    if row is None:
        return None
    if row.request_sha256 != digest:
        raise ReplyRefused(
            "idempotency_key_reused", "this Idempotency-Key was used with another body"
        )
    return int(row.id)


def _insert(
    session: Session,
    account_id: int | None,
    conversation_id: int,
    body: ReplyIn,
    reply_key: str,
    digest: str,
    now: datetime,
) -> int:
    conv = session.get(Conversation, conversation_id)
    if conv is None or (account_id is not None and conv.account_id != account_id):
        raise ReplyNotFound(f"conversation {conversation_id} not found")
    if conv.removed_by is not None:
        raise ReplyRefused("conversation_removed", f"conversation {conversation_id} is trashed")
    inbox = session.get(Inbox, conv.inbox_id)
    assert inbox is not None
    config = parse_config(inbox.outbound)
    if config.via not in MAIL_VIAS:
        return _insert_chat(session, conv, inbox, config, body, reply_key, digest, now)
    mail = compose(
        reply_key=reply_key,
        conversation_id=conversation_id,
        sender=config.from_,
        answered=_newest_customer_mail(session, conversation_id),
        body=body,
        now=now,
    )
    kept = mail.model_dump(mode="json", by_alias=True)
    message = Message(
        inbox_id=inbox.id,
        conversation_id=conversation_id,
        external_id=f"mid:{mail.message_id}"[:500],
        direction="outbound",
        sender=mail.from_.email[:320],
        text=mail.text,
        sent_at=now,
        received_at=now,
        stored_at=now,
        headers={"email": kept},
        automatic=False,
    )
    session.add(message)
    session.flush()
    # The customer's answer names our Message-ID: record it as one of the conversation's thread
    # ids (handlers/threading.py), so the answer finds this conversation.
    threads.lock(session, [(inbox.id, message.external_id)])
    threads.point(session, {(inbox.id, message.external_id): conversation_id})
    reply = Reply(
        key=reply_key,
        request_sha256=digest,
        account_id=conv.account_id,
        inbox_id=inbox.id,
        conversation_id=conversation_id,
        message_id=message.id,
        via=config.via,
        rfc_message_id=mail.message_id,
        mail=kept,
        state="queued",
        attempts=0,
        attempts_left=get_settings().outbound_max_attempts,
        uncertain=False,
        next_attempt_at=now,
        created_at=now,
    )
    session.add(reply)
    session.flush()
    return reply.id


def _insert_chat(
    session: Session,
    conv: Conversation,
    inbox: Inbox,
    config: Any,
    body: ReplyIn,
    reply_key: str,
    digest: str,
    now: datetime,
) -> int:
    """A chat reply: the outbound message and its ``Reply``, like a mail's."""
    chat = compose_chat(
        reply_key=reply_key,
        answered=_newest_customer(session, conv.id, "chat"),
        body=body,
        now=now,
    )
    kept = chat.model_dump(mode="json")
    message = Message(
        inbox_id=inbox.id,
        conversation_id=conv.id,
        external_id=f"out:{chat.client_id}",
        direction="outbound",
        sender=config.via,
        text=chat.text,
        sent_at=now,
        received_at=now,
        stored_at=now,
        headers={"chat": {"outbound": kept}},
        automatic=False,
    )
    session.add(message)
    session.flush()
    reply = Reply(
        key=reply_key,
        request_sha256=digest,
        account_id=conv.account_id,
        inbox_id=inbox.id,
        conversation_id=conv.id,
        message_id=message.id,
        via=config.via,
        rfc_message_id=chat.client_id,
        mail=kept,
        state="queued",
        attempts=0,
        attempts_left=get_settings().outbound_max_attempts,
        uncertain=False,
        next_attempt_at=now,
        created_at=now,
    )
    session.add(reply)
    session.flush()
    return reply.id


def _newest_customer_mail(session: Session, conversation_id: int) -> dict[str, Any] | None:
    return _newest_customer(session, conversation_id, "email")


def _newest_customer(session: Session, conversation_id: int, kind: str) -> dict[str, Any] | None:
    """What the channel kept (``headers[kind]``) of the customer's newest message that is not
    an auto-reply or a bounce."""
    rows = session.execute(
        select(Message.headers)
        .where(
            Message.conversation_id == conversation_id,
            Message.direction == "inbound",
            Message.automatic.is_(False),
        )
        .order_by(Message.stored_at.desc(), Message.id.desc())
        .limit(20)
    ).scalars()
    for headers in rows:
        if isinstance(headers, dict) and isinstance(headers.get(kind), dict):
            return headers[kind]  # type: ignore[no-any-return]
    return None


def resend(reply_id: int, *, account_id: int | None, now: datetime | None = None) -> None:
    """Queue a failed reply again (an agent's decision, e.g. after an unknown outcome)."""
    now = now or datetime.now(UTC)
    with transaction() as session:
        reply = session.get(Reply, reply_id)
        if reply is None or (account_id is not None and reply.account_id != account_id):
            raise ReplyNotFound(f"reply {reply_id} not found")
        if reply.state != "failed":
            raise ReplyRefused(
                "not_failed", f"reply {reply_id} is {reply.state}; only a failed one is resent"
            )
        reply.state = "queued"
        reply.uncertain = False
        reply.attempts_left = get_settings().outbound_max_attempts
        reply.next_attempt_at = now


# ---- sending -----------------------------------------------------------------------------------


def attempt(reply_id: int, *, now: datetime | None = None) -> Attempted:
    """One attempt at a due reply (the body of ``inboxsync.send_reply``)."""
    settings = get_settings()
    now = now or datetime.now(UTC)
    claimed = _claim(reply_id, now, settings)
    if claimed is None:
        return _not_due(reply_id, now)
    number, left, uncertain, mail_json, raw_config = claimed
    try:
        config = parse_config(raw_config)
        mail: OutboundMail | OutboundChat = (
            OutboundMail.model_validate(mail_json)
            if config.via in MAIL_VIAS
            else OutboundChat.model_validate(mail_json)
        )
        provider_id = _deliver(mail, config, uncertain)
    except SendFailed as exc:
        return _failed_attempt(reply_id, number, left, exc, now, settings)
    except LookupUnsupported as exc:
        _record(
            reply_id,
            number,
            state="failed",
            error=f"outcome unknown, and {exc}: not sent again automatically; resend it"
            " once you know the customer did not get it",
        )
        return Attempted("failed")
    except ReplyRefused as exc:
        _record(reply_id, number, state="failed", error=str(exc))
        return Attempted("failed")
    except Exception as exc:  # a bug, or a library's surprise: never a blind second send
        failure = SendFailed(f"{type(exc).__name__}: {exc}", outcome="uncertain")
        return _failed_attempt(reply_id, number, left, failure, now, settings)
    _record(reply_id, number, state="sent", provider_message_id=provider_id[:300], sent_at=now)
    return Attempted("sent")


def _deliver(mail: OutboundMail | OutboundChat, config: Any, uncertain: bool) -> str:
    sender = SENDERS[config.via]
    if uncertain:
        try:
            found = sender.find(mail, config)
        except SendFailed as exc:  # the earlier attempt's outcome stays unknown
            outcome: Outcome = "permanent" if exc.outcome == "permanent" else "uncertain"
            raise SendFailed(
                f"asking the provider whether it has the mail: {exc}",
                outcome=outcome,
                retry_after_s=exc.retry_after_s,
            ) from None
        if found is not None:
            return found
    return sender.send(mail, config)


def _claim(
    reply_id: int, now: datetime, settings: Settings
) -> tuple[int, int, bool, dict[str, Any], dict[str, Any] | None] | None:
    """Take the reply if it is due: its attempt number, attempts left after this one, whether
    an earlier attempt's outcome is unknown, the mail, and the inbox's outbound setting."""
    with transaction() as session:
        taken = session.execute(
            update(Reply)
            .where(
                Reply.id == reply_id,
                Reply.state == "queued",
                or_(Reply.next_attempt_at.is_(None), Reply.next_attempt_at <= now),
            )
            .values(
                state="sending",
                attempts=Reply.attempts + 1,
                attempts_left=Reply.attempts_left - 1,
                lease_until=now + timedelta(seconds=settings.outbound_lease_s),
            )
        )
        if taken.rowcount != 1:  # type: ignore[attr-defined]
            return None
        row = session.execute(
            select(Reply.attempts, Reply.attempts_left, Reply.uncertain, Reply.mail, Inbox.outbound)
            .join(Inbox, Inbox.id == Reply.inbox_id)
            .where(Reply.id == reply_id)
        ).one()
        return row.attempts, row.attempts_left, row.uncertain, row.mail, row.outbound


def _not_due(reply_id: int, now: datetime) -> Attempted:
    with reading() as session:
        row = session.execute(
            select(Reply.state, Reply.next_attempt_at).where(Reply.id == reply_id)
        ).first()
    if row is not None and row.state == "queued" and row.next_attempt_at is not None:
        due = row.next_attempt_at
        return Attempted("skipped", retry_in_s=max((due - now).total_seconds(), 0.0))
    return Attempted("skipped")


def _failed_attempt(
    reply_id: int,
    number: int,
    left: int,
    exc: SendFailed,
    now: datetime,
    settings: Settings,
) -> Attempted:
    if exc.outcome == "permanent" or left <= 0:
        prefix = "" if exc.outcome == "permanent" else "gave up after the last attempt: "
        _record(reply_id, number, state="failed", error=f"{prefix}{exc}")
        return Attempted("failed")
    uncertain = exc.outcome == "uncertain"
    delay = backoff(settings, number)
    if exc.retry_after_s:
        delay = max(delay, exc.retry_after_s)
    if uncertain:
        delay = max(delay, settings.outbound_lookup_after_s)
    _record(
        reply_id,
        number,
        state="queued",
        uncertain=uncertain,
        error=str(exc)[:2000],
        next_attempt_at=now + timedelta(seconds=delay),
    )
    return Attempted("retry", retry_in_s=delay)


def backoff(settings: Settings, attempt_number: int) -> float:
    """Exponential, capped, with jitter: half the step fixed, half random."""
    step = min(
        settings.outbound_retry_max_s,
        settings.outbound_retry_base_s * 2 ** max(attempt_number - 1, 0),
    )
    return step / 2 + random.uniform(0, step / 2)


def _record(reply_id: int, number: int, **values: Any) -> bool:
    """Write an attempt's outcome, unless a later attempt took the reply over meanwhile."""
    values.setdefault("lease_until", None)
    if values.get("state") in ("sent", "failed"):
        values.setdefault("next_attempt_at", None)
    if values.get("state") == "sent":
        values.setdefault("error", None)
        values.setdefault("uncertain", False)
    with transaction() as session:
        done = session.execute(
            update(Reply)
            .where(Reply.id == reply_id, Reply.state == "sending", Reply.attempts == number)
            .values(**values)
        )
        return bool(done.rowcount)  # type: ignore[attr-defined]


# ---- recovery ----------------------------------------------------------------------------------


def sweep(now: datetime | None = None) -> list[int]:
    """Requeue replies whose worker died mid-send (lease ran out: outcome unknown) and return the
    ids of queued replies that are due but whose task may have been lost, to be enqueued again."""
    settings = get_settings()
    now = now or datetime.now(UTC)
    with transaction() as session:
        stale = session.execute(
            select(Reply.id, Reply.attempts_left).where(
                Reply.state == "sending", Reply.lease_until < now
            )
        ).all()
        for row in stale:
            _requeue_stale(session, row, now, settings)
        due = session.scalars(
            select(Reply.id)
            .where(
                and_(
                    Reply.state == "queued",
                    Reply.next_attempt_at
                    <= now - timedelta(seconds=settings.outbound_sweep_grace_s),
                )
            )
            .order_by(Reply.next_attempt_at)
            .limit(1000)
        ).all()
    return list(due)


def _requeue_stale(session: Session, row: Row[int, int], now: datetime, settings: Settings) -> None:
    stopped = "the worker stopped while sending (its lease ran out)"
    values: dict[str, Any] = {"lease_until": None, "uncertain": True, "error": stopped}
    if row.attempts_left <= 0:
        values.update(state="failed", next_attempt_at=None, error=f"gave up: {stopped}")
    else:
        delay = settings.outbound_lookup_after_s
        values.update(state="queued", next_attempt_at=now + timedelta(seconds=delay))
    session.execute(
        update(Reply).where(Reply.id == row.id, Reply.state == "sending").values(**values)
    )
