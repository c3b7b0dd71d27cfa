"""Applying one change to the store, idempotently and in order.

The contract (DESIGN.md, "What idempotent must mean here"):

- a change id already recorded is a no-op that returns the first result;
- the case's rows are locked for the whole transaction, so two workers on one ticket queue;
- a change at or after the case's clock is folded onto the current state (``handlers.rules``);
- a change older than the clock is put in its place: the case's whole history (changes and
  inbound messages) is replayed in order from the initial state and the difference saved. The end
  state is then the state of applying each distinct change once, in the order they happened,
  whatever order they arrived in. Replays are rare (reordered deliveries) and bounded by one case;
- a change put in its place whose effects a later event already overrode (an agent closed a
  conversation, and a message stored after the agent's click reopened it) is recorded as
  ``superseded``, naming what overrode it: the answer never says ``applied`` for a state the
  case does not show.

Order is inboxsync's clock, never a sender's: a change happens when the API accepted it (a given
``occurred_at`` may be earlier, never later: api/changes.py), a message when it was stored.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from handlers import events, routing, rules
from handlers.rules import Case, ConversationState, Effect, RuleRefusal
from schemas import changes as c
from settings import Settings
from store import cases
from store.models import Account, Change, Conversation, Owner, PendingChange, Ticket
from store.models import Effect as EffectRow


class ChangeConflict(Exception):
    """The same change id was reused for a different change."""


def request_digest(action: c.Action) -> str:
    return hashlib.sha256(
        orjson.dumps(action.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
    ).hexdigest()


def _targets(action: c.Action) -> tuple[list[int], list[int]]:
    conv = getattr(action, "conversation_id", None)
    ticket = getattr(action, "ticket_id", None)
    return ([conv] if conv is not None else []), ([ticket] if ticket is not None else [])


def apply_change(session: Session, env: c.ChangeEnvelope, settings: Settings) -> c.ChangeResult:
    """Apply ``env`` once. Call inside a transaction; the caller commits."""
    digest = env.request_sha256 or request_digest(env.action)
    if (prior := _recorded(session, env.id, digest)) is not None:
        return prior
    conv_ids, ticket_ids = _targets(env.action)
    try:
        loaded = cases.lock_case(session, conversation_ids=conv_ids, ticket_ids=ticket_ids)
        _check_account(loaded, env.account_id)
    except cases.NotFound as exc:
        return _record(session, env, digest, RuleRefusal("-", str(exc), 404), Folded())
    # Checked again under the case's locks: a concurrent worker may have just applied it.
    if (prior := _recorded(session, env.id, digest)) is not None:
        return prior
    action = env.action
    try:
        _check_owner(session, action, env.account_id)
        _check_retention(session, action, settings)
        if isinstance(action, c.CreateTicket):
            action = _allocate_ticket(session, loaded, action, env, settings)
        elif isinstance(action, c.RerouteTicket):
            action = _reroute_location(session, action, env, settings)
        folded = fold_into_case(session, loaded, env.id, env.occurred_at, action)
    except RuleRefusal as refusal:
        if isinstance(action, c.CreateTicket) and action is not env.action:
            # A ticket allocated for a late creation that history refused in its place: no
            # ticket without a conversation is left behind, and the refusal names none.
            session.execute(delete(Ticket).where(Ticket.id == action.ticket_id))
            action = env.action
        return _record(session, env, digest, refusal, Folded(), action)
    allocated = action.ticket_id if isinstance(action, c.CreateTicket) else None
    if allocated is not None and not loaded.case.conversations_of(allocated):
        # In its place the conversation had its ticket already (T1): that one answers.
        session.execute(delete(Ticket).where(Ticket.id == allocated))
        loaded.case.tickets.pop(allocated, None)
        loaded.before.tickets.pop(allocated, None)
        action = env.action
    cases.save_case(session, loaded, env.occurred_at)
    return _record(session, env, digest, None, folded, action)


def apply_internal(
    session: Session,
    loaded: cases.LoadedCase,
    change_id: str,
    account_id: int,
    occurred_at: datetime,
    action: c.Action,
) -> list[Effect]:
    """Apply a change inboxsync makes itself (a merge) to a case the caller has locked, and
    record it like any other change; a refusal propagates."""
    env = c.ChangeEnvelope(
        id=change_id,
        account_id=account_id,
        occurred_at=occurred_at,
        action=action,
        cause={"via": "ingest"},
    )
    folded = fold_into_case(session, loaded, change_id, occurred_at, action)
    cases.save_case(session, loaded, occurred_at)
    _record(session, env, request_digest(action), None, folded, action)
    return folded.effects


@dataclass
class Folded:
    """What one change did: its effects, whether the case's history was replayed to put it in
    its place, and which of its effects a later event had already overridden."""

    effects: list[Effect] = field(default_factory=list)
    replayed: bool = False
    superseded: list[dict[str, Any]] = field(default_factory=list)


def fold_into_case(
    session: Session,
    loaded: cases.LoadedCase,
    change_id: str,
    occurred_at: datetime,
    action: c.Action,
) -> Folded:
    """Apply ``action`` to a locked case, replaying its history if the change is late.

    An inbound message takes part as ``MessageReceived`` with the id ``message:<row id>``.
    """
    for cid in _targets(action)[0]:
        loaded.touched.add(("conversation", cid))
    for tid in _targets(action)[1]:
        loaded.touched.add(("ticket", tid))
    # Strictly later than every event of the case: folded on top. At the case's own instant
    # the order of ids decides (``order_key``), which only a replay knows.
    if occurred_at > loaded.last_change_at:
        return Folded(rules.apply(loaded.case, change_id, action))
    extra = None if isinstance(action, c.MessageReceived) else (occurred_at, change_id, action)
    before = Case(dict(loaded.case.conversations), dict(loaded.case.tickets))  # replay replaces
    produced, writers = replay(session, loaded, extra)  # messages are in history already
    if extra is not None:
        _check_no_fact_undone(before, loaded.case)
    mine = produced.get(change_id, [])
    return Folded(mine, True, _overridden(mine, writers, change_id))


def _check_no_fact_undone(before: Case, after: Case) -> None:
    """A late change is refused if, in its place, it would undo what was answered and acted on
    since: a ticket's association (T2: only deletion ends one, and a ticket holds one or more
    conversations) or a merge (M2: the messages are in the survivor now)."""
    for tid in before.tickets:
        if before.conversations_of(tid) and not after.conversations_of(tid):
            raise RuleRefusal(
                "T2", f"in its place it would leave ticket {tid} without its conversations"
            )
    for cid, cv in before.conversations.items():
        was = rules.merged_into(cv.removed_by)
        if was is not None and after.conversations[cid].removed_by != cv.removed_by:
            raise RuleRefusal(
                "M2", f"in its place it would undo the merge of conversation {cid} into {was}"
            )


Writer = tuple[str, str]  # (event id, rule)


def replay(
    session: Session,
    loaded: cases.LoadedCase,
    extra: tuple[datetime, str, c.Action] | None = None,
) -> tuple[dict[str, list[Effect]], dict[tuple[str, int, str], Writer]]:
    """Rebuild the case from its whole history (plus ``extra``, not recorded yet), in order.

    Returns each event's effects, and for each field the event that set it last."""
    events = cases.history(session, loaded.case)
    if extra is not None:
        events.append(extra)
        events.sort(key=lambda e: c.order_key(e[0], e[1]))
    state = Case(
        conversations={cid: ConversationState(id=cid) for cid in loaded.case.conversations}
    )
    produced: dict[str, list[Effect]] = {}
    writers: dict[tuple[str, int, str], Writer] = {}
    for at, event_id, event in events:
        try:
            produced[event_id] = rules.apply(state, event_id, event)
        except RuleRefusal as refusal:
            if extra is not None and event_id == extra[1]:
                # The late change is refused in its place: rejected, and no part of history
                # (README, Decisions). What it names exists (the case was found), only not
                # yet at that time: a conflict with the order of events, not a 404.
                if refusal.status == 404:
                    raise RuleRefusal(refusal.rule, f"{refusal} yet at {at.isoformat()}") from None
                raise
            continue  # refused at this point of history: a no-op here
        for e in produced[event_id]:
            writers[(e.entity, e.entity_id, e.field)] = (event_id, e.rule)
    # Tickets are rows even before their creation is replayed; keep what history did not touch.
    for tid, ticket in loaded.case.tickets.items():
        state.tickets.setdefault(tid, ticket)
    loaded.case.conversations, loaded.case.tickets = state.conversations, state.tickets
    return produced, writers


def _overridden(
    effects: list[Effect], writers: dict[tuple[str, int, str], Writer], change_id: str
) -> list[dict[str, Any]]:
    """The effects of ``change_id`` that a later event set otherwise: the state does not show
    them, and the answer must not pretend it does."""
    out = []
    for e in effects:
        by = writers.get((e.entity, e.entity_id, e.field))
        if by is not None and by[0] != change_id:
            out.append(
                {
                    "entity": e.entity,
                    "id": e.entity_id,
                    "field": e.field,
                    "by": by[0],
                    "rule": by[1],
                }
            )
    return out


def _recorded(session: Session, change_id: str, digest: str) -> c.ChangeResult | None:
    row = session.execute(
        select(Change.result, Change.request_sha256).where(Change.id == change_id)
    ).first()
    if row is None:
        return None
    if row.request_sha256 and row.request_sha256 != digest:
        raise ChangeConflict(f"change id {change_id!r} was already used for a different change")
    # A copy published after the change was recorded (a retried request that saw neither it nor
    # its pending entry) must not stay pending: the periodic round would publish it for ever.
    session.execute(delete(PendingChange).where(PendingChange.id == change_id))
    return c.ChangeResult.model_validate({**row.result, "duplicate": True})


def _check_account(loaded: cases.LoadedCase, account_id: int) -> None:
    for (entity, entity_id), owner_account in loaded.account_ids.items():
        if owner_account != account_id:
            raise cases.NotFound(entity, entity_id)


def _check_owner(session: Session, action: c.Action, account_id: int) -> None:
    owner_id = getattr(action, "owner_id", None)
    if owner_id is None:
        return
    found = session.scalar(
        select(Owner.id).where(Owner.id == owner_id, Owner.account_id == account_id)
    )
    if found is None:
        raise RuleRefusal("-", f"owner {owner_id} not found in this account", 422)


def _check_retention(session: Session, action: c.Action, settings: Settings) -> None:
    """Deleted records are restorable for ``retention_days`` after their removal, not after."""
    if isinstance(action, c.RestoreConversation):
        removed_at = session.scalar(
            select(Conversation.removed_at).where(Conversation.id == action.conversation_id)
        )
    elif isinstance(action, c.RestoreTicket):
        removed_at = session.scalar(select(Ticket.removed_at).where(Ticket.id == action.ticket_id))
    else:
        return
    if removed_at is None:
        return
    if removed_at < datetime.now(UTC) - timedelta(days=settings.retention_days):
        raise RuleRefusal(
            "D", f"removed more than {settings.retention_days} days ago: no longer restorable"
        )


def _allocate_ticket(
    session: Session,
    loaded: cases.LoadedCase,
    action: c.CreateTicket,
    env: c.ChangeEnvelope,
    settings: Settings,
) -> c.CreateTicket:
    conv = loaded.case.conversations[action.conversation_id]
    late = env.occurred_at <= loaded.last_change_at  # put in its place: history decides
    if not late and (conv.ticket_id is not None or conv.removed_by is not None):
        return action  # T1 returns the existing ticket; a trashed conversation is refused
    account = session.get_one(Account, env.account_id)
    location = routing.ticket_location(
        routing.tier_at(session, account, env.occurred_at),  # a later tier change: not this one
        account.created_at,
        cutoff=settings.helpdesk_cutoff,
        helpdesk_tiers=settings.helpdesk_tiers,
    )
    ticket_id = session.scalar(
        insert(Ticket)
        .values(
            account_id=env.account_id,
            owner_id=action.owner_id,
            status=action.status,
            priority=action.priority,
            properties=action.properties,
            location=location,
            created_at=datetime.now(UTC),
            last_change_at=env.occurred_at,
        )
        .returning(Ticket.id)
    )
    assert ticket_id is not None
    loaded.before.tickets[ticket_id] = rules.TicketState(
        id=ticket_id, status=action.status, owner_id=action.owner_id, location=location
    )
    return action.model_copy(update={"ticket_id": ticket_id, "location": location})


def _reroute_location(
    session: Session, action: c.RerouteTicket, env: c.ChangeEnvelope, settings: Settings
) -> c.RerouteTicket:
    """R1/R2 by the tier in force when the reroute happens, recorded in the change so that a
    replay of the case's history moves it to the same place."""
    account = session.get_one(Account, env.account_id)
    location = routing.ticket_location(
        routing.tier_at(session, account, env.occurred_at),
        account.created_at,
        cutoff=settings.helpdesk_cutoff,
        helpdesk_tiers=settings.helpdesk_tiers,
    )
    return action.model_copy(update={"location": location})


def _record(
    session: Session,
    env: c.ChangeEnvelope,
    digest: str,
    refusal: RuleRefusal | None,
    folded: Folded,
    action: c.Action | None = None,
) -> c.ChangeResult:
    action = action or env.action
    conv_ids, ticket_ids = _targets(action)
    conversation_id = conv_ids[0] if conv_ids else None
    ticket_id = ticket_ids[0] if ticket_ids else None
    if conversation_id is not None and ticket_id is None and refusal is None:
        ticket_id = session.scalar(
            select(Conversation.ticket_id).where(Conversation.id == conversation_id)
        )
    outcome: c.Outcome = (
        "rejected" if refusal else ("superseded" if folded.superseded else "applied")
    )
    result = c.ChangeResult(
        change_id=env.id,
        outcome=outcome,
        replayed=folded.replayed,
        error=str(refusal) if refusal else None,
        code=(f"{refusal.rule}:{refusal.status}" if refusal else None),
        conversation_id=conversation_id,
        ticket_id=ticket_id,
        effects=[e.as_dict() for e in folded.effects],
        superseded=folded.superseded,
        occurred_at=env.occurred_at,
        notes=env.notes,
    )
    session.execute(delete(PendingChange).where(PendingChange.id == env.id))
    if refusal is not None and refusal.status == 404:
        return result  # nothing of the caller's exists here: no foreign key to hang a record on
    session.execute(
        insert(Change).values(
            id=env.id,
            kind=action.kind,
            account_id=env.account_id,
            conversation_id=conversation_id,
            ticket_id=ticket_id if (refusal is None or ticket_ids) else None,
            occurred_at=env.occurred_at,
            applied_at=datetime.now(UTC),
            payload=action.model_dump(mode="json"),
            request_sha256=digest,
            outcome=result.outcome,
            result=result.model_dump(mode="json"),
            cause=env.cause or None,
        )
    )
    if folded.effects:
        session.execute(insert(EffectRow), effect_rows(env.id, folded.effects))
        events.emit_many(session, events.of_effects(env.account_id, env.id, _shown(folded)))
    return result


def _shown(folded: Folded) -> list[dict[str, Any]]:
    """The effects the case shows: a superseded one (a later event set the field otherwise)
    is not announced, its overrider was."""
    over = {(s["entity"], s["id"], s["field"]) for s in folded.superseded}
    return [e.as_dict() for e in folded.effects if (e.entity, e.entity_id, e.field) not in over]


def effect_rows(change_id: str, effects: list[Effect]) -> list[dict[str, Any]]:
    """The ``effects`` rows of one change: what it set, field by field, with the rule."""
    return [
        {
            "change_id": change_id,
            "entity": e.entity,
            "entity_id": e.entity_id,
            "field": e.field,
            "value": None if e.value is None else str(e.value),
            "rule": e.rule,
        }
        for e in effects
    ]
