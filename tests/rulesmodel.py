"""docs/rules.md as a plain in-memory model: the reference tests/test_model.py holds the store to.

Written from the spec, not from handlers/rules.py (nothing of handlers/, store/ or schemas/ is
imported), so that two implementations have to agree. No SQL, no Celery, no pydantic.

- **State is a fold of history in inboxsync's order** (docs/rules.md, "Order and idempotency"):
  every event sorted by (time, id), ids compared as strings the way ``order_key`` does, so at one
  instant ``api-7`` comes before ``merge:3``, before ``message:12``, before ``sync-2``. The whole
  history is replayed from the start for every question asked: a late change needs no path of
  its own.
- **A change is judged when it arrives, in its place in history.** Refused there, it is recorded
  as refused and takes no part in later replays (README, "Decisions"). Accepted, it stays in
  history; if a later arrival makes it impossible at its place, it is a no-op there, except
  that no late arrival may undo a ticket's creation or a merge (``Model._undoes_a_fact``).
- **A message is placed when it is stored** (threading decides once, on the state of that
  moment) and takes its place in history at its stored time as ``message:<row id>``. Automatic
  messages are stored but are no events: they reopen nothing (M1).

Conversations are known by the store's ids (the model learns them when a message starts one);
tickets by the id of the change that created them (the store's ids are the test's business).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

# R1/R2: the documented defaults (docs/rules.md); tests/conftest.py sets neither.
HELPDESK_CUTOFF = datetime(2024, 4, 1, tzinfo=UTC)
HELPDESK_TIERS = frozenset({"professional", "enterprise"})

TicketKey = str  # the id of the change that created the ticket
ThreadId = tuple[int, str]  # (inbox, thread id): ids are per inbox


class Refused(Exception):
    """A change a rule forbids at its place in history; ``rule`` names the rule."""

    def __init__(self, rule: str) -> None:
        super().__init__(rule)
        self.rule = rule


# The state ------------------------------------------------------------------------------------


@dataclass
class Conversation:
    status: str = "open"
    owner: int | None = None
    location: str = "inbox"
    ticket: TicketKey | None = None
    removed_by: str | None = None


@dataclass
class Ticket:
    location: str
    status: str = "new"
    owner: int | None = None
    removed_by: str | None = None


@dataclass
class World:
    conversations: dict[int, Conversation]
    tickets: dict[TicketKey, Ticket] = field(default_factory=dict)

    def conversations_of(self, key: TicketKey) -> list[Conversation]:
        return [cv for cv in self.conversations.values() if cv.ticket == key]


# The actions: what a change or a message asks --------------------------------------------------


@dataclass(frozen=True)
class CreateTicket:
    conversation: int


@dataclass(frozen=True)
class Associate:
    ticket: TicketKey
    conversation: int


@dataclass(frozen=True)
class Dissociate:
    ticket: TicketKey
    conversation: int


@dataclass(frozen=True)
class SetConversationOwner:
    conversation: int
    owner: int | None


@dataclass(frozen=True)
class SetTicketOwner:
    ticket: TicketKey
    owner: int | None


@dataclass(frozen=True)
class SetConversationStatus:
    conversation: int
    status: str


@dataclass(frozen=True)
class SetTicketStatus:
    ticket: TicketKey
    status: str


@dataclass(frozen=True)
class TrashConversation:
    conversation: int


@dataclass(frozen=True)
class DeleteTicket:
    ticket: TicketKey


@dataclass(frozen=True)
class RestoreConversation:
    conversation: int


@dataclass(frozen=True)
class RestoreTicket:
    ticket: TicketKey


@dataclass(frozen=True)
class MessageStored:
    """A message that is not automatic, on the conversation it is in now (M1)."""

    conversation: int


@dataclass(frozen=True)
class Merge:
    """M2: ``conversation`` was shown to be part of ``into``'s thread."""

    conversation: int
    into: int


Action = (
    CreateTicket
    | Associate
    | Dissociate
    | SetConversationOwner
    | SetTicketOwner
    | SetConversationStatus
    | SetTicketStatus
    | TrashConversation
    | DeleteTicket
    | RestoreConversation
    | RestoreTicket
    | MessageStored
    | Merge
)


@dataclass(frozen=True)
class Event:
    at: int  # test seconds
    id: str
    action: Action

    @property
    def order(self) -> tuple[int, str]:
        return (self.at, self.id)


# The rules, one function each -----------------------------------------------------------------

MERGED = "merged:"


def ticket_location(tier: str, created_at: datetime) -> str:
    """R1: a help-desk tier created on or after the cutoff (as an instant); R2: the rest."""
    return "help_desk" if tier in HELPDESK_TIERS and created_at >= HELPDESK_CUTOFF else "inbox"


def _live_conversation(w: World, cid: int) -> Conversation:
    cv = w.conversations[cid]
    if cv.removed_by is not None:
        raise Refused("M2" if cv.removed_by.startswith(MERGED) else "D")  # restore it first
    return cv


def _ticket(w: World, key: TicketKey) -> Ticket:
    if key not in w.tickets:
        raise Refused("-")  # not created yet at this point of history
    return w.tickets[key]


def _live_ticket(w: World, key: TicketKey) -> Ticket:
    ticket = _ticket(w, key)
    if ticket.removed_by is not None:
        raise Refused("D")
    return ticket


def _create_ticket(w: World, ev: Event, a: CreateTicket, location: str) -> None:
    cv = _live_conversation(w, a.conversation)
    if cv.ticket is not None:
        return  # T1: asking again returns the ticket it has
    w.tickets[ev.id] = Ticket(location=location)
    cv.ticket, cv.location = ev.id, location  # R1/R2: the ticket and its conversation


def _associate(w: World, a: Associate) -> None:
    ticket = _live_ticket(w, a.ticket)
    cv = _live_conversation(w, a.conversation)
    if cv.ticket == a.ticket:
        return
    if cv.ticket is not None:
        raise Refused("T1")  # at most one ticket; leaving the other would be T2
    cv.ticket, cv.location = a.ticket, ticket.location  # T3: it moves to the ticket's location


def _set_conversation_owner(w: World, a: SetConversationOwner) -> None:
    cv = _live_conversation(w, a.conversation)
    cv.owner = a.owner
    if cv.ticket is not None:
        w.tickets[cv.ticket].owner = a.owner  # O1


def _set_ticket_owner(w: World, a: SetTicketOwner) -> None:
    _live_ticket(w, a.ticket).owner = a.owner  # O2: no conversation changes


def _set_conversation_status(w: World, a: SetConversationStatus) -> None:
    _live_conversation(w, a.conversation).status = a.status  # S3: only it


def _set_ticket_status(w: World, a: SetTicketStatus) -> None:
    ticket = _live_ticket(w, a.ticket)
    was_closed = ticket.status == "closed"
    ticket.status = a.status
    mine = w.conversations_of(a.ticket)
    if a.status == "closed":
        # S1, on the change "set to closed" (rules fire on a change), closed before or not.
        for cv in mine:
            if cv.removed_by is None:
                cv.status = "closed"
    elif was_closed and len(mine) == 1 and mine[0].removed_by is None:
        mine[0].status = "open"  # S2: with several conversations, none reopens


def _remove_ticket(w: World, key: TicketKey, cause: str) -> None:
    """D2: the ticket and every conversation of it still there, all by the same cause."""
    w.tickets[key].removed_by = cause
    for cv in w.conversations_of(key):
        if cv.removed_by is None:
            cv.removed_by = cause


def _trash_conversation(w: World, ev: Event, a: TrashConversation) -> None:
    cv = w.conversations[a.conversation]
    if cv.removed_by is not None:
        return
    cv.removed_by = ev.id
    if cv.ticket is not None and w.tickets[cv.ticket].removed_by is None:
        _remove_ticket(w, cv.ticket, ev.id)  # D1, and D2 composes


def _delete_ticket(w: World, ev: Event, a: DeleteTicket) -> None:
    if _ticket(w, a.ticket).removed_by is None:
        _remove_ticket(w, a.ticket, ev.id)


def _restore(w: World, cause: str | None) -> None:
    """Everything that one cascade removed comes back, and nothing else (docs: Deletion)."""
    if cause is None:
        return
    if cause.startswith(MERGED):
        raise Refused("M2")  # its messages are in the other conversation now
    things: list[Ticket | Conversation] = [*w.tickets.values(), *w.conversations.values()]
    for thing in things:
        if thing.removed_by == cause:
            thing.removed_by = None


def _message_stored(w: World, a: MessageStored) -> None:
    cv = w.conversations[a.conversation]
    if cv.removed_by is not None or cv.status != "closed":
        return  # M1 is about "a closed conversation": on an open one a message changes nothing
    cv.status = "open"  # M1
    if cv.ticket is None:
        return
    ticket = w.tickets[cv.ticket]
    only_it = len(w.conversations_of(cv.ticket)) == 1  # M1: "a closed ticket that holds only it"
    if ticket.removed_by is None and ticket.status == "closed" and only_it:
        ticket.status = "waiting_on_us"  # S2 through the ticket


def _merge(w: World, a: Merge) -> None:
    cv = w.conversations[a.conversation]
    if cv.ticket is not None:
        raise Refused("T2")  # a conversation with a ticket never leaves it
    if cv.removed_by is None:
        cv.removed_by = f"{MERGED}{a.into}"


def apply(w: World, ev: Event, location_of: Callable[[int], str]) -> None:
    """One event on ``w``; raises ``Refused``. ``location_of``: R1/R2 for a conversation."""
    a = ev.action
    if isinstance(a, CreateTicket):
        _create_ticket(w, ev, a, location_of(a.conversation))
    elif isinstance(a, Associate):
        _associate(w, a)
    elif isinstance(a, Dissociate):
        raise Refused("T2")
    elif isinstance(a, SetConversationOwner):
        _set_conversation_owner(w, a)
    elif isinstance(a, SetTicketOwner):
        _set_ticket_owner(w, a)
    elif isinstance(a, SetConversationStatus):
        _set_conversation_status(w, a)
    elif isinstance(a, SetTicketStatus):
        _set_ticket_status(w, a)
    elif isinstance(a, TrashConversation):
        _trash_conversation(w, ev, a)
    elif isinstance(a, DeleteTicket):
        _delete_ticket(w, ev, a)
    elif isinstance(a, RestoreConversation):
        _restore(w, w.conversations[a.conversation].removed_by)
    elif isinstance(a, RestoreTicket):
        _restore(w, _ticket(w, a.ticket).removed_by)
    elif isinstance(a, MessageStored):
        _message_stored(w, a)
    elif isinstance(a, Merge):
        _merge(w, a)


# Messages and threading -----------------------------------------------------------------------


@dataclass
class Message:
    inbox: int
    conversation: int  # where it is now: merges move messages (M2)
    stored_at: int
    automatic: bool


@dataclass(frozen=True)
class Placement:
    """Where a new message goes: ``conversation`` None starts one; ``absorbed`` are merged into
    it, ``linked`` are named too but keep their tickets (M2)."""

    conversation: int | None
    absorbed: tuple[int, ...] = ()
    linked: tuple[int, ...] = ()


@dataclass
class Account:
    tier: str
    created_at: datetime


class Model:
    """Every event and message seen so far; the state is their replay."""

    def __init__(self) -> None:
        self.account_of_inbox: dict[int, Account] = {}
        self.inbox_of: dict[int, int] = {}  # conversation -> inbox
        self.born: list[int] = []  # conversations, oldest first
        self.changes: list[Event] = []  # accepted ones, in arrival order
        self.refused: dict[str, str] = {}  # change id -> rule
        self.messages: dict[int, Message] = {}  # by the store's row id
        self.stored: dict[tuple[int, str], int] = {}  # (inbox, external id) -> row id
        self.threads: dict[ThreadId, int] = {}  # every thread id -> its conversation
        self.merged_into: dict[int, int] = {}
        self.merges: list[Event] = []

    # -- time and state

    def history(self, extra: Iterable[Event] = ()) -> list[Event]:
        messages = [
            Event(m.stored_at, f"message:{row}", MessageStored(m.conversation))
            for row, m in self.messages.items()
            if not m.automatic  # M1: auto-replies and bounces reopen nothing
        ]
        return sorted([*self.changes, *self.merges, *messages, *extra], key=lambda e: e.order)

    def replay(self, extra: Event | None = None) -> tuple[World, str | None]:
        """The state after every event in order (and ``extra`` in its place), and the rule
        that refused ``extra``, if one did. Other events refused at their place are no-ops."""
        w = World({cid: Conversation() for cid in self.born})
        refusal = None
        for ev in self.history([extra] if extra else []):
            try:
                apply(w, ev, self.location_of)
            except Refused as refused:
                if ev is extra:
                    refusal = refused.rule
        return w, refusal

    def state(self) -> World:
        return self.replay()[0]

    def location_of(self, conversation: int) -> str:
        account = self.account_of_inbox[self.inbox_of[conversation]]
        return ticket_location(account.tier, account.created_at)

    # -- changes

    def known(self, change_id: str) -> bool:
        return change_id in self.refused or any(e.id == change_id for e in self.changes)

    def change(self, change_id: str, at: int, action: Action) -> str | None:
        """A change arrives: None if accepted, else the rule that refused it. A change already
        recorded changes nothing (docs: "answered with its first result")."""
        if self.known(change_id):
            return self.refused.get(change_id)
        ev = Event(at, change_id, action)
        after, refusal = self.replay(ev)
        if refusal is None:
            refusal = self._undoes_a_fact(self.state(), after)
        if refusal is not None:
            self.refused[change_id] = refusal
        else:
            self.changes.append(ev)
        return refusal

    def _undoes_a_fact(self, before: World, after: World) -> str | None:
        """A ticket that was created with its conversation (its id answered, T1) and a merge
        (the messages moved, M2) are facts: a late change that would undo one in its place is
        refused, not replayed; the first as T2 (only deletion ends an association). (docs/rules.md
        is silent here; replaying them away leaves a ticket without a conversation, or a live
        conversation whose messages are in another.)"""
        if any(key not in after.tickets for key in before.tickets):
            return "T2"
        for cid, into in self.merged_into.items():
            was, now = before.conversations[cid].removed_by, after.conversations[cid].removed_by
            if was == f"{MERGED}{into}" != now:
                return "M2"
        return None

    # -- messages

    def resolve(self, cid: int, w: World) -> int | None:
        """The live conversation ``cid`` is, or was merged into; None if it was removed."""
        seen: set[int] = set()
        current: int | None = cid
        while current is not None and current not in seen:
            seen.add(current)
            if w.conversations[current].removed_by is None:
                return current
            current = self.merged_into.get(current)
        return None

    def place(self, inbox: int, ids: list[str]) -> Placement:
        """Where a new message naming ``ids`` goes (docs: M2 and "a message that threads to a
        trashed conversation starts a new one")."""
        w = self.state()
        named = {self.threads[(inbox, t)] for t in ids if (inbox, t) in self.threads}
        live = sorted(
            {r for cid in named if (r := self.resolve(cid, w)) is not None}, key=self.born.index
        )
        if len(live) <= 1:
            return Placement(live[0] if live else None)
        ticketed = [cid for cid in live if w.conversations[cid].ticket is not None]
        survivor = ticketed[0] if ticketed else live[0]  # the one with a ticket, else the oldest
        absorbed = tuple(cid for cid in live if cid != survivor and cid not in ticketed)
        return Placement(survivor, absorbed, tuple(ticketed[1:]))

    def store(
        self,
        inbox: int,
        external_id: str,
        ids: list[str],
        *,
        automatic: bool,
        at: int,
        row: int,
        placement: Placement,
        conversation: int,
    ) -> None:
        """Record a new message the store placed as ``placement`` said, in ``conversation`` (the
        store's id of the new one when ``placement`` starts one)."""
        w = self.state()
        if placement.conversation is None:
            self.born.append(conversation)
            self.inbox_of[conversation] = inbox
        for gone in placement.absorbed:
            self.merges.append(Event(at, f"merge:{gone}", Merge(gone, conversation)))
            self.merged_into[gone] = conversation
            for m in self.messages.values():
                if m.conversation == gone:
                    m.conversation = conversation  # M2: its messages move there
        moved = {conversation, *placement.absorbed}
        for t in ids:
            current = self.threads.get((inbox, t))
            if current is None or self.resolve(current, w) in (None, *moved):
                self.threads[(inbox, t)] = conversation  # linked ones keep their own ids
        self.messages[row] = Message(inbox, conversation, at, automatic)
        self.stored[(inbox, external_id)] = row
