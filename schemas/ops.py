"""Bodies of the operations API and CLI: dead letters, tokens, inbox secrets, ``inboxsync
status``. Request bodies refuse unknown fields and values the store cannot hold (schemas/api.py)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from schemas.api import _Body
from schemas.types import Id, IsoTime, Timestamp

LetterState = Literal["waiting", "replayed", "discarded"]


class DeadLetterOut(BaseModel):
    """A payload a worker could not process. ``payload`` (only on ``GET /dead-letters/{id}``)
    is as stored: an ingest letter's delivery, or a task's ``args`` and ``kwargs``."""

    id: int
    task: str
    task_id: str | None
    key: str | None = Field(description="What it is looked up by: a change's id.")
    inbox_id: int | None
    account_id: int | None
    state: LetterState
    error_type: str
    error: str
    attempts: int
    created_at: Timestamp
    replays: int = Field(description="How often it was replayed.")
    replayed_at: Timestamp | None = Field(description="When it was last replayed.")
    replayed_as: str | None = Field(
        description="What the last replay became: a delivery id, a change id, a reply."
    )
    discarded_at: Timestamp | None
    payload: dict[str, Any] | None = None


class ReplayIn(_Body):
    """Which dead letters to replay: every field given must match."""

    task: str | None = Field(default=None, max_length=200, description="e.g. apply_change")
    inbox_id: Id | None = None
    reason: str | None = Field(default=None, max_length=500, description="in the error")
    older_than: IsoTime | None = None
    newer_than: IsoTime | None = None
    state: Literal["waiting", "replayed"] = "waiting"
    limit: int | None = Field(default=None, ge=1, le=100_000)


class ReplayOut(BaseModel):
    replayed: int
    ids: list[int]
    skipped: list[dict[str, Any]] = Field(
        default_factory=list, description="Letters that cannot be replayed: id and why."
    )
    published: bool = Field(
        description="false: the broker refused; the periodic round publishes the work later."
    )


class TokenInfo(BaseModel):
    """An API token as listed: never the token itself."""

    id: int
    account_id: int
    name: str
    created_at: Timestamp


class SecretsIn(_Body):
    secrets: dict[str, Any] = Field(min_length=1, description="The inbox's new secrets.")


class SecretsOut(BaseModel):
    """Which secrets an inbox holds, by name (never their values)."""

    inbox_id: int
    current: list[str]
    previous: list[str] | None = Field(
        description="Still accepted until retired; null when no rotation is in progress."
    )


# ---- inboxsync status ------------------------------------------------------------------------


class QueueStatus(BaseModel):
    name: str
    depth: int | None = Field(description="Messages on the broker; null if it did not answer.")
    oldest_age_s: float | None = Field(description="Age of the oldest work the store holds for it.")
    oldest_of: str = Field(description="What that work is.")


class Backlog(BaseModel):
    count: int
    oldest_age_s: float | None


class LeaseStatus(BaseModel):
    holder: str
    rounds: int
    expires_in_s: float = Field(description="Negative: expired, nobody holds it now.")


class Status(BaseModel):
    queues: list[QueueStatus]
    broker_error: str | None = None
    broker_note: str | None = Field(
        default=None, description="What the broker cannot tell (RabbitMQ: the age of a message)."
    )
    journal: Backlog = Field(description="Webhook deliveries accepted, not processed yet.")
    pending_changes: Backlog = Field(description="API writes published, not applied yet.")
    workers_alive: list[str] | None = Field(
        description="Workers that answered a ping; null where it cannot be asked."
    )
    workers_note: str | None = None
    dead_letters_waiting: int
    replies_due: int
    periodic: LeaseStatus | None
    events_pending: Backlog = Field(
        default_factory=lambda: Backlog(count=0, oldest_age_s=None),
        description="Outbound events not yet delivered to enabled subscribers; the age is the "
        "oldest such event's.",
    )
    subscribers_disabled: int = Field(
        default=0, description="Subscribers disabled after failing (re-enable them: README)."
    )
    reconcile: LeaseStatus | None = Field(
        default=None,
        description="The last reconciliation turn (INBOXSYNC_RECONCILE_INTERVAL_S): who ran it, "
        "how many turns so far; expires_in_s is the time until the next turn may start.",
    )
