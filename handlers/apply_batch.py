"""Applying many changes, each on a case of its own, in a handful of statements: a bulk chunk.

The contract is ``handlers.apply.apply_change``'s, item by item: the same rules fold
(``fold_into_case``), the same rows written, the same ``changes`` and ``effects`` recorded, the
same answers. Only the statements differ: every case of the batch is locked by two statements
(tickets by id, then conversations by id: the lock order of store/cases.py, so a batch and a
live change queue, never deadlock), and every write is one statement per table for the whole
batch. At ~12 statements per change, a one-by-one chunk spent its time waiting on the store.

The batch takes the common case only: a change not recorded yet, of a kind that needs nothing
but its case (no creation, no restore: those check other rows), on a case of the change's
account, later than everything in its case, and one change per case. Every other change is
handed back, to be applied by ``apply_change`` one by one: slower, never different.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from handlers import apply, events, routing
from handlers.rules import RuleRefusal
from schemas import changes as c
from settings import Settings
from store import bulk as batch
from store import cases
from store.models import Account, Change, Conversation, PendingChange, Ticket
from store.models import Effect as EffectRow

# What the batch applies itself; the others go through apply_change.
BATCHED = (
    c.SetTicketStatus,
    c.SetTicketOwner,
    c.DeleteTicket,
    c.RerouteTicket,
    c.SetConversationOwner,
    c.SetConversationStatus,
    c.TrashConversation,
)


@dataclass
class Applied:
    """What the batch did: the results of the changes it applied, and the ones it left."""

    results: dict[str, c.ChangeResult] = field(default_factory=dict)
    left: list[c.ChangeEnvelope] = field(default_factory=list)
    _writes: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    _events: list[events.Pending] = field(default_factory=list)


def apply_many(session: Session, envs: list[c.ChangeEnvelope], settings: Settings) -> Applied:
    """Apply what the batch can of ``envs`` (inside the caller's transaction); the rest is in
    ``left``, in the order given, for ``apply_change``."""
    done = Applied()
    recorded = set(
        session.scalars(
            select(Change.id).where(batch.among(session, Change.id, [e.id for e in envs]))
        )
    )
    mine = [e for e in envs if e.id not in recorded and isinstance(e.action, BATCHED)]
    ids = {e.id for e in mine}
    locked = _lock(session, mine)
    if locked is None:  # a conversation joined a ticket meanwhile: one by one, as lock_case does
        done.left = list(envs)
        return done
    tickets, members, conversations = locked
    seen: set[tuple[str, int]] = set()
    places: dict[tuple[int, datetime], str] = {}
    for env in envs:
        loaded = _case(env, tickets, members, conversations, seen) if env.id in ids else None
        if loaded is None or env.occurred_at <= loaded.last_change_at:
            done.left.append(env)
            continue
        _apply_one(session, env, loaded, settings, places, done)
    _write(session, done)
    return done


Locked = tuple[dict[int, Any], dict[int, list[Any]], dict[int, Any]]


def _lock(session: Session, envs: list[c.ChangeEnvelope]) -> Locked | None:
    """Lock every case the changes name: their tickets by id, then their conversations by id.
    (tickets, conversations by ticket, conversations by id); None if membership moved."""
    conv_ids = sorted(
        {a for a in (_field(e.action, "conversation_id") for e in envs) if a is not None}
    )
    ticket_ids = {t for t in (_field(e.action, "ticket_id") for e in envs) if t is not None}
    first = session.execute(
        select(Conversation.id, Conversation.ticket_id).where(
            batch.among(session, Conversation.id, conv_ids)
        )
    ).all()
    ticket_ids |= {r.ticket_id for r in first if r.ticket_id is not None}
    tickets = {
        t.id: t
        for t in session.execute(
            select(*cases.TICKET_COLUMNS)
            .where(batch.among(session, Ticket.id, sorted(ticket_ids)))
            .order_by(Ticket.id)
            .with_for_update()
        )
    }
    wanted = batch.among(session, Conversation.id, conv_ids) | batch.among(
        session, Conversation.ticket_id, sorted(ticket_ids)
    )
    rows = session.execute(
        select(*cases.CONVERSATION_COLUMNS)
        .where(wanted)
        .order_by(Conversation.id)
        .with_for_update()
    ).all()
    if any(r.ticket_id is not None and r.ticket_id not in ticket_ids for r in rows):
        return None
    members: dict[int, list[Any]] = defaultdict(list)
    for r in rows:
        if r.ticket_id is not None:
            members[r.ticket_id].append(r)
    return tickets, members, {r.id: r for r in rows}


def _field(action: c.Action, name: str) -> Any:
    """``action.<name>``, None if its kind has none (a pydantic model answers a missing
    attribute slowly: by raising)."""
    return getattr(action, name) if name in type(action).model_fields else None


def _case(
    env: c.ChangeEnvelope,
    tickets: dict[int, Any],
    members: dict[int, list[Any]],
    conversations: dict[int, Any],
    seen: set[tuple[str, int]],
) -> cases.LoadedCase | None:
    """The locked case ``env`` names, if the batch may apply it: found, the change's account's,
    and not the case of another change of this batch."""
    action: Any = env.action
    ticket_id: int | None = _field(action, "ticket_id")
    alone: list[Any] = []
    if ticket_id is None:
        conv = conversations.get(action.conversation_id)
        if conv is None:
            return None
        ticket_id = conv.ticket_id
        alone = [conv]
    if ticket_id is not None:
        if ("ticket", ticket_id) in seen or ticket_id not in tickets:
            return None
        seen.add(("ticket", ticket_id))
        loaded = cases.loaded_from(members[ticket_id], [tickets[ticket_id]])
    else:
        seen.add(("conversation", alone[0].id))  # one change per conversation id: ids differ
        loaded = cases.loaded_from(alone, [])
    if any(account != env.account_id for account in loaded.account_ids.values()):
        return None  # apply_change answers it: not found, as for any other account's
    return loaded


def _apply_one(
    session: Session,
    env: c.ChangeEnvelope,
    loaded: cases.LoadedCase,
    settings: Settings,
    places: dict[tuple[int, datetime], str],
    done: Applied,
) -> None:
    action = env.action
    if isinstance(action, c.RerouteTicket):
        key = (env.account_id, env.occurred_at)
        if key not in places:
            places[key] = _location(session, env, settings)
        action = action.model_copy(update={"location": places[key]})
    try:
        folded = apply.fold_into_case(session, loaded, env.id, env.occurred_at, action)
    except RuleRefusal as refusal:
        _record(env, action, loaded, refusal, [], done)
        return
    convs, tickets = cases.case_updates(loaded, env.occurred_at)
    for row in convs:
        done._writes["conversations:" + ",".join(sorted(row))].append(row)
    for row in tickets:
        done._writes["tickets:" + ",".join(sorted(row))].append(row)
    _record(env, action, loaded, None, folded.effects, done)


def _location(session: Session, env: c.ChangeEnvelope, settings: Settings) -> str:
    account = session.get_one(Account, env.account_id)
    return routing.ticket_location(
        routing.tier_at(session, account, env.occurred_at),
        account.created_at,
        cutoff=settings.helpdesk_cutoff,
        helpdesk_tiers=settings.helpdesk_tiers,
    )


def _record(
    env: c.ChangeEnvelope,
    action: c.Action,
    loaded: cases.LoadedCase,
    refusal: RuleRefusal | None,
    effects: list[Any],
    done: Applied,
) -> None:
    """What ``apply._record`` writes for one change, kept for the batch's inserts."""
    conv_id: int | None = _field(action, "conversation_id")
    target_ticket: int | None = _field(action, "ticket_id")
    ticket_id = target_ticket
    if conv_id is not None and ticket_id is None and refusal is None:
        ticket_id = loaded.case.conversations[conv_id].ticket_id
    result = c.ChangeResult(
        change_id=env.id,
        outcome="rejected" if refusal else "applied",
        error=str(refusal) if refusal else None,
        code=f"{refusal.rule}:{refusal.status}" if refusal else None,
        conversation_id=conv_id,
        ticket_id=ticket_id,
        effects=[e.as_dict() for e in effects],
        occurred_at=env.occurred_at,
        notes=env.notes,
    )
    done.results[env.id] = result
    done._writes["changes"].append(
        {
            "id": env.id,
            "kind": action.kind,
            "account_id": env.account_id,
            "conversation_id": conv_id,
            "ticket_id": ticket_id if (refusal is None or target_ticket is not None) else None,
            "occurred_at": env.occurred_at,
            "applied_at": datetime.now(UTC),
            "payload": action.model_dump(mode="json"),
            "request_sha256": env.request_sha256 or apply.request_digest(env.action),
            "outcome": result.outcome,
            "result": result.model_dump(mode="json"),
            "cause": env.cause or None,
        }
    )
    done._writes["effects"] += apply.effect_rows(env.id, effects)
    # As apply._record: the outbound events of its effects (a batch change is never late, so
    # none is superseded).
    done._events += events.of_effects(env.account_id, env.id, result.effects)


def _write(session: Session, done: Applied) -> None:
    """Every row of the batch: one statement per table (per set of changed columns)."""
    for key, rows in done._writes.items():
        table, _, _columns = key.partition(":")
        if table == "conversations":
            batch.update_many(session, Conversation, rows)
        elif table == "tickets":
            batch.update_many(session, Ticket, rows)
    batch.insert_many(session, Change, done._writes.get("changes", []))
    batch.insert_many(session, EffectRow, done._writes.get("effects", []))
    events.emit_many(session, done._events)
    if done.results:
        session.execute(
            delete(PendingChange).where(batch.among(session, PendingChange.id, list(done.results)))
        )
