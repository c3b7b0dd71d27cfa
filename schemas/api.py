"""Bodies of the HTTP API: what callers send and what they get back.

Every request body derives from ``_Body``: unknown fields are refused, and every value, however
deeply nested in a free-form field (``secrets``, ``properties``), must be something the store and
the JSON encoder can hold (``json_safe``); anything else is a 422 naming the field, not a 500.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from schemas.changes import ApiAction, ConversationStatus, Location, TicketStatus
from schemas.outbound import NUL_REFUSED, OutboundConfig, ReplyState
from schemas.types import Id, IsoTime, Timestamp

Tier = Literal["free", "starter", "professional", "enterprise"]
Channel = Literal["email", "chat"]

MAX_DEPTH = 32
INT64 = range(-(2**63), 2**63)


class _Refused(Exception):
    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem, self.path = problem, list[str | int]()


def json_safe(value: Any) -> Any:
    """``value``, if it holds nothing the store or the JSON encoder would fail on: NUL in a text
    or a key (PostgreSQL), a lone surrogate (not Unicode: orjson and psycopg refuse it), an
    integer outside 64 bits (orjson; bigint), NaN or Infinity (not JSON; jsonb refuses them), or
    nesting deeper than ``MAX_DEPTH``. Else a ``ValueError`` that says what and where."""
    try:
        _check(value, 0)
    except _Refused as refused:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in refused.path)
        raise ValueError(
            refused.problem + (f" (at {where.lstrip('.')})" if where else "")
        ) from None
    return value


def _check(value: Any, depth: int) -> None:
    if isinstance(value, str):
        if problem := _text_problem(value):
            raise _Refused(problem)
    elif isinstance(value, bool) or value is None:
        return
    elif isinstance(value, int):
        if value not in INT64:
            raise _Refused("an integer outside the 64-bit range")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise _Refused("NaN or Infinity, which JSON does not have")
    elif isinstance(value, dict | list | tuple | BaseModel):
        if depth >= MAX_DEPTH:
            raise _Refused(f"nested deeper than {MAX_DEPTH} levels")
        for key, item in _items(value):
            # A bad key is not named in the answer: it could not be written into it.
            if isinstance(key, str) and (problem := _text_problem(key)):
                raise _Refused(f"a key {problem}")
            try:
                _check(item, depth + 1)
            except _Refused as refused:
                refused.path.insert(0, key)
                raise


def _text_problem(text: str) -> str | None:
    if "\x00" in text:
        return NUL_REFUSED
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "is not Unicode text (it has a lone surrogate)"
    return None


def _items(
    value: dict[Any, Any] | list[Any] | tuple[Any, ...] | BaseModel,
) -> Iterable[tuple[Any, Any]]:
    if isinstance(value, dict):
        return value.items()
    if isinstance(value, BaseModel):
        return iter(value)
    return enumerate(value)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @field_validator("*")
    @classmethod
    def _json_safe(cls, value: Any) -> Any:
        return json_safe(value)


class AccountIn(_Body):
    name: str = Field(min_length=1, max_length=200)
    tier: Tier
    created_at: IsoTime | None = Field(
        default=None, description="When the account was created; R1/R2 read it. Default: now."
    )


class AccountPatch(_Body):
    """What an admin may change on an account: its name and its tier. ``created_at`` is a fact
    R1/R2 read and is not changed. A tier change routes the tickets created after it (R1/R2);
    tickets that exist stay where they are."""

    name: str | None = Field(default=None, min_length=1, max_length=200)
    tier: Tier | None = Field(
        default=None, description="Tickets created from now on are routed by it (R1/R2)."
    )

    @model_validator(mode="after")
    def _something_given(self) -> AccountPatch:
        for name in self.model_fields_set:
            if getattr(self, name) is None:
                raise ValueError(f"{name} may not be null")
        if not self.model_fields_set:
            raise ValueError("nothing to change: give name or tier")
        return self


class AccountOut(BaseModel):
    id: int
    name: str
    tier: Tier
    created_at: Timestamp
    ticket_location: Location = Field(description="Where this account's new tickets go (R1/R2).")


class TokenIn(_Body):
    name: str = Field(default="api", min_length=1, max_length=200)


class TokenOut(BaseModel):
    id: int
    account_id: int
    name: str
    token: str | None = Field(description="Shown once; only its SHA-256 is stored.")


class InboxIn(_Body):
    account_id: Id | None = Field(default=None, description="Admin token only; else the token's.")
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
    account_id: Id | None = None
    name: str = Field(min_length=1, max_length=200)
    email: str | None = Field(default=None, max_length=320)


class OwnerOut(BaseModel):
    id: int
    account_id: int
    name: str
    email: str | None


class AddressOut(BaseModel):
    name: str = ""
    email: str


class AttachmentOut(BaseModel):
    index: int = Field(description="Its place in the message: /messages/{id}/attachments/{index}")
    filename: str
    content_type: str
    size: int
    sha256: str
    inline: bool = False
    content_id: str | None = None
    stored: bool = Field(description="False: over the size limit, listed but not kept.")
    url: str | None = Field(description="Where to fetch its bytes; none when not stored.")


class MessageOut(BaseModel):
    model_config = ConfigDict(serialize_by_alias=True)
    """A whole message. Three times: ``sent_at`` is what the sender wrote on it (shown, never
    trusted for order); ``received_at`` when inboxsync accepted it; ``stored_at`` when it was
    stored, its place in its conversation's history (messages are listed in that order)."""

    id: int
    conversation_id: int
    inbox_id: int
    external_id: str = Field(description="Our key of it: `mid:<Message-ID>` for mail.")
    provider_id: str | None = Field(
        description="The provider's own id of it, when it has one apart from external_id."
    )
    message_id: str | None = Field(description="Its RFC 5322 Message-ID (mail only).")
    direction: Literal["inbound", "outbound"]
    sender: str
    from_: AddressOut | None = Field(serialization_alias="from")
    to: list[AddressOut] = Field(default_factory=list)
    cc: list[AddressOut] = Field(default_factory=list)
    reply_to: list[AddressOut] = Field(default_factory=list)
    subject: str | None = None
    text: str
    visible_text: str | None = Field(description="What the sender wrote now (mail).")
    html: str | None = Field(description="The HTML body, sanitized for display.")
    in_reply_to: list[str] = Field(default_factory=list)
    references: list[str] = Field(default_factory=list)
    attachments: list[AttachmentOut] = Field(default_factory=list)
    problems: list[str] = Field(default_factory=list, description="What was odd in it.")
    automatic: bool = Field(description="An auto-reply or a bounce: it reopens nothing.")
    also_in: list[int] = Field(
        default_factory=list,
        description="Other conversations this message answers, left apart because each has a "
        "ticket of its own (README: threading).",
    )
    sent_at: Timestamp
    received_at: Timestamp
    stored_at: Timestamp
    edited_at: Timestamp | None = Field(
        default=None, description="Chat: when its sender last edited it (the provider's time)."
    )
    deleted: bool = Field(
        default=False, description="Chat: its sender deleted it; its text is gone."
    )
    reply_id: int | None = None  # an agent's reply: its delivery is /replies/{reply_id}
    delivery: ReplyState | None = None


Item = TypeVar("Item")


class Page(BaseModel, Generic[Item]):
    """A page of a list that grows with traffic, in id order: pass ``next_after_id`` as
    ``after_id`` to get the next page; null on the last one."""

    items: list[Item]
    next_after_id: int | None = Field(
        description="the last id of this page when more follow (as after_id); null: the last page"
    )


class ConversationOut(BaseModel):
    id: int
    account_id: int
    inbox_id: int
    contact_id: int
    contact: str
    thread_key: str
    owner_id: int | None
    status: ConversationStatus
    location: Location
    ticket_id: int | None
    trashed: bool
    merged_into: int | None = Field(
        default=None, description="Merged into this conversation (M2): its messages are there."
    )
    removed_at: Timestamp | None
    created_at: Timestamp
    last_message_at: Timestamp = Field(description="When its newest message reached inboxsync.")
    message_count: int
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
    removed_at: Timestamp | None
    created_at: Timestamp
    conversation_ids: list[int]


class ContactOut(BaseModel):
    id: int
    account_id: int
    handle: str
    conversation_count: int


class DeliveryMessage(BaseModel):
    message_id: int | None
    conversation_id: int | None
    duplicate: bool


class DeliveryOut(BaseModel):
    """Where an accepted webhook delivery went: ``journaled`` (accepted, not processed yet),
    ``stored`` (its messages, in their conversations), ``duplicate`` (every message it held
    was stored before), or ``dead`` (a dead letter; ``error`` says why)."""

    id: int
    inbox_id: int
    state: Literal["journaled", "stored", "duplicate", "dead"]
    received_at: Timestamp
    processed_at: Timestamp | None = None
    messages: list[DeliveryMessage] = Field(default_factory=list)
    error: str | None = None


class CreateTicketIn(_Body):
    owner_id: Id | None = None
    status: TicketStatus = "new"
    priority: str | None = Field(default=None, max_length=20)
    properties: dict[str, Any] = Field(default_factory=dict)


class AssociateIn(_Body):
    conversation_id: Id


class OwnerChangeIn(_Body):
    owner_id: Id | None


class ConversationStatusIn(_Body):
    status: ConversationStatus


class TicketStatusIn(_Body):
    status: TicketStatus


class ChangeIn(_Body):
    """A change with a caller-chosen identity and time, e.g. an event replayed from elsewhere."""

    id: str | None = Field(default=None, min_length=1, max_length=150)
    occurred_at: IsoTime | None = None
    action: ApiAction


class ChangeOut(BaseModel):
    change_id: str
    status: Literal["applied", "rejected", "superseded", "pending", "failed"] = Field(
        description="superseded: applied in its place in history, but a later event (listed in "
        "`superseded`) already set the same fields otherwise; the state shown is the later one."
    )
    duplicate: bool = False
    replayed: bool = False
    error: str | None = Field(
        default=None,
        description="Refused or failed: a code (rejected, not_found, invalid_request, failed), "
        "as every error of the API has; `message` says why.",
    )
    message: str | None = None
    rule: str | None = None
    occurred_at: Timestamp | None = Field(
        default=None, description="Where the change stands in its case's history."
    )
    notes: list[str] = Field(default_factory=list)
    conversation: ConversationOut | None = None
    ticket: TicketOut | None = None
    effects: list[dict[str, Any]] = Field(default_factory=list)
    superseded: list[dict[str, Any]] = Field(default_factory=list)


class HistoryEntry(BaseModel):
    """One event of a case, in the order the rules applied them."""

    event_id: str = Field(description="The change id, or `message:<id>` for an inbound message.")
    kind: str = Field(description="The action (`set_ticket_status`, …) or `message_received`.")
    at: Timestamp = Field(description="Its place in the case's history (inboxsync's clock).")
    outcome: Literal["applied", "rejected", "superseded"]
    cause: dict[str, Any] = Field(
        description='Who or what made it: `{"via": "api", "token_id": 7, "token_name": …}` '
        '(`"token": "admin"` for the admin token), `{"via": "webhook", "message_id": …}`, '
        '`{"via": "ingest"}` (a merge), `{"via": "reconcile"}`, `{"via": "bulk", "job_id": …}`.'
    )
    action: dict[str, Any] | None = Field(default=None, description="What the change asked.")
    effects: list[dict[str, Any]] = Field(
        default_factory=list, description="What it set, field by field, each with its rule id."
    )
    error: str | None = Field(default=None, description="Why a rule refused it.")
    rule: str | None = Field(default=None, description="The rule that refused it (`T2`, …).")


class HistoryOut(BaseModel):
    """``GET /tickets/{id}/history``: every change and message of the ticket's case, and for
    each field of the entity, the event and rule that set its current value."""

    entity: Literal["ticket", "conversation"]
    id: int
    entries: list[HistoryEntry]
    last_set_by: dict[str, dict[str, str]] = Field(
        description='Field → `{"event_id", "rule"}` of the event that set its value last: '
        '"why is this ticket closed?"'
    )
