"""``GET /tickets/{id}/history`` and ``GET /conversations/{id}/history``: why a case is as it is.

A case's history is its applied changes and inbound messages in the rules' order (the order
handlers/apply.py replays them in). Changes carry what they did when applied (``effects``, each
with its rule) and their cause; a message's effects (M1 reopening) are not stored, so the case
is replayed here, without locks, to show them, and to name for each field of the entity the
event that set its value last. Changes the rules refused are listed too, with the reason: they
are part of the answer to "why is this still open?".
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from handlers import apply
from schemas import changes as c
from schemas.api import HistoryEntry, HistoryOut
from store import cases
from store.models import ApiToken, Change, Effect, Message


def load(session: Session, **ids: list[int]) -> cases.LoadedCase:
    """The case of these conversations or tickets, read without locks (a reader's
    transaction may not lock); ``cases.NotFound`` if one does not exist."""
    return cases.lock_case(session, snapshot=False, lock=False, **ids)


def of_case(session: Session, loaded: cases.LoadedCase, entity: str, entity_id: int) -> HistoryOut:
    conv_ids, ticket_ids = list(loaded.case.conversations), list(loaded.case.tickets)
    produced, writers = apply.replay(session, loaded)
    changes = session.scalars(
        select(Change).where(
            or_(
                Change.conversation_id.in_(conv_ids),
                Change.ticket_id.in_(ticket_ids),
                Change.id.in_(
                    select(Effect.change_id).where(
                        or_(
                            (Effect.entity == "ticket") & Effect.entity_id.in_(ticket_ids),
                            (Effect.entity == "conversation") & Effect.entity_id.in_(conv_ids),
                        )
                    )
                ),
            )
        )
    ).all()
    recorded = _effects(session, [ch.id for ch in changes])
    tokens = _token_names(session, changes)
    entries = [_change_entry(ch, recorded.get(ch.id, []), tokens) for ch in changes]
    messages = session.execute(
        select(Message.id, Message.stored_at).where(
            Message.conversation_id.in_(conv_ids), Message.direction == "inbound"
        )
    ).all()
    for m in messages:
        event_id = f"message:{m.id}"
        entries.append(
            HistoryEntry(
                event_id=event_id,
                kind="message_received",
                at=m.stored_at,
                outcome="applied",
                cause={"via": "webhook", "message_id": m.id},
                effects=[e.as_dict() for e in produced.get(event_id, [])],
            )
        )
    entries.sort(key=lambda e: c.order_key(e.at, e.event_id))
    last = {
        field: {"event_id": event_id, "rule": rule}
        for (kind, eid, field), (event_id, rule) in writers.items()
        if kind == entity and eid == entity_id
    }
    return HistoryOut(entity=entity, id=entity_id, entries=entries, last_set_by=last)  # type: ignore[arg-type]


def _change_entry(
    change: Change, effects: list[dict[str, Any]], tokens: dict[int, str]
) -> HistoryEntry:
    cause = dict(change.cause or _inferred(change.id))
    if (token_id := cause.get("token_id")) is not None and token_id in tokens:
        cause["token_name"] = tokens[token_id]
    refused = change.outcome == "rejected"
    return HistoryEntry(
        event_id=change.id,
        kind=change.kind,
        at=change.occurred_at,
        outcome=change.outcome,  # type: ignore[arg-type]
        cause=cause,
        action=change.payload,
        effects=effects,
        error=change.result.get("error") if refused else None,
        rule=(change.result.get("code") or "").split(":")[0] or None if refused else None,
    )


def _effects(session: Session, change_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    if not change_ids:
        return found
    rows = session.scalars(
        select(Effect).where(Effect.change_id.in_(change_ids)).order_by(Effect.id)
    ).all()
    for e in rows:
        found.setdefault(e.change_id, []).append(
            {
                "entity": e.entity,
                "id": e.entity_id,
                "field": e.field,
                "value": e.value,
                "rule": e.rule,
            }
        )
    return found


def _token_names(session: Session, changes: Any) -> dict[int, str]:
    ids = {ch.cause.get("token_id") for ch in changes if ch.cause} - {None}
    if not ids:
        return {}
    rows = session.execute(select(ApiToken.id, ApiToken.name).where(ApiToken.id.in_(ids)))
    return {r.id: r.name for r in rows}


def _inferred(change_id: str) -> dict[str, Any]:
    """The cause of a change recorded before causes were (migration 0011), from its id."""
    prefix = change_id.split(":", 1)[0]
    return {
        "api": {"via": "api"},
        "ext": {"via": "api"},
        "merge": {"via": "ingest"},
        "reconcile": {"via": "reconcile"},
    }.get(prefix, {"via": "unknown"})
