"""Bulk jobs (handlers/bulk.py): what a caller asks for, and what a job shows.

A job is one action on many tickets or many conversations. Each kind names its entity and the
change (schemas/changes.py) each of its items becomes; the targets are a list of ids or a filter,
frozen into items when the job is made.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from schemas.api import _Body
from schemas.changes import Location, TicketStatus
from schemas.types import Id, IsoTime, Timestamp

BulkKind = Literal[
    "close_tickets",
    "reopen_tickets",
    "set_ticket_owner",
    "delete_tickets",
    "restore_tickets",
    "reroute_tickets",
    "set_conversation_owner",
    "close_conversations",
    "trash_conversations",
    "restore_conversations",
]
TICKET_KINDS = frozenset(
    {
        "close_tickets",
        "reopen_tickets",
        "set_ticket_owner",
        "delete_tickets",
        "restore_tickets",
        "reroute_tickets",
    }
)
RESTORE_KINDS = frozenset({"restore_tickets", "restore_conversations"})
JobState = Literal["running", "paused", "cancelled", "completed", "completed_with_failures"]
ENDED: frozenset[str] = frozenset({"cancelled", "completed", "completed_with_failures"})
MAX_IDS = 100_000
_STATUSES = {
    "ticket": frozenset({"new", "waiting_on_contact", "waiting_on_us", "closed"}),
    "conversation": frozenset({"open", "closed"}),
}


def entity_of(kind: str) -> Literal["ticket", "conversation"]:
    return "ticket" if kind in TICKET_KINDS else "conversation"


class BulkFilter(_Body):
    """Targets by what they are now (frozen when the job is made). Live ones, or for a restore
    the deleted / trashed ones."""

    inbox_id: Id | None = Field(
        default=None, description="Conversations of this inbox; tickets with one there."
    )
    status: Literal["new", "waiting_on_contact", "waiting_on_us", "closed", "open"] | None = None
    owner_id: Id | None = None
    location: Location | None = None
    older_than: IsoTime | None = Field(default=None, description="Created before this time.")


class BulkJobIn(_Body):
    account_id: Id | None = Field(default=None, description="Admin token only; else the token's.")
    action: BulkKind
    owner_id: Id | None = Field(
        default=None,
        description="set_ticket_owner / set_conversation_owner: the owner (null: none).",
    )
    status: TicketStatus = Field(
        default="waiting_on_us", description="reopen_tickets: the status they go to."
    )
    ids: list[Id] | None = Field(default=None, max_length=MAX_IDS)
    filter: BulkFilter | None = None

    @model_validator(mode="after")
    def _one_target(self) -> BulkJobIn:
        if (self.ids is None) == (self.filter is None):
            raise ValueError("give the targets as either ids or filter")
        if self.action == "reopen_tickets" and self.status == "closed":
            raise ValueError("reopen_tickets: status may not be closed")
        status = self.filter.status if self.filter is not None else None
        entity = entity_of(self.action)
        if status is not None and status not in _STATUSES[entity]:
            raise ValueError(f"filter.status {status} is not a status a {entity} has")
        return self


class BulkFailure(BaseModel):
    target_id: int
    reason: str


class BulkJobOut(BaseModel):
    """A job and its progress: ``done`` + ``failed`` + ``pending`` = ``total``. ``failures``:
    failed items with their reasons, by target id, at most ``failures_limit`` after
    ``failures_after_id`` (``next_failures_after_id`` when more follow)."""

    id: int
    account_id: int
    action: dict[str, Any]
    target: dict[str, Any]
    entity: Literal["ticket", "conversation"]
    state: JobState
    total: int
    done: int
    failed: int
    pending: int
    generation: int = Field(description="Retries of the failed items so far.")
    created_at: Timestamp
    updated_at: Timestamp
    finished_at: Timestamp | None
    failures: list[BulkFailure] = Field(default_factory=list)
    next_failures_after_id: int | None = None
