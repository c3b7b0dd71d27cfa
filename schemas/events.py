"""Bodies of the outbound events API and CLI: subscribers, their delivery log, replays."""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.api import _Body
from schemas.types import Id, IsoTime, Timestamp

# README "Outbound events" says what each one means and carries.
EventType = Literal[
    "conversation.created",
    "message.received",
    "ticket.created",
    "owner.changed",
    "status.changed",
    "ticket.moved",
    "deleted",
    "restored",
    "bulk_job.finished",
]
EVENT_TYPES: tuple[str, ...] = get_args(EventType)

Url = str
URL_FIELD = Field(min_length=8, max_length=2000, description="https://… (where events go)")
TYPES_FIELD = Field(min_length=1, max_length=20, description="the event types wanted")


class SubscriberIn(_Body):
    url: Url = URL_FIELD
    types: list[EventType] = TYPES_FIELD
    account_id: Id | None = Field(default=None, description="required with the admin token")


class SubscriberPatch(_Body):
    url: Url | None = Field(default=None, min_length=8, max_length=2000)
    types: list[EventType] | None = Field(default=None, min_length=1, max_length=20)
    enabled: bool | None = Field(
        default=None, description="true: re-enable; it resumes from the event it stopped at"
    )


class SubscriberOut(BaseModel):
    id: int
    account_id: int
    url: str
    types: list[str]
    enabled: bool
    disabled_reason: str | None
    failures: int = Field(description="failed attempts since the last success")
    failing_since: Timestamp | None
    next_attempt_at: Timestamp | None
    pending: int = Field(description="events waiting to be delivered, in order")
    created_at: Timestamp
    secret: str | None = Field(
        default=None, description="whsec_…: shown only when made and when rotated"
    )
    previous_secret_until: Timestamp | None = Field(
        default=None, description="after a rotation: the previous secret also signs until then"
    )


class AttemptOut(BaseModel):
    """One delivery attempt: when, the answer's status code or the error, how long it took."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    event_id: int
    webhook_id: str
    type: str
    at: Timestamp
    status_code: int | None
    error: str | None
    duration_ms: int


class EventsReplayIn(_Body):
    """One event (``event_id``), or the subscriber's events made in ``[from, to)``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    event_id: Id | None = None
    from_: IsoTime | None = Field(default=None, alias="from")
    to: IsoTime | None = None

    @model_validator(mode="after")
    def _one_way(self) -> EventsReplayIn:
        if (self.event_id is None) == (self.from_ is None and self.to is None):
            raise ValueError("give event_id, or from and/or to")
        return self


class EventsReplayOut(BaseModel):
    replayed: int = Field(description="deliveries queued again (sent after those pending)")
