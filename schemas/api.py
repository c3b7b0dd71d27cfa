"""Bodies of the HTTP API: what callers send and what they get back."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from schemas.changes import Action, ConversationStatus, Location, TicketStatus
from schemas.outbound import OutboundConfig, ReplyState

Tier = Literal["free", "starter", "professional", "enterprise"]
Channel = Literal["email", "chat"]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AccountIn(_Body):
    name: str = Field(min_length=1, max_length=200)
    tier: Tier
    created_at: AwareDatetime | None = Field(
        default=None, description="When the account was created; R1/R2 read it. Default: now."
    )


class AccountOut(BaseModel):
    id: int
    name: str
    tier: Tier
    created_at: datetime
    ticket_location: Location = Field(description="Where this account's new tickets go (R1/R2).")


class TokenIn(_Body):
    name: str = Field(default="api", min_length=1, max_length=200)


class TokenOut(BaseModel):
    id: int
    account_id: int
    name: str
    token: str | None = Field(description="Shown once; only its SHA-256 is stored.")


class InboxIn(_Body):
    account_id: int | None = Field(default=None, description="Admin token only; else the token's.")
    name: str = Field(min_length=1, max_length=200)
    channel: Channel
    provider: str = Field(min_length=1, max_length=40)
    secrets: dict[str, Any] = Field(default_factory=dict)
    # How replies go out (schemas/outbound.py); without it the inbox cannot reply.
    outbound: OutboundConfig | None = None


class InboxOut(BaseModel):
    id: int
    account_id: int
    name: str
    channel: Channel
    provider: str
    webhook_path: str
    replies_via: str | None = None
    replies_from: str | None = None


class OwnerIn(_Body):
    account_id: int | None = None
    name: str = Field(min_length=1, max_length=200)
    email: str | None = Field(default=None, max_length=320)


class OwnerOut(BaseModel):
    id: int
    account_id: int
    name: str
    email: str | None


class MessageOut(BaseModel):
    id: int
    external_id: str
    direction: str
    sender: str
    text: str
    sent_at: datetime
    received_at: datetime
    automatic: bool = False  # an auto-reply or a bounce
    reply_id: int | None = None  # an agent's reply: its delivery is /replies/{reply_id}
    delivery: ReplyState | None = None


class ConversationOut(BaseModel):
    id: int
    account_id: int
    inbox_id: int
    contact: str
    thread_key: str
    owner_id: int | None
    status: ConversationStatus
    location: Location
    ticket_id: int | None
    trashed: bool
    removed_at: datetime | None
    created_at: datetime
    last_message_at: datetime
    messages: list[MessageOut] | None = None


class TicketOut(BaseModel):
    id: int
    account_id: int
    owner_id: int | None
    status: TicketStatus
    priority: str | None
    properties: dict[str, Any]
    location: Location
    deleted: bool
    removed_at: datetime | None
    created_at: datetime
    conversation_ids: list[int]


class CreateTicketIn(_Body):
    owner_id: int | None = None
    status: TicketStatus = "new"
    priority: str | None = Field(default=None, max_length=20)
    properties: dict[str, Any] = Field(default_factory=dict)


class AssociateIn(_Body):
    conversation_id: int


class OwnerChangeIn(_Body):
    owner_id: int | None


class ConversationStatusIn(_Body):
    status: ConversationStatus


class TicketStatusIn(_Body):
    status: TicketStatus


class ChangeIn(_Body):
    """A change with a caller-chosen identity and time, e.g. an event replayed from elsewhere."""

    id: str | None = Field(default=None, min_length=1, max_length=150)
    occurred_at: AwareDatetime | None = None
    action: Action


class ChangeOut(BaseModel):
    change_id: str
    status: Literal["applied", "rejected", "pending", "failed"]
    duplicate: bool = False
    replayed: bool = False
    error: str | None = None
    rule: str | None = None
    conversation: ConversationOut | None = None
    ticket: TicketOut | None = None
    effects: list[dict[str, Any]] = Field(default_factory=list)
