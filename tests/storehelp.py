"""Helpers for tests that work on the store directly: inbound messages, changes, state."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import func, select

from handlers import ingest, pipeline
from schemas import changes as c
from schemas.inbound import InboundMessage, IngestOutcome
from store.db import reading, transaction
from store.models import Account, Conversation, Inbox, Owner, Ticket

P = TypeVar("P")

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def new_account(
    tier: str = "free",
    created_at: datetime = datetime(2023, 1, 1, tzinfo=UTC),
    **inbox: Any,
) -> dict[str, int]:
    """An account with one inbox (generic unless ``inbox`` says otherwise) and two owners."""
    with transaction() as session:
        account = Account(name=f"acct-{uuid.uuid4().hex[:6]}", tier=tier, created_at=created_at)
        session.add(account)
        session.flush()
        row = Inbox(
            account_id=account.id,
            **{"name": "support", "channel": "email", "provider": "generic", **inbox},
        )
        owners = [Owner(account_id=account.id, name=n) for n in ("ana", "bruno")]
        session.add_all([row, *owners])
        session.flush()
        return {
            "account": account.id,
            "inbox": row.id,
            "owner": owners[0].id,
            "owner2": owners[1].id,
        }


def inbound(
    inbox: int,
    external_id: str,
    *,
    sender: str = "maria@example.com",
    thread: str | None = None,
    sent: float = 0.0,
    text: str = "hello",
) -> InboundMessage:
    return InboundMessage(
        inbox_id=inbox,
        external_id=external_id,
        sender=sender,
        thread_key=thread,
        text=text,
        sent_at=at(sent),
        received_at=at(sent + 1),
    )


def store(*messages: InboundMessage, stored: float | None = None) -> list[IngestOutcome]:
    """Store ``messages`` as one batch at test time ``stored`` (default: when the newest was
    received), which is their place in time against changes."""
    clock = at(stored) if stored is not None else max(m.received_at for m in messages)
    with transaction() as session:
        return ingest.ingest(session, list(messages), clock=clock)


def conversation(inbox: int, thread: str, sent: float = 0.0) -> int:
    """A new conversation with one message; its id."""
    outcome = store(inbound(inbox, f"msg-{thread}", thread=thread, sent=sent))[0]
    assert outcome.conversation_id is not None
    return outcome.conversation_id


def change(
    change_id: str, account: int, action: c.Action, seconds: float = 100.0
) -> dict[str, Any]:
    """A change envelope as the API builds it and the apply task receives it."""
    return c.ChangeEnvelope(
        id=change_id, account_id=account, occurred_at=at(seconds), action=action
    ).model_dump(mode="json")


def run(envelope: dict[str, Any]) -> dict[str, Any]:
    return pipeline.run_change(envelope)


def state(conversation_ids: list[int]) -> dict[str, Any]:
    """Everything the rules decide about these conversations and their tickets."""
    with reading() as session:
        convs = session.scalars(
            select(Conversation)
            .where(Conversation.id.in_(conversation_ids))
            .order_by(Conversation.id)
        ).all()
        ticket_ids = sorted({cv.ticket_id for cv in convs if cv.ticket_id is not None})
        tickets = session.scalars(select(Ticket).where(Ticket.id.in_(ticket_ids))).all()
        return {
            "conversations": [
                (cv.id, cv.status, cv.owner_id, cv.location, cv.ticket_id, cv.removed_by)
                for cv in convs
            ],
            "tickets": sorted(
                (t.id, t.status, t.owner_id, t.location, t.removed_by) for t in tickets
            ),
        }


def count(model: Any, *where: Any) -> int:
    with reading() as session:
        return int(session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def new_ticket(acct: dict[str, int], conv: int, change_id: str, seconds: float = 10.0) -> int:
    result = run(change(change_id, acct["account"], c.CreateTicket(conversation_id=conv), seconds))
    assert result["outcome"] == "applied", result
    return int(result["ticket_id"])


def ticket_of_two(acct: dict[str, int], associated_at: float = 20.0) -> tuple[int, int, int]:
    """Conversations ``a`` and ``b``, a ticket for ``a`` (t=10), ``b`` joined to it: their ids."""
    first, second = conversation(acct["inbox"], "a"), conversation(acct["inbox"], "b")
    ticket = new_ticket(acct, first, "create")
    joined = c.AssociateConversation(ticket_id=ticket, conversation_id=second)
    run(change("assoc", acct["account"], joined, associated_at))
    return first, second, ticket


def in_threads(work: Callable[[P], None], parts: Sequence[P]) -> list[BaseException]:
    """Run ``work`` on each part in a thread of its own, all released at once; what they raised."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(parts))

    def run_one(part: P) -> None:
        barrier.wait()
        try:
            work(part)
        except BaseException as exc:  # noqa: BLE001 - returned to the test
            errors.append(exc)

    threads = [threading.Thread(target=run_one, args=(part,)) for part in parts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return errors
