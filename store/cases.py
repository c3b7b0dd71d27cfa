"""Loading a case under row locks, saving what the rules changed, and reading its history.

Lock order is always: tickets by id, then conversations by id. A conversation that has a ticket is
only locked after its ticket, so two transactions touching one case queue on the ticket row
instead of deadlocking. On SQLite ``FOR UPDATE`` renders as nothing: ``BEGIN IMMEDIATE`` (see
store/db.py) already serialises writers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import Select, or_, select, update
from sqlalchemy.orm import Session

from handlers.rules import Case, ConversationState, TicketState
from schemas import changes as c
from store.bulk import among
from store.models import Change, Conversation, Message, Ticket

_CONV_FIELDS = ("status", "owner_id", "location", "ticket_id", "removed_by")
_TICKET_FIELDS = ("status", "owner_id", "location", "removed_by")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
Q = TypeVar("Q", bound=Select)  # type: ignore[type-arg]


class NotFound(Exception):
    def __init__(self, entity: str, entity_id: int) -> None:
        super().__init__(f"{entity} {entity_id} not found")
        self.entity = entity
        self.entity_id = entity_id


@dataclass
class LoadedCase:
    case: Case
    before: Case
    account_ids: dict[tuple[str, int], int]
    last_change_at: datetime
    clocks: dict[tuple[str, int], datetime] = field(default_factory=dict)
    last_message_at: dict[int, datetime] = field(default_factory=dict)
    merged_into: dict[int, int] = field(default_factory=dict)
    closed_at: dict[int, datetime] = field(default_factory=dict)
    inbox_of: dict[int, int] = field(default_factory=dict)
    touched: set[tuple[str, int]] = field(default_factory=set)

    def clock_of_conversation(self, conversation_id: int) -> datetime:
        """The clock of the case this conversation is in (its ticket and all its siblings)."""
        ticket_id = self.case.conversations[conversation_id].ticket_id
        if ticket_id is None:
            return self.clocks[("conversation", conversation_id)]
        members = [("ticket", ticket_id)] + [
            ("conversation", cv.id) for cv in self.case.conversations_of(ticket_id)
        ]
        return max(self.clocks[m] for m in members)


# What a case needs of its rows (whole ORM objects cost more to build than the rules do).
CONVERSATION_COLUMNS = (
    Conversation.id,
    Conversation.account_id,
    Conversation.inbox_id,
    Conversation.status,
    Conversation.owner_id,
    Conversation.location,
    Conversation.ticket_id,
    Conversation.removed_by,
    Conversation.last_change_at,
    Conversation.last_message_at,
    Conversation.merged_into,
    Conversation.closed_at,
)
TICKET_COLUMNS = (
    Ticket.id,
    Ticket.account_id,
    Ticket.status,
    Ticket.owner_id,
    Ticket.location,
    Ticket.removed_by,
    Ticket.last_change_at,
)


def lock_case(
    session: Session,
    *,
    conversation_ids: Iterable[int] = (),
    ticket_ids: Iterable[int] = (),
    snapshot: bool = True,
    lock: bool = True,
) -> LoadedCase:
    """Lock and load every row of the cases that hold these conversations and tickets.

    ``snapshot=False``: only to read (nothing will be saved from this load): no copy of the
    state to diff against, which costs more than the rest on a large batch. ``lock=False``: a
    reader's load (GET /tickets/{id}/history), in a read-only transaction that may not lock."""
    conv_ids = sorted(set(conversation_ids))
    wanted_tickets = set(ticket_ids)
    for _attempt in range(5):
        current = session.execute(
            select(Conversation.id, Conversation.ticket_id).where(
                among(session, Conversation.id, conv_ids)
            )
        ).all()
        found = {row.id for row in current}
        for missing in set(conv_ids) - found:
            raise NotFound("conversation", missing)
        tickets_needed = wanted_tickets | {row.ticket_id for row in current if row.ticket_id}
        ticket_rows: Sequence[Any] = []
        if tickets_needed:
            ticket_rows = session.execute(
                _locked(
                    select(*TICKET_COLUMNS)
                    .where(among(session, Ticket.id, tickets_needed))
                    .order_by(Ticket.id),
                    lock,
                )
            ).all()
        for missing in tickets_needed - {t.id for t in ticket_rows}:
            raise NotFound("ticket", missing)
        members = among(session, Conversation.id, conv_ids)
        if tickets_needed:
            members = or_(members, among(session, Conversation.ticket_id, tickets_needed))
        conv_rows = session.execute(
            _locked(select(*CONVERSATION_COLUMNS).where(members).order_by(Conversation.id), lock)
        ).all()
        # A conversation may have joined a ticket between the first read and the lock.
        if all(cv.ticket_id is None or cv.ticket_id in tickets_needed for cv in conv_rows):
            return loaded_from(conv_rows, ticket_rows, snapshot)
    raise RuntimeError("case membership kept changing while locking")  # retried by the task


def _locked(query: Q, lock: bool) -> Q:
    return query.with_for_update() if lock else query


def loaded_from(
    conv_rows: Iterable[Any], ticket_rows: Iterable[Any], snapshot: bool = True
) -> LoadedCase:
    """A case from its rows (as ``lock_case`` selects them: ``CONVERSATION_COLUMNS``,
    ``TICKET_COLUMNS``), locked by the caller."""
    case = Case()
    accounts: dict[tuple[str, int], int] = {}
    clocks: dict[tuple[str, int], datetime] = {}
    last_message_at: dict[int, datetime] = {}
    merged_into: dict[int, int] = {}
    closed_at: dict[int, datetime] = {}
    inbox_of: dict[int, int] = {}
    for t in ticket_rows:
        case.tickets[t.id] = TicketState(
            id=t.id,
            status=t.status,
            owner_id=t.owner_id,
            location=t.location,
            removed_by=t.removed_by,
        )
        accounts[("ticket", t.id)] = t.account_id
        clocks[("ticket", t.id)] = t.last_change_at
    for cv in conv_rows:
        case.conversations[cv.id] = ConversationState(
            id=cv.id,
            status=cv.status,
            owner_id=cv.owner_id,
            location=cv.location,
            ticket_id=cv.ticket_id,
            removed_by=cv.removed_by,
        )
        accounts[("conversation", cv.id)] = cv.account_id
        clocks[("conversation", cv.id)] = cv.last_change_at
        last_message_at[cv.id] = cv.last_message_at
        if cv.merged_into is not None:
            merged_into[cv.id] = cv.merged_into
        if cv.closed_at is not None:
            closed_at[cv.id] = cv.closed_at
        inbox_of[cv.id] = cv.inbox_id
    return LoadedCase(
        case=case,
        before=_copy(case) if snapshot else Case(),
        account_ids=accounts,
        last_change_at=max(clocks.values(), default=EPOCH),
        clocks=clocks,
        last_message_at=last_message_at,
        merged_into=merged_into,
        closed_at=closed_at,
        inbox_of=inbox_of,
    )


def combined(a: LoadedCase, b: LoadedCase) -> LoadedCase:
    """Two loads of disjoint or overlapping rows (locked in one transaction) as one."""
    case = Case(
        conversations={**a.case.conversations, **b.case.conversations},
        tickets={**a.case.tickets, **b.case.tickets},
    )
    return LoadedCase(
        case=case,
        before=Case(),  # for reading only, like the loads it combines (see lock_case)
        account_ids={**a.account_ids, **b.account_ids},
        last_change_at=max(a.last_change_at, b.last_change_at),
        clocks={**a.clocks, **b.clocks},
        last_message_at={**a.last_message_at, **b.last_message_at},
        merged_into={**a.merged_into, **b.merged_into},
        closed_at={**a.closed_at, **b.closed_at},
        inbox_of={**a.inbox_of, **b.inbox_of},
    )


def _copy(case: Case) -> Case:
    # The states are flat dataclasses: a shallow copy of each is a full copy, ~20x cheaper
    # than deepcopy on the ingest hot path.
    return Case(
        conversations={k: replace(v) for k, v in case.conversations.items()},
        tickets={k: replace(v) for k, v in case.tickets.items()},
    )


def save_case(session: Session, loaded: LoadedCase, occurred_at: datetime) -> None:
    """Write the fields the rules changed, and move the case's clock to ``occurred_at``."""
    conversations, tickets = case_updates(loaded, occurred_at)
    for values in conversations:
        cid = values.pop("id")
        session.execute(update(Conversation).where(Conversation.id == cid).values(**values))
    for values in tickets:
        tid = values.pop("id")
        session.execute(update(Ticket).where(Ticket.id == tid).values(**values))


def case_updates(
    loaded: LoadedCase, occurred_at: datetime
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The rows to update (``id`` and the changed columns) for what the rules changed in the
    case, conversations then tickets; and the case is taken as saved, its clock at
    ``occurred_at``. Many cases' rows can then be written together (handlers/apply_batch.py)."""
    now = datetime.now(UTC)
    conversations, tickets = [], []
    for cid, conv in loaded.case.conversations.items():
        values = _diff(loaded.before.conversations.get(cid), conv, _CONV_FIELDS, now)
        if "status" in values:  # when it was closed: a chat's reopen window counts from it
            values["closed_at"] = occurred_at if conv.status == "closed" else None
        if values or ("conversation", cid) in loaded.touched:
            values["last_change_at"] = max(occurred_at, loaded.last_change_at)
            conversations.append({"id": cid, **values})
    for tid, ticket in loaded.case.tickets.items():
        values = _diff(loaded.before.tickets.get(tid), ticket, _TICKET_FIELDS, now)
        if values or ("ticket", tid) in loaded.touched:
            values["last_change_at"] = max(occurred_at, loaded.last_change_at)
            tickets.append({"id": tid, **values})
    loaded.before = _copy(loaded.case)
    loaded.last_change_at = max(occurred_at, loaded.last_change_at)
    for key in loaded.clocks:
        loaded.clocks[key] = max(loaded.clocks[key], occurred_at)
    loaded.touched.clear()
    return conversations, tickets


def _diff(
    before: ConversationState | TicketState | None,
    after: ConversationState | TicketState,
    fields: tuple[str, ...],
    now: datetime,
) -> dict[str, object]:
    values: dict[str, object] = {}
    for name in fields:
        new = getattr(after, name)
        if before is None or getattr(before, name) != new:
            values[name] = new
            if name == "removed_by":
                values["removed_at"] = now if new is not None else None
    return values


def history(session: Session, case: Case) -> list[tuple[datetime, str, c.Action]]:
    """Every applied change and inbound message of the case, in the total order of changes.

    A message takes its place by ``stored_at``, when it became visible to agents; never by the
    time its sender wrote on it."""
    conv_ids = list(case.conversations)
    ticket_ids = list(case.tickets)
    rows = session.execute(
        select(Change.id, Change.occurred_at, Change.payload).where(
            Change.outcome.in_(("applied", "superseded")),  # both hold their place in history
            or_(Change.conversation_id.in_(conv_ids), Change.ticket_id.in_(ticket_ids)),
        )
    ).all()
    events: list[tuple[datetime, str, c.Action]] = [
        (r.occurred_at, r.id, c.ACTION_ADAPTER.validate_python(r.payload)) for r in rows
    ]
    messages = session.execute(
        select(Message.id, Message.conversation_id, Message.stored_at).where(
            Message.conversation_id.in_(conv_ids),
            Message.direction == "inbound",
            Message.automatic.is_(False),
        )
    ).all()
    events += [
        (m.stored_at, f"message:{m.id}", c.MessageReceived(conversation_id=m.conversation_id))
        for m in messages
    ]
    events.sort(key=lambda e: c.order_key(e[0], e[1]))
    return events
