"""What the store must hold after the chaos run, and where it does not.

- **Lost**: a webhook message acknowledged (202) and not stored; a delivery id named in a 202
  with no outcome; an action answered 200/201/202 whose change is not recorded.
- **Duplicated**: a message stored twice (two rows with the same text in one inbox, or one row
  claimed as stored by two deliveries); a change applied twice (one conversation given two
  tickets, a ticket no change created, an effect recorded twice).
- **Mismatches**: conversations and tickets whose state is not what docs/rules.md gives when
  the events the store recorded are folded in their recorded order: inbound messages (not
  automatic) at ``stored_at``, changes that were not refused at ``occurred_at``, ties broken by
  id (``message:<row id>`` for a message), as strings (the fold: bench/chaosrules.py).
- **Threads**: every generated mail thread is in one live conversation.

The fold takes the store's ids as they are (conversations, and tickets from the creating
change's recorded payload). A conversation merged into another (M2) is compared on its removal
only: its messages moved, its other fields stay as they were when it went.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bench.chaosclient import Directory, Tally
from bench.chaosrules import Conv, Refused, World, apply
from bench.chaostraffic import ACCOUNTS, Plan

# ---- the store, read back ----------------------------------------------------------------------


@dataclass
class Store:
    conversations: list[dict[str, Any]]
    tickets: list[dict[str, Any]]
    messages: list[dict[str, Any]]
    changes: list[dict[str, Any]]
    effects: list[tuple[str, str, int, str]]
    outcomes: list[dict[str, Any]]
    dead_letters: list[dict[str, Any]]
    journal_left: int
    pending_left: int
    pending_stuck: list[dict[str, Any]]  # pending changes already recorded or dead-lettered


def read_store(url: str) -> Store:
    import psycopg
    from psycopg.rows import dict_row

    with psycopg.connect(url, row_factory=dict_row) as conn:

        def rows(sql: str) -> list[dict[str, Any]]:
            return list(conn.execute(sql).fetchall())

        return Store(
            conversations=rows(
                "SELECT id, account_id, status, owner_id, location, ticket_id, removed_by,"
                " merged_into FROM conversations"
            ),
            tickets=rows("SELECT id, status, owner_id, location, removed_by FROM tickets"),
            messages=rows(
                "SELECT id, inbox_id, conversation_id, external_id, direction, automatic,"
                " stored_at, split_part(text, E'\\n', 1) AS first_line FROM messages"
            ),
            changes=rows(
                "SELECT id, kind, conversation_id, occurred_at, payload, outcome FROM changes"
            ),
            effects=[
                (r["change_id"], r["entity"], r["entity_id"], r["field"])
                for r in rows("SELECT change_id, entity, entity_id, field FROM effects")
            ],
            outcomes=rows("SELECT id, state, messages FROM delivery_outcomes"),
            dead_letters=rows("SELECT task, key, error_type, error FROM dead_letters"),
            journal_left=rows("SELECT count(*) AS n FROM deliveries")[0]["n"],
            pending_left=rows("SELECT count(*) AS n FROM pending_changes")[0]["n"],
            pending_stuck=rows(
                "SELECT p.id, c.outcome, c.applied_at::text,"
                " d.error FROM pending_changes p LEFT JOIN changes c ON c.id = p.id"
                " LEFT JOIN (SELECT key, min(error) AS error FROM dead_letters GROUP BY key) d"
                " ON d.key = p.id WHERE c.id IS NOT NULL OR d.key IS NOT NULL ORDER BY p.id"
            ),
        )


# ---- the checks --------------------------------------------------------------------------------


@dataclass
class Findings:
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)  # one line per field that differs
    mismatched: set[tuple[str, int]] = field(default_factory=set)  # entities that differ
    threads: int = 0
    threads_split: list[str] = field(default_factory=list)
    # Changes still in the pending journal though recorded (or dead-lettered): the periodic
    # round publishes them again and again, and the journal never drains.
    stuck: list[str] = field(default_factory=list)
    histories: dict[str, list[str]] = field(default_factory=dict)  # of mismatched cases
    dead_letters: Counter[str] = field(default_factory=Counter)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        # ``mismatches`` also holds the fold's notes (a location R1/R2 does not give, a repair).
        problems = self.lost or self.duplicated or self.mismatches or self.threads_split
        return not (problems or self.stuck)


def check(url: str, plan: Plan, directory: Directory, tally: Tally) -> Findings:
    """Every check of the module's docstring, on the store at ``url`` after the run drained."""
    store = read_store(url)
    found = Findings()
    _lost(store, directory, tally, plan, found)
    _duplicated(store, found)
    _mismatches(store, directory, found)
    _threads(store, plan, directory, found)
    found.stuck = [
        f"change {p['id']}: still pending, though "
        + (
            f"recorded {p['outcome']} at {p['applied_at']}"
            if p["outcome"]
            else f"dead-lettered ({(p['error'] or '')[:120]})"
        )
        for p in store.pending_stuck
    ]
    for d in store.dead_letters:
        found.dead_letters[f"{d['task']}: {d['error_type']}: {d['error'][:160]}"] += 1
    found.counts = {
        "messages": len(store.messages),
        "conversations": len(store.conversations),
        "merged": sum(1 for c in store.conversations if c["merged_into"] is not None),
        "tickets": len(store.tickets),
        "journal left": store.journal_left,
        "pending left": store.pending_left,
        **Counter(f"changes {c['outcome']}" for c in store.changes),
    }
    return found


def _lost(store: Store, directory: Directory, tally: Tally, plan: Plan, found: Findings) -> None:
    stored = {(m["inbox_id"], m["external_id"]) for m in store.messages}
    for inbox, external_id in sorted(tally.acknowledged - stored):
        found.lost.append(f"message {external_id} of inbox {inbox}: acknowledged, not stored")
    processed = {o["id"] for o in store.outcomes}
    for delivery in sorted(tally.delivery_ids - processed):
        found.lost.append(f"delivery {delivery}: named in a 202, no outcome recorded")
    recorded = {c["id"] for c in store.changes}
    dead = {d["key"]: d["error"] for d in store.dead_letters if d["key"]}
    by_id = {a.id: a for a in plan.actions}
    for action_id in sorted(tally.promised):
        status = tally.answers[action_id][0]
        account = directory.accounts[by_id[action_id].account]
        change_id = f"api:{account}:chaos-{plan.seed}-{action_id}"
        if change_id not in recorded:
            why = f" (dead letter: {dead[change_id][:120]})" if change_id in dead else ""
            found.lost.append(
                f"action {action_id} ({change_id}): acknowledged (last answer {status}), "
                f"not recorded{why}"
            )


def _duplicated(store: Store, found: Findings) -> None:
    by_text = Counter((m["inbox_id"], m["first_line"]) for m in store.messages)
    for (inbox, text), n in by_text.items():
        if n > 1:
            found.duplicated.append(f"inbox {inbox}: {n} messages {text[:80]!r}")
    claims: Counter[int] = Counter()
    for outcome in store.outcomes:
        for m in outcome["messages"] or []:
            if not m.get("duplicate") and m.get("message_id") is not None:
                claims[m["message_id"]] += 1
    for message_id, n in claims.items():
        if n > 1:
            found.duplicated.append(f"message {message_id}: stored by {n} deliveries")
    created: dict[int, list[str]] = defaultdict(list)  # conversation → tickets made for it
    made: Counter[int] = Counter()
    for c in store.changes:
        ticket = (c["payload"] or {}).get("ticket_id")
        if c["kind"] == "create_ticket" and c["outcome"] != "rejected" and ticket is not None:
            created[c["payload"]["conversation_id"]].append(c["id"])
            made[ticket] += 1
    for conv, ids in created.items():
        if len(ids) > 1:
            found.duplicated.append(f"conversation {conv}: {len(ids)} tickets created ({ids})")
    for t in store.tickets:
        if made[t["id"]] != 1:
            found.duplicated.append(f"ticket {t['id']}: created by {made[t['id']]} changes")
    for effect, n in Counter(store.effects).items():
        if n > 1:
            found.duplicated.append(f"effect recorded {n} times: {effect}")


def _events(store: Store) -> list[tuple[datetime, str, str, dict[str, Any]]]:
    """The recorded history in the store's order: (time, id) with ids compared as strings."""
    events = [
        (c["occurred_at"], c["id"], c["kind"], c["payload"])
        for c in store.changes
        if c["outcome"] in ("applied", "superseded")  # a refused change takes no part
    ]
    events += [
        (m["stored_at"], f"message:{m['id']}", "message", {"conversation_id": m["conversation_id"]})
        for m in store.messages
        if m["direction"] == "inbound" and not m["automatic"]
    ]
    events.sort(key=lambda e: (e[0], e[1]))
    return events


FIELDS = ("status", "owner_id", "location", "ticket_id", "removed_by")


def _mismatches(store: Store, directory: Directory, found: Findings) -> None:
    locations = {
        account: spec.location() for account, spec in zip(directory.accounts, ACCOUNTS, strict=True)
    }
    world = World(
        conversations={c["id"]: Conv(c["account_id"]) for c in store.conversations},
        locations=locations,
    )
    lines: dict[tuple[str, int], list[str]] = defaultdict(list)
    for at, event_id, kind, payload in _events(store):
        try:
            apply(world, event_id, kind, payload)
            after = _state_after(world, payload)
        except Refused as refusal:
            after = f"refused here ({refusal})"  # refused at its place in history: a no-op
        line = f"{at:%H:%M:%S.%f} {event_id} {kind} {_short(payload)} → {after}"
        for entity in _touched(payload):
            lines[entity].append(line)
    found.mismatches += world.notes
    for row in store.conversations:
        model = world.conversations[row["id"]]
        fields = ("removed_by", "ticket_id") if row["merged_into"] is not None else FIELDS
        _compare(found, "conversation", row, model, fields)
    for row in store.tickets:
        ticket = world.tickets.get(row["id"])
        if ticket is None:
            found.mismatches.append(f"ticket {row['id']}: no recorded change created it")
            found.mismatched.add(("ticket", row["id"]))
            continue
        _compare(found, "ticket", row, ticket, ("status", "owner_id", "location", "removed_by"))
    for kind, entity_id in sorted(found.mismatched)[:HISTORIES]:
        found.histories[f"{kind} {entity_id}"] = _history(world, lines, kind, entity_id)


HISTORIES = 10  # mismatched cases whose history the report shows


def _touched(payload: dict[str, Any]) -> list[tuple[str, int]]:
    out = [("conversation", payload[k]) for k in ("conversation_id", "into_id") if k in payload]
    if payload.get("ticket_id") is not None:
        out.append(("ticket", payload["ticket_id"]))
    return out


def _short(payload: dict[str, Any]) -> str:
    keep = ("conversation_id", "ticket_id", "status", "owner_id", "into_id", "location")
    return " ".join(f"{k}={payload[k]}" for k in keep if payload.get(k) is not None)


def _state_after(w: World, payload: dict[str, Any]) -> str:
    """The model's state of what the event touched, after it."""
    parts = []
    for entity, entity_id in _touched(payload):
        if entity == "conversation":
            cv = w.conversations[entity_id]
            parts.append(f"c{entity_id} {cv.status} ticket={cv.ticket_id} removed={cv.removed_by}")
            if cv.ticket_id is not None and payload.get("ticket_id") is None:
                mine = w.tickets[cv.ticket_id]
                parts.append(f"t{cv.ticket_id} {mine.status} removed={mine.removed_by}")
        elif (ticket := w.tickets.get(entity_id)) is not None:
            parts.append(f"t{entity_id} {ticket.status} removed={ticket.removed_by}")
    return "; ".join(parts)


def _history(
    w: World, lines: dict[tuple[str, int], list[str]], entity: str, entity_id: int
) -> list[str]:
    """The recorded events of the case the entity ends in, in order (the last 40)."""
    ticket = entity_id if entity == "ticket" else w.conversations[entity_id].ticket_id
    members = {(entity, entity_id)}
    if ticket is not None:
        members.add(("ticket", ticket))
        members |= {
            ("conversation", c) for c, cv in w.conversations.items() if cv.ticket_id == ticket
        }
    merged = sorted({line for m in members for line in lines.get(m, [])})
    return merged[-40:]


def _compare(
    found: Findings, entity: str, row: dict[str, Any], model: Any, fields: tuple[str, ...]
) -> None:
    for name in fields:
        expected = getattr(model, name)
        if row[name] != expected:
            found.mismatches.append(
                f"{entity} {row['id']}: {name} is {row[name]!r}, the rules give {expected!r}"
            )
            found.mismatched.add((entity, row["id"]))


def _threads(store: Store, plan: Plan, directory: Directory, found: Findings) -> None:
    """Each mail thread's stored messages are in one conversation, and it is live."""
    home = {(m["inbox_id"], m["external_id"]): m["conversation_id"] for m in store.messages}
    live = {c["id"] for c in store.conversations if c["removed_by"] is None}
    for thread, external_ids in plan.mail_threads.items():
        inbox = directory.mail_inboxes[int(thread[1 : thread.index(".")])]
        convs = {home[(inbox, e)] for e in external_ids if (inbox, e) in home}
        if not convs:
            continue
        found.threads += 1
        if len(convs) != 1 or not convs <= live:
            state = ", ".join(f"{c}{'' if c in live else ' (removed)'}" for c in sorted(convs))
            found.threads_split.append(f"thread {thread}: conversations {state}")
