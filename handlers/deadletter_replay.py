"""Dead letters seen, replayed and discarded: what ``/dead-letters`` (api/deadletters.py) and
``inboxsync dead-letters`` (cli/ops.py) call. Recording them is handlers/deadletters.py.

**A replay goes through the normal, idempotent path**, never around it. The store is changed
first, in one transaction with the letter's new state; the broker is told after the commit, as
the ingress does:

- an ingest delivery is journaled again (a new delivery id) and published: the worker stores its
  messages, or finds them stored by now (``duplicate``);
- an ingest batch that failed as a whole (a task-level letter naming journal rows) publishes the
  rows still journaled;
- a change goes back into the journal of pending changes and is published, unless it has been
  applied since: its id makes it applied once;
- a reply is queued again if it ``failed`` and published if queued; a sent reply, or one a worker
  is sending, is left alone.

A publish that fails loses nothing: the periodic round publishes journal rows, pending changes
and due replies again (workers/periodic.py). Replaying a letter twice changes nothing the second
time (a duplicate delivery, a change already applied, a reply sent). A letter records its state
(``waiting``, ``replayed``, ``discarded``), how often and when it was last replayed, and as what.
A replayed letter that fails again is waiting again (handlers/deadletters.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from pydantic import ValidationError
from sqlalchemy import ColumnElement, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from handlers import journal, pipeline
from handlers.outbound.replies import SEND_TASK
from schemas.changes import ChangeEnvelope
from settings import get_settings
from store.db import is_postgres, reading, transaction
from store.models import Change, DeadLetter, Delivery, PendingChange, Reply

log = logging.getLogger(__name__)
PAGE = 500


class NotFound(LookupError):
    """No such letter, or not the caller's to see."""


class Refused(ValueError):
    """This letter cannot be replayed (discarded, or of a task with no replay)."""


class Publisher(Protocol):
    """Who puts work on the broker (workers/publish.py)."""

    def ingest(self, delivery_ids: list[int]) -> None: ...

    def change(self, envelope: dict[str, Any], queue: str) -> None: ...

    def reply(self, reply_id: int, countdown_s: float | None = None) -> None: ...


@dataclass(frozen=True)
class Filter:
    """Which letters: every field given must match. ``task`` may be short (``apply_change``);
    ``reason`` is a substring of the error, in any case."""

    task: str | None = None
    inbox_id: int | None = None
    reason: str | None = None
    older_than: datetime | None = None
    newer_than: datetime | None = None
    state: str | None = None

    def where(self, account_id: int | None) -> list[ColumnElement[bool]]:
        conditions = _visible(account_id)
        if self.task:
            conditions.append(DeadLetter.task.in_([self.task, f"inboxsync.{self.task}"]))
        if self.inbox_id is not None:
            conditions.append(DeadLetter.inbox_id == self.inbox_id)
        if self.reason:
            conditions.append(DeadLetter.error.icontains(self.reason, autoescape=True))
        if self.older_than is not None:
            conditions.append(DeadLetter.created_at < self.older_than)
        if self.newer_than is not None:
            conditions.append(DeadLetter.created_at > self.newer_than)
        if self.state:
            conditions.append(DeadLetter.state == self.state)
        return conditions


def _visible(account_id: int | None) -> list[ColumnElement[bool]]:
    """The admin (None) sees every letter; an account those that name it."""
    return [] if account_id is None else [DeadLetter.account_id == account_id]


# ---- reading ---------------------------------------------------------------------------------


def find(
    where: Filter, *, account_id: int | None, after_id: int = 0, limit: int = 50
) -> list[DeadLetter]:
    """One page of letters, by id, after ``after_id``."""
    with reading() as session:
        return list(
            session.scalars(
                select(DeadLetter)
                .where(DeadLetter.id > after_id, *where.where(account_id))
                .order_by(DeadLetter.id)
                .limit(limit)
            )
        )


def get(letter_id: int, *, account_id: int | None) -> DeadLetter:
    with reading() as session:
        letter = session.scalar(
            select(DeadLetter).where(DeadLetter.id == letter_id, *_visible(account_id))
        )
    if letter is None:
        raise NotFound(f"dead letter {letter_id} not found")
    return letter


# ---- discarding ------------------------------------------------------------------------------


def discard(letter_id: int, *, account_id: int | None) -> DeadLetter:
    """Mark a letter discarded (kept, never replayed); discarding again changes nothing."""
    with transaction() as session:
        letter = next(iter(_locked(session, [letter_id], account_id)), None)
        if letter is None:
            raise NotFound(f"dead letter {letter_id} not found")
        if letter.state != "discarded":
            letter.state, letter.discarded_at = "discarded", datetime.now(UTC)
        return letter


# ---- replaying -------------------------------------------------------------------------------


@dataclass
class Work:
    """What a replay publishes once its transaction has committed."""

    deliveries: list[int] = field(default_factory=list)
    changes: list[tuple[dict[str, Any], str]] = field(default_factory=list)
    replies: list[int] = field(default_factory=list)


@dataclass
class Replayed:
    letters: list[DeadLetter] = field(default_factory=list)
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (id, why)
    published: bool = True


def replay(letter_id: int, *, account_id: int | None, publisher: Publisher) -> Replayed:
    """Replay one letter: ``NotFound``, or ``Refused`` with nothing changed."""
    done = _replay([letter_id], account_id, publisher, strict=True)
    if not done.letters:
        raise NotFound(f"dead letter {letter_id} not found")
    return done


def replay_matching(
    where: Filter, *, account_id: int | None, publisher: Publisher, limit: int | None = None
) -> Replayed:
    """Replay every letter that matches (``waiting`` ones unless ``where.state`` says
    ``replayed``; never discarded ones), a page at a time; what cannot be replayed is skipped."""
    if where.state not in (None, "waiting", "replayed"):
        raise Refused(f"only waiting or replayed letters are replayed, not {where.state}")
    where = replace(where, state=where.state or "waiting")
    total = Replayed()
    after = 0
    while limit is None or len(total.letters) < limit:
        page = PAGE if limit is None else min(PAGE, limit - len(total.letters))
        with reading() as session:
            ids = list(
                session.scalars(
                    select(DeadLetter.id)
                    .where(DeadLetter.id > after, *where.where(account_id))
                    .order_by(DeadLetter.id)
                    .limit(page)
                )
            )
        if not ids:
            break
        done = _replay(ids, account_id, publisher, strict=False, state=where.state)
        total.letters += done.letters
        total.skipped += done.skipped
        total.published = total.published and done.published
        after = ids[-1]
        if len(ids) < page:
            break
    return total


def _replay(
    ids: list[int],
    account_id: int | None,
    publisher: Publisher,
    *,
    strict: bool,
    state: str | None = None,
) -> Replayed:
    now = datetime.now(UTC)
    work, done = Work(), Replayed()
    with transaction() as session:
        for letter in _locked(session, ids, account_id):
            if state is not None and letter.state != state:
                continue  # a concurrent replay or discard got there first
            try:
                if letter.state == "discarded":
                    raise Refused(f"dead letter {letter.id} was discarded")
                note = _put_back(session, letter, work, now)
            except Refused as exc:
                if strict:
                    raise
                done.skipped.append((letter.id, str(exc)))
                continue
            letter.state, letter.replayed_at, letter.replayed_as = "replayed", now, note[:300]
            letter.replays += 1
            done.letters.append(letter)
    done.published = _publish(work, publisher)
    return done


def _locked(session: Session, ids: list[int], account_id: int | None) -> list[DeadLetter]:
    return list(
        session.scalars(
            select(DeadLetter)
            .where(DeadLetter.id.in_(ids), *_visible(account_id))
            .order_by(DeadLetter.id)
            .with_for_update()
        )
    )


def _put_back(session: Session, letter: DeadLetter, work: Work, now: datetime) -> str:
    """Put the letter's work back where the normal path takes it from; what it became."""
    payload = journal.unwrapped(letter.payload)
    args = payload.get("args")
    first = args[0] if isinstance(args, list) and args else None
    if letter.task == pipeline.INGEST_TASK and args is None:
        return _delivery(session, payload, work, now)
    if letter.task == pipeline.INGEST_TASK and isinstance(first, list):
        return _batch(session, first, work)
    if letter.task == pipeline.APPLY_TASK and isinstance(first, dict):
        return _change(session, first, work, now)
    if letter.task == SEND_TASK and isinstance(first, int):
        return _reply(session, first, work, now)
    raise Refused(f"no replay for {letter.task} with this payload")


def _delivery(session: Session, d: dict[str, Any], work: Work, now: datetime) -> str:
    """Journal the delivery again, as the ingress did: the same inbox, provider, payload and
    acceptance time (so that, failing again, it is the same letter)."""
    try:
        received_at = datetime.fromisoformat(d["received_at"])
        row = Delivery(
            inbox_id=int(d["inbox_id"]),
            provider=str(d["provider"]),
            received_at=received_at,
            enqueued_at=now,
            payload=journal.storable(journal.unwrapped(d["payload"])),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise Refused(f"the delivery is malformed: {exc!r}") from None
    if received_at.tzinfo is None:
        raise Refused("the delivery's received_at has no time zone")
    session.add(row)
    session.flush()
    work.deliveries.append(row.id)
    return f"delivery {row.id}"


def _batch(session: Session, ids: list[Any], work: Work) -> str:
    """A batch that failed as a whole: its journal rows still there are published again."""
    wanted = [i for i in ids if isinstance(i, int) and not isinstance(i, bool)]
    still = list(session.scalars(select(Delivery.id).where(Delivery.id.in_(wanted))))
    work.deliveries += still
    if not still:
        return "nothing left in the journal: its deliveries were processed since"
    return "deliveries " + ", ".join(map(str, still))


def _change(session: Session, envelope: dict[str, Any], work: Work, now: datetime) -> str:
    change_id = envelope.get("id")
    if isinstance(change_id, str) and session.get(Change, change_id) is not None:
        return f"change {change_id}: applied already, nothing to do"
    try:
        env = ChangeEnvelope.model_validate(envelope)
        queue = pipeline.queue_for_action(session, env.action, get_settings())
    except ValidationError:
        # A worker that did not know this envelope may know it now (the "fix" was a deploy);
        # if not, the letter is waiting again with the error.
        work.changes.append((envelope, "inbox"))
        return f"change {change_id!r}"
    dialect_insert = postgresql.insert if is_postgres(session) else sqlite.insert
    session.execute(
        dialect_insert(PendingChange)
        .values(
            id=env.id, account_id=env.account_id, queue=queue, envelope=envelope, enqueued_at=now
        )
        .on_conflict_do_nothing()
    )
    work.changes.append((envelope, queue))
    return f"change {env.id}"


def _reply(session: Session, reply_id: int, work: Work, now: datetime) -> str:
    reply = session.get(Reply, reply_id, with_for_update=True)
    if reply is None:
        return f"reply {reply_id} no longer exists, nothing to do"
    if reply.state in ("sent", "sending"):
        return f"reply {reply_id} is {reply.state}, nothing to do"
    if reply.state == "failed":
        # As a resend does, but ``uncertain`` stays: if an attempt may have reached the
        # provider, the next one asks it first (handlers/outbound/replies.py).
        reply.state, reply.next_attempt_at, reply.lease_until = "queued", now, None
        reply.attempts_left = get_settings().outbound_max_attempts
    work.replies.append(reply_id)
    return f"reply {reply_id} queued"


def _publish(work: Work, publisher: Publisher) -> bool:
    """Tell the broker; False if it refused (the periodic round publishes it all later)."""
    batch = get_settings().ingest_batch_max
    try:
        for start in range(0, len(work.deliveries), batch):
            publisher.ingest(work.deliveries[start : start + batch])
        for envelope, queue in work.changes:
            publisher.change(envelope, queue)
        for reply_id in work.replies:
            publisher.reply(reply_id)
    except Exception as exc:
        log.warning(
            "replayed dead letters are recorded, but the broker refused them (%s); the "
            "periodic round publishes them",
            type(exc).__name__,
        )
        return False
    return True
