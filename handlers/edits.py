"""Edits and deletions of stored messages (chat providers announce them as events of their own).

Each is recorded once, by the provider's event id (``message_revisions``: the audit trail), and
applied in the provider's order of edits (``edited_at``): an edit older than the one the message
shows changes nothing, and a deletion is final (its text is removed; the revision records that
and when, not the text). An edit that arrives before its message is kept and applied when the
message is stored (``apply_waiting``, in the same transaction as the message; ``sweep`` catches
the rare edit that raced its message's own transaction).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import and_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from schemas.inbound import MessageEdit
from store.db import is_postgres, transaction
from store.models import Message, MessageRevision


@dataclass(frozen=True)
class EditOutcome:
    message_id: int | None  # None: the message is not stored yet; the edit waits for it
    conversation_id: int | None
    duplicate: bool


def apply(session: Session, edits: list[MessageEdit]) -> list[EditOutcome]:
    """Record and apply ``edits`` (in the caller's transaction); one outcome per edit."""
    out = []
    for edit in edits:
        revision_id = _record(session, edit)
        if revision_id is None:  # seen before: its first application stands
            found = _message(session, edit.inbox_id, edit.external_id)
            out.append(_outcome(found, duplicate=True))
            continue
        target = _message(session, edit.inbox_id, edit.external_id, lock=True)
        if target is not None:
            _apply_one(session, target, revision_id)
        out.append(_outcome(target, duplicate=False))
    return out


def _outcome(message: Message | None, *, duplicate: bool) -> EditOutcome:
    if message is None:
        return EditOutcome(None, None, duplicate)
    return EditOutcome(message.id, message.conversation_id, duplicate)


def apply_waiting(session: Session, keys: Iterable[tuple[int, str]]) -> None:
    """Apply the edits that arrived before these (just stored) messages, in their order."""
    wanted = list(keys)
    if not wanted:
        return
    waiting = session.execute(
        select(MessageRevision.id, MessageRevision.inbox_id, MessageRevision.external_id)
        .where(
            MessageRevision.applied.is_(False),
            MessageRevision.inbox_id.in_({k[0] for k in wanted}),
            MessageRevision.external_id.in_({k[1] for k in wanted}),
        )
        .order_by(MessageRevision.edited_at, MessageRevision.id)
    ).all()
    for row in waiting:
        target = _message(session, row.inbox_id, row.external_id, lock=True)
        if target is not None:
            _apply_one(session, target, row.id)


def sweep() -> int:
    """Apply waiting edits whose message has been stored since (a race with its transaction)."""
    with transaction() as session:
        rows = session.execute(
            select(MessageRevision.inbox_id, MessageRevision.external_id)
            .join(
                Message,
                and_(
                    Message.inbox_id == MessageRevision.inbox_id,
                    Message.external_id == MessageRevision.external_id,
                ),
            )
            .where(MessageRevision.applied.is_(False))
            .limit(1000)
        ).all()
        apply_waiting(session, {(r.inbox_id, r.external_id) for r in rows})
        return len(rows)


def _record(session: Session, edit: MessageEdit) -> int | None:
    dialect_insert = postgresql.insert if is_postgres(session) else sqlite.insert
    return session.scalar(
        dialect_insert(MessageRevision)
        .values(
            inbox_id=edit.inbox_id,
            external_id=edit.external_id,
            event_id=edit.event_id,
            deleted=edit.deleted,
            text=None if edit.deleted else edit.text,
            edited_at=edit.edited_at,
            received_at=edit.received_at,
            applied=False,
        )
        .on_conflict_do_nothing(index_elements=["inbox_id", "event_id"])
        .returning(MessageRevision.id)
    )


def _message(
    session: Session, inbox_id: int, external_id: str, lock: bool = False
) -> Message | None:
    query = select(Message).where(Message.inbox_id == inbox_id, Message.external_id == external_id)
    return session.scalar(query.with_for_update() if lock else query)


def _apply_one(session: Session, target: Message, revision_id: int) -> None:
    revision = session.get_one(MessageRevision, revision_id)
    if target.deleted_at is None:
        if revision.deleted:
            target.text = ""
            target.deleted_at = datetime.now(UTC)
            target.edited_at = max(revision.edited_at, target.edited_at or revision.edited_at)
        elif target.edited_at is None or revision.edited_at > target.edited_at:
            revision.previous_text = target.text
            target.text = revision.text or ""
            target.edited_at = revision.edited_at
        # else: older than the edit the message shows; recorded, changes nothing
    session.execute(
        update(MessageRevision).where(MessageRevision.id == revision_id).values(applied=True)
    )
