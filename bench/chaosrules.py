"""docs/rules.md as a plain fold, for the chaos run's comparison (bench/chaosmodel.py).

Written again from docs/rules.md, not imported from handlers/rules.py, so that two readings of
the spec have to agree. State is a ``World`` of conversations and tickets by the store's ids;
``apply`` takes one recorded event (a change's kind and payload, or ``message``) and changes the
world as the rules say, or raises ``Refused`` where a rule refuses it at that place in history.
Where docs/rules.md is read one way rather than another, the comment says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MERGED = "merged:"


class Refused(Exception):
    """A change a rule refuses at its place in history: it changes nothing there."""


@dataclass
class Conv:
    account: int
    status: str = "open"
    owner_id: int | None = None
    location: str = "inbox"
    ticket_id: int | None = None
    removed_by: str | None = None


@dataclass
class Ticket:
    status: str
    owner_id: int | None
    location: str
    removed_by: str | None = None


@dataclass
class World:
    """The model's state: every conversation the store has (each starts open in the inbox when
    its first message is stored, which no event can precede) and the tickets created so far."""

    conversations: dict[int, Conv]
    tickets: dict[int, Ticket] = field(default_factory=dict)
    locations: dict[int, str] = field(default_factory=dict)  # R1/R2 per account id
    notes: list[str] = field(default_factory=list)

    def conversations_of(self, ticket_id: int) -> list[Conv]:
        return [cv for cv in self.conversations.values() if cv.ticket_id == ticket_id]

    def live_conversation(self, conversation_id: int) -> Conv:
        cv = self.conversations[conversation_id]
        if cv.removed_by is not None:
            raise Refused("removed")
        return cv

    def live_ticket(self, ticket_id: int) -> Ticket:
        ticket = self.tickets.get(ticket_id)
        if ticket is None or ticket.removed_by is not None:
            raise Refused("no live ticket")
        return ticket


def _create_ticket(w: World, change_id: str, p: dict[str, Any]) -> None:
    cv = w.live_conversation(p["conversation_id"])
    if cv.ticket_id is not None:
        return  # T1: asking again returns the ticket it has
    if p.get("ticket_id") is None:
        raise Refused("T1 answered for a ticket the model does not see")
    location = w.locations[cv.account]  # R1 / R2, from the account as the client created it
    if p.get("location") != location:
        w.notes.append(f"{change_id}: R1/R2 gives {location}, the store chose {p.get('location')}")
    w.tickets[p["ticket_id"]] = Ticket(p.get("status", "new"), p.get("owner_id"), location)
    cv.ticket_id, cv.location = p["ticket_id"], location  # R1: the ticket and its conversation


def _associate(w: World, p: dict[str, Any]) -> None:
    ticket = w.live_ticket(p["ticket_id"])
    cv = w.live_conversation(p["conversation_id"])
    if cv.ticket_id == p["ticket_id"]:
        return
    if cv.ticket_id is not None:
        raise Refused("T1")  # at most one ticket; leaving the other would be T2
    cv.ticket_id, cv.location = p["ticket_id"], ticket.location  # T3


def _set_ticket_status(w: World, p: dict[str, Any]) -> None:
    ticket = w.live_ticket(p["ticket_id"])
    was_closed = ticket.status == "closed"
    ticket.status = p["status"]
    mine = w.conversations_of(p["ticket_id"])
    if p["status"] == "closed":  # S1, on the change "set to closed"
        for cv in mine:
            if cv.removed_by is None:
                cv.status = "closed"
    elif was_closed and len(mine) == 1 and mine[0].removed_by is None:
        mine[0].status = "open"  # S2: with several conversations, none reopens


def _remove_ticket(w: World, ticket_id: int, cause: str) -> None:
    """D2: the ticket and its conversations still there, all by one cause."""
    w.tickets[ticket_id].removed_by = cause
    for cv in w.conversations_of(ticket_id):
        if cv.removed_by is None:
            cv.removed_by = cause


def _trash(w: World, change_id: str, p: dict[str, Any]) -> None:
    cv = w.conversations[p["conversation_id"]]
    if cv.removed_by is not None:
        return
    cv.removed_by = change_id
    if cv.ticket_id is not None and w.tickets[cv.ticket_id].removed_by is None:
        _remove_ticket(w, cv.ticket_id, change_id)  # D1, composed with D2


def _restore(w: World, cause: str | None) -> None:
    """Everything one cascade removed comes back, nothing else (docs/rules.md: Deletion)."""
    if cause is None:
        return
    if cause.startswith(MERGED):
        raise Refused("M2")
    things: list[Conv | Ticket] = [*w.tickets.values(), *w.conversations.values()]
    for thing in things:
        if thing.removed_by == cause:
            thing.removed_by = None


def _message(w: World, conversation_id: int) -> None:
    """M1, as docs/rules.md words it: a message stored on a *closed* conversation reopens it,
    and a closed ticket that holds only it goes to waiting_on_us."""
    cv = w.conversations[conversation_id]
    if cv.removed_by is not None or cv.status != "closed":
        return
    cv.status = "open"
    if cv.ticket_id is None:
        return
    ticket = w.tickets[cv.ticket_id]
    alone = len(w.conversations_of(cv.ticket_id)) == 1
    if ticket.removed_by is None and ticket.status == "closed" and alone:
        ticket.status = "waiting_on_us"


def _merge(w: World, p: dict[str, Any]) -> None:
    cv = w.conversations[p["conversation_id"]]
    if cv.ticket_id is not None:
        raise Refused("T2")  # a conversation with a ticket never leaves it
    if cv.removed_by is None:
        cv.removed_by = f"{MERGED}{p['into_id']}"


def apply(w: World, event_id: str, kind: str, p: dict[str, Any]) -> None:
    """One recorded event on ``w``; ``Refused`` if a rule refuses it at this place."""
    if kind == "message":
        _message(w, p["conversation_id"])
    elif kind == "create_ticket":
        _create_ticket(w, event_id, p)
    elif kind == "associate_conversation":
        _associate(w, p)
    elif kind == "dissociate_conversation":
        raise Refused("T2")
    elif kind == "set_conversation_owner":
        cv = w.live_conversation(p["conversation_id"])
        cv.owner_id = p["owner_id"]
        if cv.ticket_id is not None:
            w.tickets[cv.ticket_id].owner_id = p["owner_id"]  # O1
    elif kind == "set_ticket_owner":
        w.live_ticket(p["ticket_id"]).owner_id = p["owner_id"]  # O2: conversations keep theirs
    elif kind == "set_conversation_status":
        w.live_conversation(p["conversation_id"]).status = p["status"]  # S3: only it
    elif kind == "set_ticket_status":
        _set_ticket_status(w, p)
    elif kind == "trash_conversation":
        _trash(w, event_id, p)
    elif kind == "delete_ticket":
        if p["ticket_id"] not in w.tickets:
            raise Refused("no ticket")
        if w.tickets[p["ticket_id"]].removed_by is None:
            _remove_ticket(w, p["ticket_id"], event_id)
    elif kind == "restore_conversation":
        _restore(w, w.conversations[p["conversation_id"]].removed_by)
    elif kind == "restore_ticket":
        if p["ticket_id"] not in w.tickets:
            raise Refused("no ticket")
        _restore(w, w.tickets[p["ticket_id"]].removed_by)
    elif kind == "merge_conversation":
        _merge(w, p)
    elif kind == "repair":
        # Reconciliation (handlers/reconcile.py) puts back what a rule says on rows that drifted
        # from it. In this fold the rules always hold, so there is nothing to put back; but a
        # repair means the store broke a rule of docs/rules.md at some point: reported.
        w.notes.append(f"{event_id}: a repair of drift ({p.get('rule')}): {p.get('cause')}")
    else:
        raise ValueError(f"unknown change kind {kind!r}")
