"""Changes: the only way state moves. Each says "set X to V" (never "toggle") and carries an
identity (``id``) and the time it happened (``occurred_at``), so that a replayed or reordered
delivery lands on the same end state (DESIGN.md, "What idempotent must mean here")."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter

from schemas.types import Id

TicketStatus = Literal["new", "waiting_on_contact", "waiting_on_us", "closed"]
ConversationStatus = Literal["open", "closed"]
Location = Literal["inbox", "help_desk"]


class _Change(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SetConversationOwner(_Change):
    kind: Literal["set_conversation_owner"] = "set_conversation_owner"
    conversation_id: Id
    owner_id: Id | None


class SetConversationStatus(_Change):
    kind: Literal["set_conversation_status"] = "set_conversation_status"
    conversation_id: Id
    status: ConversationStatus


class TrashConversation(_Change):
    kind: Literal["trash_conversation"] = "trash_conversation"
    conversation_id: Id


class CreateTicket(_Change):
    kind: Literal["create_ticket"] = "create_ticket"
    conversation_id: Id
    owner_id: Id | None = None
    status: TicketStatus = "new"
    priority: str | None = None
    properties: dict[str, Any] = Field(default_factory=dict)
    # Filled in by the store when the ticket row is allocated; R1/R2 decide location then.
    ticket_id: Id | None = None
    location: Location | None = None


class AssociateConversation(_Change):
    kind: Literal["associate_conversation"] = "associate_conversation"
    ticket_id: Id
    conversation_id: Id


class DissociateConversation(_Change):
    """Exists so that asking has an answer: it is always refused (T2)."""

    kind: Literal["dissociate_conversation"] = "dissociate_conversation"
    ticket_id: Id
    conversation_id: Id


class SetTicketOwner(_Change):
    kind: Literal["set_ticket_owner"] = "set_ticket_owner"
    ticket_id: Id
    owner_id: Id | None


class SetTicketStatus(_Change):
    kind: Literal["set_ticket_status"] = "set_ticket_status"
    ticket_id: Id
    status: TicketStatus


class DeleteTicket(_Change):
    kind: Literal["delete_ticket"] = "delete_ticket"
    ticket_id: Id


class RestoreConversation(_Change):
    kind: Literal["restore_conversation"] = "restore_conversation"
    conversation_id: Id


class RestoreTicket(_Change):
    kind: Literal["restore_ticket"] = "restore_ticket"
    ticket_id: Id


class MessageReceived(_Change):
    """An inbound message on a conversation; recorded as the message row, not in ``changes``."""

    kind: Literal["message_received"] = "message_received"
    conversation_id: Id


class MergeConversation(_Change):
    """A message showed this conversation to be part of ``into_id``'s thread (M2): its messages
    moved there. Made by ingestion (handlers/threading.py), never by the API."""

    kind: Literal["merge_conversation"] = "merge_conversation"
    conversation_id: Id
    into_id: Id


class RerouteTicket(_Change):
    """R1/R2 again, by the account's tier in force when this change happens: the ticket and its
    conversations move to where a ticket created now would go (a tier change leaves existing
    tickets where they are until they are rerouted, e.g. by a bulk job). Made by bulk jobs."""

    kind: Literal["reroute_ticket"] = "reroute_ticket"
    ticket_id: Id
    # Filled in by the store when the change is applied (the tier in force then decides it).
    location: Location | None = None


class Repair(_Change):
    """Reconciliation (handlers/reconcile.py) puts back what ``rule`` says on a case whose rows
    drifted from it (a write that bypassed the rules); ``cause`` says what was found. Made by
    inboxsync, never by the API: its id is derived from the drift, so it is applied once."""

    kind: Literal["repair"] = "repair"
    rule: Literal["S1", "D1", "D2", "R1", "R2"]
    ticket_id: Id
    conversation_ids: list[Id] = Field(default_factory=list)
    cause: str = Field(max_length=2000)
    # D1: the trash found (the conversation's ``removed_by``), so that a replay of the case's
    # history, where that trash was never recorded, comes to the same state.
    removed_by: str | None = Field(default=None, max_length=200)


# What callers may send (POST /changes): every action but the ones inboxsync makes itself.
ApiAction = Annotated[
    SetConversationOwner
    | SetConversationStatus
    | TrashConversation
    | CreateTicket
    | AssociateConversation
    | DissociateConversation
    | SetTicketOwner
    | SetTicketStatus
    | DeleteTicket
    | RestoreConversation
    | RestoreTicket
    | MessageReceived
    | MergeConversation,
    Field(discriminator="kind"),
]
# Every action a change may record.
Action = Annotated[
    SetConversationOwner
    | SetConversationStatus
    | TrashConversation
    | CreateTicket
    | AssociateConversation
    | DissociateConversation
    | SetTicketOwner
    | SetTicketStatus
    | DeleteTicket
    | RestoreConversation
    | RestoreTicket
    | MessageReceived
    | MergeConversation
    | RerouteTicket
    | Repair,
    Field(discriminator="kind"),
]
ACTION_ADAPTER: TypeAdapter[Action] = TypeAdapter(Action)


class ChangeEnvelope(BaseModel):
    """One change with its identity: what a Celery task carries and what ``changes`` records."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=200)
    account_id: Id
    occurred_at: AwareDatetime
    action: Action
    request_sha256: str | None = None
    # What the answer must tell the caller about how the change was taken (a clamped time).
    notes: list[str] = Field(default_factory=list)
    # Who or what made it, for the history (GET /tickets/{id}/history): {"via": "api",
    # "token_id": 7} (no token_id: the admin token), {"via": "ingest"}, {"via": "reconcile"},
    # {"via": "bulk", "job_id": 3}. Not part of the request digest.
    cause: dict[str, Any] = Field(default_factory=dict)


Outcome = Literal["applied", "rejected", "superseded"]


class ChangeResult(BaseModel):
    """``applied``; ``rejected`` by a rule (``code`` = rule:status); or ``superseded``: applied
    in its place in history, but a later event (named in ``superseded``) already set the same
    fields otherwise, so the case does not show it."""

    change_id: str
    outcome: Outcome
    duplicate: bool = False
    replayed: bool = False
    error: str | None = None
    code: str | None = None
    conversation_id: int | None = None
    ticket_id: int | None = None
    effects: list[dict[str, Any]] = Field(default_factory=list)
    superseded: list[dict[str, Any]] = Field(default_factory=list)
    occurred_at: datetime | None = None
    notes: list[str] = Field(default_factory=list)


def order_key(occurred_at: datetime, change_id: str) -> tuple[datetime, str]:
    """The total order of changes: time first, identity to break ties the same way everywhere."""
    return (occurred_at, change_id)
