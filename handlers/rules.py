"""The sync rules of DESIGN.md as a pure fold: ``apply(case, change) -> effects``.

A *case* is a ticket with its conversations, or a conversation without a ticket. ``apply``
mutates the in-memory case and returns what changed, each effect tagged with the rule that caused
it. Rules fire only on the change itself, never on another rule's effect: that is why a
propagated change cannot echo back (closing conversations because a ticket closed does not touch
the ticket again). No database, no Celery: the store loads a case, calls this, and saves the diff.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from schemas import changes as c


class RuleRefusal(Exception):
    """A change a rule forbids. ``rule`` is the rule id, ``status`` the HTTP status it maps to."""

    def __init__(self, rule: str, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.rule = rule
        self.status = status


@dataclass
class ConversationState:
    id: int
    status: str = "open"
    owner_id: int | None = None
    location: str = "inbox"
    ticket_id: int | None = None
    removed_by: str | None = None


@dataclass
class TicketState:
    id: int
    status: str = "new"
    owner_id: int | None = None
    location: str = "inbox"
    removed_by: str | None = None


@dataclass
class Case:
    conversations: dict[int, ConversationState] = field(default_factory=dict)
    tickets: dict[int, TicketState] = field(default_factory=dict)

    def conversations_of(self, ticket_id: int) -> list[ConversationState]:
        return sorted(
            (cv for cv in self.conversations.values() if cv.ticket_id == ticket_id),
            key=lambda cv: cv.id,
        )


@dataclass(frozen=True)
class Effect:
    entity: str  # "conversation" | "ticket"
    entity_id: int
    field: str
    value: str | int | None
    rule: str

    def as_dict(self) -> dict[str, str | int | None]:
        return {
            "entity": self.entity,
            "id": self.entity_id,
            "field": self.field,
            "value": self.value,
            "rule": self.rule,
        }


class _Effects:
    """Collects effects, recording only real changes of value."""

    def __init__(self) -> None:
        self.items: list[Effect] = []

    def set(
        self, obj: ConversationState | TicketState, name: str, value: object, rule: str
    ) -> None:
        if getattr(obj, name) == value:
            return
        setattr(obj, name, value)
        entity = "ticket" if isinstance(obj, TicketState) else "conversation"
        self.items.append(Effect(entity, obj.id, name, value, rule))  # type: ignore[arg-type]


def _conversation(case: Case, conversation_id: int) -> ConversationState:
    try:
        return case.conversations[conversation_id]
    except KeyError:
        raise RuleRefusal("-", f"conversation {conversation_id} not found", 404) from None


def _ticket(case: Case, ticket_id: int) -> TicketState:
    try:
        return case.tickets[ticket_id]
    except KeyError:
        raise RuleRefusal("-", f"ticket {ticket_id} not found", 404) from None


MERGED = "merged:"  # ``removed_by`` of a conversation merged into another (M2)


def merged_into(removed_by: str | None) -> int | None:
    if removed_by is None or not removed_by.startswith(MERGED):
        return None
    return int(removed_by[len(MERGED) :])


def _live(obj: ConversationState | TicketState) -> None:
    if obj.removed_by is None:
        return
    if (into := merged_into(obj.removed_by)) is not None:
        raise RuleRefusal("M2", f"conversation {obj.id} was merged into conversation {into}")
    kind = "ticket" if isinstance(obj, TicketState) else "conversation"
    raise RuleRefusal("D", f"{kind} {obj.id} is deleted; restore it first")


def apply(case: Case, change_id: str, action: c.Action) -> list[Effect]:
    """Apply one change to ``case``; return its effects. Raises ``RuleRefusal`` if forbidden."""
    fx = _Effects()
    handler = _HANDLERS[type(action)]
    handler(case, change_id, action, fx)
    return fx.items


def _set_conversation_owner(case: Case, _id: str, a: c.SetConversationOwner, fx: _Effects) -> None:
    conv = _conversation(case, a.conversation_id)
    _live(conv)
    fx.set(conv, "owner_id", a.owner_id, "owner")
    if conv.ticket_id is not None:
        fx.set(case.tickets[conv.ticket_id], "owner_id", a.owner_id, "O1")


def _set_ticket_owner(case: Case, _id: str, a: c.SetTicketOwner, fx: _Effects) -> None:
    ticket = _ticket(case, a.ticket_id)
    _live(ticket)
    fx.set(ticket, "owner_id", a.owner_id, "owner")  # O2: conversations keep their owners.


def _set_conversation_status(
    case: Case, _id: str, a: c.SetConversationStatus, fx: _Effects
) -> None:
    conv = _conversation(case, a.conversation_id)
    _live(conv)
    fx.set(conv, "status", a.status, "S3")  # S3: only this conversation, never its ticket.


def _set_ticket_status(case: Case, _id: str, a: c.SetTicketStatus, fx: _Effects) -> None:
    ticket = _ticket(case, a.ticket_id)
    _live(ticket)
    was_closed = ticket.status == "closed"
    fx.set(ticket, "status", a.status, "status")
    live = [cv for cv in case.conversations_of(ticket.id) if cv.removed_by is None]
    if a.status == "closed":
        for conv in live:
            fx.set(conv, "status", "closed", "S1")
    elif was_closed and len(case.conversations_of(ticket.id)) == 1 and live:
        fx.set(live[0], "status", "open", "S2")  # S2: with several conversations, none reopens.


def _create_ticket(case: Case, _id: str, a: c.CreateTicket, fx: _Effects) -> None:
    conv = _conversation(case, a.conversation_id)
    _live(conv)
    if conv.ticket_id is not None:
        return  # T1: asking again returns the existing ticket.
    assert a.ticket_id is not None and a.location is not None, "store allocates id and location"
    ticket = TicketState(id=a.ticket_id, status=a.status, owner_id=a.owner_id, location=a.location)
    case.tickets[ticket.id] = ticket
    fx.items.append(Effect("ticket", ticket.id, "created", a.location, "T1"))
    fx.set(conv, "ticket_id", ticket.id, "T1")
    fx.set(conv, "location", a.location, "R1" if a.location == "help_desk" else "R2")


def _associate(case: Case, _id: str, a: c.AssociateConversation, fx: _Effects) -> None:
    ticket = _ticket(case, a.ticket_id)
    conv = _conversation(case, a.conversation_id)
    _live(ticket)
    _live(conv)
    if conv.ticket_id == ticket.id:
        return
    if conv.ticket_id is not None:
        raise RuleRefusal(
            "T1", f"conversation {conv.id} already belongs to ticket {conv.ticket_id}"
        )
    fx.set(conv, "ticket_id", ticket.id, "T3")
    # A conversation lives where its ticket lives (R1 moved the ticket; its conversations follow).
    fx.set(conv, "location", ticket.location, "T3")


def _dissociate(case: Case, _id: str, a: c.DissociateConversation, fx: _Effects) -> None:
    raise RuleRefusal("T2", "a conversation is never dissociated from its ticket")


def _remove_ticket_cascade(
    case: Case, ticket: TicketState, cause: str, fx: _Effects, rule: str
) -> None:
    fx.set(ticket, "removed_by", cause, rule)
    for conv in case.conversations_of(ticket.id):
        if conv.removed_by is None:
            fx.set(conv, "removed_by", cause, "D2")


def _trash_conversation(case: Case, change_id: str, a: c.TrashConversation, fx: _Effects) -> None:
    conv = _conversation(case, a.conversation_id)
    if conv.removed_by is not None:
        return
    fx.set(conv, "removed_by", change_id, "trash")
    if conv.ticket_id is not None:
        ticket = case.tickets[conv.ticket_id]
        if ticket.removed_by is None:
            _remove_ticket_cascade(case, ticket, change_id, fx, "D1")  # D1, then D2 composes.


def _delete_ticket(case: Case, change_id: str, a: c.DeleteTicket, fx: _Effects) -> None:
    ticket = _ticket(case, a.ticket_id)
    if ticket.removed_by is None:
        _remove_ticket_cascade(case, ticket, change_id, fx, "delete")


def _restore(case: Case, cause: str | None, fx: _Effects) -> None:
    """Bring back everything the cascade ``cause`` removed, and nothing else."""
    if cause is None:
        return
    if (into := merged_into(cause)) is not None:
        raise RuleRefusal("M2", f"merged into conversation {into}: its messages are there now")
    removable: list[ConversationState | TicketState] = [
        *case.tickets.values(),
        *case.conversations.values(),
    ]
    for obj in removable:
        if obj.removed_by == cause:
            fx.set(obj, "removed_by", None, "restore")


def _restore_conversation(case: Case, _id: str, a: c.RestoreConversation, fx: _Effects) -> None:
    _restore(case, _conversation(case, a.conversation_id).removed_by, fx)


def _restore_ticket(case: Case, _id: str, a: c.RestoreTicket, fx: _Effects) -> None:
    _restore(case, _ticket(case, a.ticket_id).removed_by, fx)


def _message_received(case: Case, _id: str, a: c.MessageReceived, fx: _Effects) -> None:
    """A customer writes again on a closed conversation: it reopens, and a closed ticket that
    holds only it goes back to ``waiting_on_us`` (S2 through the ticket). With several
    conversations the ticket stays closed and the others with it (docs/rules.md, M1)."""
    conv = _conversation(case, a.conversation_id)
    if conv.removed_by is not None or conv.status != "closed":
        return  # M1 is about a closed conversation: on an open one a message changes nothing
    fx.set(conv, "status", "open", "M1")
    if conv.ticket_id is not None:
        ticket = case.tickets[conv.ticket_id]
        only_it = len(case.conversations_of(ticket.id)) == 1
        if ticket.removed_by is None and ticket.status == "closed" and only_it:
            fx.set(ticket, "status", "waiting_on_us", "M1")


def _merge_conversation(case: Case, _id: str, a: c.MergeConversation, fx: _Effects) -> None:
    """M2: the conversation is part of another's thread; ingestion moved its messages there.
    Only a conversation without a ticket is merged (T2: it would leave its ticket)."""
    conv = _conversation(case, a.conversation_id)
    if conv.ticket_id is not None:
        raise RuleRefusal("T2", f"conversation {conv.id} has a ticket: it is not merged")
    if conv.removed_by is None:
        fx.set(conv, "removed_by", f"{MERGED}{a.into_id}", "M2")


def _reroute_ticket(case: Case, _id: str, a: c.RerouteTicket, fx: _Effects) -> None:
    """R1/R2 applied again: the ticket goes where the store decided (the tier in force now) and
    every conversation of it follows, removed ones too (a restore brings them back there)."""
    ticket = _ticket(case, a.ticket_id)
    _live(ticket)
    assert a.location is not None, "the store decides the location"
    rule = "R1" if a.location == "help_desk" else "R2"
    fx.set(ticket, "location", a.location, rule)
    for conv in case.conversations_of(ticket.id):
        fx.set(conv, "location", a.location, rule)


def _repair(case: Case, _id: str, a: c.Repair, fx: _Effects) -> None:
    """Reconciliation (handlers/reconcile.py): rows of this case drifted from what the rules say
    (a write that bypassed them); put back what ``a.rule`` says, where it still does not hold.
    On a case that holds (a replay of its history, a second reconciler) it changes nothing."""
    ticket = _ticket(case, a.ticket_id)
    convs = [cv for cv in case.conversations_of(ticket.id) if cv.id in set(a.conversation_ids)]
    if a.rule == "S1":
        if ticket.removed_by is None and ticket.status == "closed":
            for conv in convs:
                if conv.removed_by is None:
                    fx.set(conv, "status", "closed", "S1")
    elif a.rule == "D2":
        if ticket.removed_by is not None:
            for conv in convs:
                if conv.removed_by is None:
                    fx.set(conv, "removed_by", ticket.removed_by, "D2")
    elif a.rule == "D1":
        if ticket.removed_by is None and a.removed_by is not None:
            for conv in convs:  # in a replay: the trash found, which history did not record
                if conv.removed_by is None:
                    fx.set(conv, "removed_by", a.removed_by, "trash")
        trashed = [cv for cv in convs if cv.removed_by and merged_into(cv.removed_by) is None]
        if ticket.removed_by is None and trashed:
            # The ticket goes with the trash's own cause: restoring it restores the whole case.
            _remove_ticket_cascade(case, ticket, str(trashed[0].removed_by), fx, "D1")
    else:  # R1 / R2: a conversation lives where its ticket lives
        for conv in convs:
            fx.set(
                conv, "location", ticket.location, "R1" if ticket.location == "help_desk" else "R2"
            )


_HANDLERS: dict[type, Callable[[Case, str, Any, _Effects], None]] = {
    c.SetConversationOwner: _set_conversation_owner,
    c.SetTicketOwner: _set_ticket_owner,
    c.SetConversationStatus: _set_conversation_status,
    c.SetTicketStatus: _set_ticket_status,
    c.CreateTicket: _create_ticket,
    c.AssociateConversation: _associate,
    c.DissociateConversation: _dissociate,
    c.TrashConversation: _trash_conversation,
    c.DeleteTicket: _delete_ticket,
    c.RestoreConversation: _restore_conversation,
    c.RestoreTicket: _restore_ticket,
    c.MessageReceived: _message_received,
    c.MergeConversation: _merge_conversation,
    c.RerouteTicket: _reroute_ticket,
    c.Repair: _repair,
}
