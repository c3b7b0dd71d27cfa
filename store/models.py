"""The tables. Integrity that matters lives here, in the database, not in memory:

- a conversation holds one ``ticket_id`` column, so it has at most one ticket (T1);
- ``(inbox_id, external_id)`` is unique, so a provider message is stored once;
- ``(inbox_id, thread_key)`` is unique in ``threads``: every thread id a message names (its own
  id, the ids it answers, its thread key) points to one conversation, and the row is what two
  workers lock to agree on it (handlers/threading.py);
- ``changes.id`` is the identity of every applied change (provider event id or API idempotency key);
- foreign keys everywhere.

Soft deletion: ``removed_by`` names the change whose cascade trashed/deleted a row, so a restore
brings back exactly what that cascade removed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy import text as sql_text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from store.types import UTCDateTime

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets BIGINT.
Id = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    # Every timestamp is stored in UTC and read back aware, on both stores (store/types.py).
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON, list[Any]: JSON}


class Account(Base):
    __tablename__ = "accounts"
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    tier: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[datetime]
    __table_args__ = (
        CheckConstraint(
            "tier IN ('free','starter','professional','enterprise')", name="tier_known"
        ),
    )


class ApiToken(Base):
    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime]


class Owner(Base):
    __tablename__ = "owners"
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str | None] = mapped_column(String(320))


class Inbox(Base):
    __tablename__ = "inboxes"
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    channel: Mapped[str] = mapped_column(String(10))
    provider: Mapped[str] = mapped_column(String(40))
    secrets: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # While secrets rotate: the ones replaced, still accepted until retired (api/webhooks.py).
    previous_secrets: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # How replies go out (schemas/outbound.py); none: the inbox cannot reply.
    outbound: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    __table_args__ = (CheckConstraint("channel IN ('email','chat')", name="channel_known"),)


class Contact(Base):
    __tablename__ = "contacts"
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    # An address, an E.164 phone number, or a provider's handle ("slack:U024BE7LH").
    handle: Mapped[str] = mapped_column(String(320))
    name: Mapped[str | None] = mapped_column(String(200))  # as first seen
    __table_args__ = (UniqueConstraint("account_id", "handle"),)


class Ticket(Base):
    __tablename__ = "tickets"
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("owners.id"))
    status: Mapped[str] = mapped_column(String(30), default="new")
    priority: Mapped[str | None] = mapped_column(String(20))
    properties: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    location: Mapped[str] = mapped_column(String(10))
    removed_by: Mapped[str | None] = mapped_column(String(200))
    removed_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
    # occurred_at of the newest change applied to this ticket's case (see handlers/apply.py).
    last_change_at: Mapped[datetime]
    __table_args__ = (
        CheckConstraint(
            "status IN ('new','waiting_on_contact','waiting_on_us','closed')", name="status_known"
        ),
        CheckConstraint("location IN ('inbox','help_desk')", name="location_known"),
    )


class Conversation(Base):
    __tablename__ = "conversations"
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    inbox_id: Mapped[int] = mapped_column(ForeignKey("inboxes.id"))
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id"))
    thread_key: Mapped[str] = mapped_column(String(500))
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("owners.id"))
    status: Mapped[str] = mapped_column(String(10), default="open")
    location: Mapped[str] = mapped_column(String(10), default="inbox")
    ticket_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id"), index=True)
    removed_by: Mapped[str | None] = mapped_column(String(200))
    removed_at: Mapped[datetime | None]
    # Set when a message showed this conversation to be part of another one's thread: its
    # messages moved there (handlers/threading.py); ``removed_by`` is then ``merged:<id>``.
    merged_into: Mapped[int | None] = mapped_column(ForeignKey("conversations.id"))
    # When it was last closed (None while open): a chat closed longer than
    # ``chat_reopen_days`` is not reopened by a new message; a new conversation starts.
    closed_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
    # When the newest message reached inboxsync (our clock; a sender's Date is only displayed).
    last_message_at: Mapped[datetime]
    last_change_at: Mapped[datetime]
    __table_args__ = (
        CheckConstraint("status IN ('open','closed')", name="status_known"),
        CheckConstraint("location IN ('inbox','help_desk')", name="location_known"),
        Index("ix_conversations_account_status", "account_id", "status"),
        Index("ix_conversations_contact_id", "contact_id"),
    )


class Thread(Base):
    """A thread id (a message's own id, an id it answers, a thread key) and the conversation it
    belongs to; a message joins the conversation of any id it shares with one.

    ``conversation_id`` is empty only inside the transaction that inserted the row to lock the id
    (handlers/threading.py), which fills it before it commits. It moves on when its conversation
    is trashed (a new message starts a new one) or merged."""

    __tablename__ = "threads"
    inbox_id: Mapped[int] = mapped_column(ForeignKey("inboxes.id"), primary_key=True)
    thread_key: Mapped[str] = mapped_column(String(500), primary_key=True)
    conversation_id: Mapped[int | None] = mapped_column(ForeignKey("conversations.id"), index=True)


class Delivery(Base):
    """An accepted webhook payload, journaled by the ingress before it answers 2xx.

    The broker carries only the ids; the worker that stores a delivery deletes its row in the same
    transaction. A row still here long after ``enqueued_at`` lost its broker message (a worker
    killed between taking it and recording it, a broker restart) and is enqueued again by the
    sweeper (``handlers/pipeline.py``), so that nothing acknowledged is ever lost.
    """

    __tablename__ = "deliveries"
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    # No foreign key: the journal keeps what was accepted as it was; the worker judges it.
    inbox_id: Mapped[int] = mapped_column(BigInteger)
    provider: Mapped[str] = mapped_column(String(40))
    received_at: Mapped[datetime]
    enqueued_at: Mapped[datetime] = mapped_column(index=True)
    # Times the sweep published it again; each time it waits twice as long (handlers/journal.py).
    republished: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    # An id is never handed out twice (SQLite would reuse the highest after a delete): it names
    # the delivery's outcome for good (DeliveryOutcome).
    __table_args__ = {"sqlite_autoincrement": True}


class DeliveryOutcome(Base):
    """What became of an accepted delivery, written in the transaction that processed it
    (``GET /deliveries/{id}``): ``stored`` / ``duplicate`` with its messages and conversations,
    or ``dead`` with the reason. ``id`` is the delivery's id, named in the webhook's 202."""

    __tablename__ = "delivery_outcomes"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    inbox_id: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(10))
    # [{"message_id", "conversation_id", "duplicate"}], one per message the payload held.
    messages: Mapped[list[Any]] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    received_at: Mapped[datetime]
    processed_at: Mapped[datetime]
    __table_args__ = (
        CheckConstraint("state IN ('stored','duplicate','dead')", name="state_known"),
    )


class PendingChange(Base):
    """An API write accepted and put on the broker, not applied yet: the journal of changes,
    as ``deliveries`` is the journal of webhooks. The worker that applies the change deletes the
    row in the same transaction; a row still here ``sweep_after_s`` after ``enqueued_at`` lost its
    broker message and is published again. ``GET /changes/{id}`` answers ``pending`` from it."""

    __tablename__ = "pending_changes"
    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    account_id: Mapped[int] = mapped_column(BigInteger)
    queue: Mapped[str] = mapped_column(String(20))
    envelope: Mapped[dict[str, Any]] = mapped_column(JSON)
    enqueued_at: Mapped[datetime] = mapped_column(index=True)
    republished: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class WebhookToken(Base):
    """A provider's one-time request token (Mailgun's ``token``), remembered for the signature's
    tolerance window: a request replayed within it is journaled once (handlers/pipeline.py)."""

    __tablename__ = "webhook_tokens"
    inbox_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    token: Mapped[str] = mapped_column(String(300), primary_key=True)
    seen_at: Mapped[datetime] = mapped_column(index=True)


class Lease(Base):
    """One holder of a name at a time (store/lease.py): who runs the periodic work."""

    __tablename__ = "leases"
    name: Mapped[str] = mapped_column(String(60), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200))
    expires_at: Mapped[datetime]
    rounds: Mapped[int] = mapped_column(BigInteger, default=0)


class Message(Base):
    """One message. Three times, one meaning each: ``sent_at`` is what the sender claims (shown,
    never trusted for order); ``received_at`` is when the ingress accepted it; ``stored_at`` is
    when it was stored and became visible to agents: its place in its case's history, the one
    clock that orders it against agents' changes (M1 reopens only what an agent closed before it
    could have seen the message)."""

    __tablename__ = "messages"
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    inbox_id: Mapped[int] = mapped_column(ForeignKey("inboxes.id"))
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id"), index=True)
    external_id: Mapped[str] = mapped_column(String(500))
    # The provider's own id of the message, when it has one apart from ``external_id``.
    provider_id: Mapped[str | None] = mapped_column(String(500))
    direction: Mapped[str] = mapped_column(String(10), default="inbound")
    sender: Mapped[str] = mapped_column(String(320))
    text: Mapped[str] = mapped_column(Text)
    sent_at: Mapped[datetime]
    received_at: Mapped[datetime]
    stored_at: Mapped[datetime]
    headers: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # An auto-reply or a bounce: recorded, but it never reopens anything (see handlers/ingest.py).
    automatic: Mapped[bool] = mapped_column(default=False, server_default=false())
    # Chat: the provider's time of the last edit applied (edits apply in that order), and when
    # the sender deleted it (its text is then gone; message_revisions keeps that it happened).
    edited_at: Mapped[datetime | None]
    deleted_at: Mapped[datetime | None]
    __table_args__ = (
        UniqueConstraint("inbox_id", "external_id"),
        # Only mail has a provider id apart from its external id: a partial index keeps the
        # other messages out of it.
        Index(
            "ix_messages_inbox_provider_id",
            "inbox_id",
            "provider_id",
            postgresql_where=sql_text("provider_id IS NOT NULL"),
            sqlite_where=sql_text("provider_id IS NOT NULL"),
        ),
    )


class MessageRevision(Base):
    """An edit or deletion of a message, as its provider announced it: the audit trail, and the
    identity that makes applying it idempotent (``(inbox_id, event_id)``). ``previous_text`` is
    what an edit replaced (a deletion keeps no text). A revision of a message not stored yet waits
    here (``applied`` false) and is applied when the message arrives."""

    __tablename__ = "message_revisions"
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    inbox_id: Mapped[int] = mapped_column(ForeignKey("inboxes.id"))
    external_id: Mapped[str] = mapped_column(String(500))
    event_id: Mapped[str] = mapped_column(String(500))
    deleted: Mapped[bool] = mapped_column(default=False)
    text: Mapped[str | None] = mapped_column(Text)
    previous_text: Mapped[str | None] = mapped_column(Text)
    edited_at: Mapped[datetime]
    received_at: Mapped[datetime]
    applied: Mapped[bool] = mapped_column(default=False)
    __table_args__ = (
        UniqueConstraint("inbox_id", "event_id"),
        Index("ix_message_revisions_target", "inbox_id", "external_id"),
    )


class ProviderStatus(Base):
    """What a chat provider last said about a message we sent (delivered, read, failed), by the
    id it gave it. Kept apart from ``replies`` so a callback that arrives before the worker has
    recorded that id is not lost; shown with the reply."""

    __tablename__ = "provider_statuses"
    inbox_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    provider_message_id: Mapped[str] = mapped_column(String(300), primary_key=True)
    state: Mapped[str] = mapped_column(String(10))
    error: Mapped[str | None] = mapped_column(Text)
    at: Mapped[datetime]


class Reply(Base):
    """An agent's reply and its way out: ``queued`` → ``sending`` → ``sent`` / ``failed``.

    The reply is also a ``Message`` (direction ``outbound``, external id ``mid:<rfc_message_id>``),
    so a customer's answer threads to it. ``mail`` is the composed mail, fixed at queue time: every
    attempt sends the same bytes. ``attempts`` fences a worker whose lease ran out
    (handlers/outbound/replies.py); ``uncertain`` says an attempt may have reached the provider
    without an answer, so the next one asks the provider first.
    """

    __tablename__ = "replies"
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    key: Mapped[str] = mapped_column(String(200), unique=True)
    request_sha256: Mapped[str] = mapped_column(String(64))
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    inbox_id: Mapped[int] = mapped_column(ForeignKey("inboxes.id"))
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id"), index=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id"), unique=True)
    via: Mapped[str] = mapped_column(String(20))
    rfc_message_id: Mapped[str] = mapped_column(String(300))
    mail: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(10))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    attempts_left: Mapped[int] = mapped_column(Integer)
    uncertain: Mapped[bool] = mapped_column(default=False)
    next_attempt_at: Mapped[datetime | None]
    lease_until: Mapped[datetime | None]
    provider_message_id: Mapped[str | None] = mapped_column(String(300))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    sent_at: Mapped[datetime | None]
    __table_args__ = (
        CheckConstraint("state IN ('queued','sending','sent','failed')", name="state_known"),
        Index("ix_replies_state_due", "state", "next_attempt_at"),
    )


class Change(Base):
    """Every applied change, once: the idempotency record and the audit trail.

    ``outcome`` is ``applied`` or ``rejected`` (refused by a rule; ``result`` says why). A change
    that arrives older than what its case already holds is applied in its place in history, by
    replaying the case (see handlers/apply.py); ``result["replayed"]`` says so.
    """

    __tablename__ = "changes"
    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    kind: Mapped[str] = mapped_column(String(40))
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    conversation_id: Mapped[int | None] = mapped_column(ForeignKey("conversations.id"), index=True)
    ticket_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id"), index=True)
    occurred_at: Mapped[datetime]
    applied_at: Mapped[datetime]
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    request_sha256: Mapped[str | None] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(10))
    result: Mapped[dict[str, Any]] = mapped_column(JSON)
    # Who or what made it: {"via": "api", "token_id": …} | {"via": "ingest", "delivery_id": …}
    # | {"via": "reconcile"} | {"via": "bulk", "job_id": …}; read by GET /tickets/{id}/history.
    cause: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class Effect(Base):
    """What a change did, field by field, with the rule that caused it ("why is this closed?")."""

    __tablename__ = "effects"
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    change_id: Mapped[str] = mapped_column(ForeignKey("changes.id"), index=True)
    entity: Mapped[str] = mapped_column(String(20))
    entity_id: Mapped[int] = mapped_column(BigInteger)
    field: Mapped[str] = mapped_column(String(30))
    value: Mapped[str | None] = mapped_column(String(200))
    rule: Mapped[str] = mapped_column(String(10))


class IdempotentResponse(Base):
    """The first answer to an API write with an ``Idempotency-Key``, returned to every retry."""

    __tablename__ = "idempotent_responses"
    scope: Mapped[str] = mapped_column(String(60), primary_key=True)
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    request_sha256: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int] = mapped_column(Integer)
    body: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime]


class DeadLetter(Base):
    """A payload a worker could not process, kept whole with the error, instead of a retry loop.

    ``fingerprint`` (task + payload digest) makes recording idempotent; ``key`` is what a caller
    looks it up by (a change id for API writes). ``inbox_id`` / ``account_id``: whose it is (an
    ingest letter's inbox, a change's account), for tenancy; none for a batch-level letter.
    ``state``: ``waiting``, ``replayed`` (put back on the normal path, ``replays`` times, last at
    ``replayed_at``, as ``replayed_as``; back to ``waiting`` if it fails again) or ``discarded``
    (kept, never replayed): handlers/deadletters.py."""

    __tablename__ = "dead_letters"
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True)
    key: Mapped[str | None] = mapped_column(String(200), index=True)
    task: Mapped[str] = mapped_column(String(200))
    task_id: Mapped[str | None] = mapped_column(String(200))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    error_type: Mapped[str] = mapped_column(String(200))
    error: Mapped[str] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime]
    inbox_id: Mapped[int | None] = mapped_column(BigInteger)
    account_id: Mapped[int | None] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(10), default="waiting", server_default="waiting")
    replays: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    replayed_at: Mapped[datetime | None]
    replayed_as: Mapped[str | None] = mapped_column(String(300))
    discarded_at: Mapped[datetime | None]
    __table_args__ = (
        CheckConstraint("state IN ('waiting','replayed','discarded')", name="state_known"),
        Index("ix_dead_letters_account_state", "account_id", "state"),
        Index("ix_dead_letters_state_created", "state", "created_at"),
    )


class AccountRevision(Base):
    """An admin's change to an account (``PATCH /accounts/{id}``, ``inboxsync update-account``,
    handlers/admin.py): what the changed fields were and became, and when. ``tier_before`` is set
    when the tier changed: a ticket takes the tier in force when it was created (R1/R2,
    handlers/routing.py ``tier_at``), so a tier change routes the tickets created after it and
    leaves the others where they are."""

    __tablename__ = "account_revisions"
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    changed_at: Mapped[datetime]
    before: Mapped[dict[str, Any]] = mapped_column(JSON)
    after: Mapped[dict[str, Any]] = mapped_column(JSON)
    tier_before: Mapped[str | None] = mapped_column(String(20))
    __table_args__ = (Index("ix_account_revisions_account_changed", "account_id", "changed_at"),)


class Subscriber(Base):
    """An account's receiver of outbound events (handlers/events.py): where they go, which
    types, and the ``whsec_`` secret that signs them. After a rotation ``previous_secret`` signs
    too, until ``previous_until``. ``failures`` / ``failing_since`` / ``next_attempt_at``: the
    retry state of the head of its queue (one event at a time, in order); ``lease_holder`` /
    ``lease_until``: the worker sending for it now (handlers/outbound/events.py)."""

    __tablename__ = "subscribers"
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    url: Mapped[str] = mapped_column(String(2000))
    types: Mapped[list[Any]] = mapped_column(JSON)
    secret: Mapped[str] = mapped_column(String(100))
    previous_secret: Mapped[str | None] = mapped_column(String(100))
    previous_until: Mapped[datetime | None]
    enabled: Mapped[bool] = mapped_column(default=True)
    disabled_reason: Mapped[str | None] = mapped_column(Text)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    failing_since: Mapped[datetime | None]
    next_attempt_at: Mapped[datetime | None]
    lease_holder: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None]
    # When the periodic round last put its task on the broker (cleared when a worker takes it):
    # one task outstanding per subscriber, published again only if it was lost.
    published_at: Mapped[datetime | None]
    created_at: Mapped[datetime]


class OutboundEvent(Base):
    """The outbox: an event written in the transaction of the change that made it, so there is
    no event of a rolled-back change and no change without its event. ``fanned_out``: the
    periodic round has made its ``event_deliveries`` (one per subscriber that wants it). Its id
    is never reused (it is the ``webhook-id`` receivers dedupe by)."""

    __tablename__ = "outbound_events"
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    type: Mapped[str] = mapped_column(String(40))
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    change_id: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime]
    fanned_out: Mapped[bool] = mapped_column(default=False, server_default=false())
    __table_args__ = (
        Index("ix_outbound_events_account_created", "account_id", "created_at"),
        Index("ix_outbound_events_fanned_out", "fanned_out", "id"),
        {"sqlite_autoincrement": True},
    )


class EventDelivery(Base):
    """One event for one subscriber: ``pending`` until a 2xx answer, then ``delivered``. A
    subscriber's deliveries go out one at a time in id order; a replay adds new rows."""

    __tablename__ = "event_deliveries"
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscribers.id"))
    event_id: Mapped[int] = mapped_column(ForeignKey("outbound_events.id"))
    state: Mapped[str] = mapped_column(String(10), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime]
    delivered_at: Mapped[datetime | None]
    __table_args__ = (
        CheckConstraint("state IN ('pending','delivered')", name="state_known"),
        Index("ix_event_deliveries_subscriber_state", "subscriber_id", "state", "id"),
        {"sqlite_autoincrement": True},
    )


class EventAttempt(Base):
    """The delivery log: each attempt, its answer (status code) or error, and how long it took."""

    __tablename__ = "event_attempts"
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscribers.id"))
    delivery_id: Mapped[int] = mapped_column(BigInteger)
    event_id: Mapped[int] = mapped_column(BigInteger)
    at: Mapped[datetime]
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[int] = mapped_column(Integer)
    __table_args__ = (Index("ix_event_attempts_subscriber", "subscriber_id", "id"),)


class BulkJob(Base):
    """A bulk job (handlers/bulk.py): one action on a set of tickets or conversations frozen when
    the job was made (``bulk_items``), run in chunks (``bulk_chunks``) on the ``bulk`` queue.
    ``done`` / ``failed`` count items; ``generation`` is bumped by each retry of the failed ones
    (their change ids carry it, so a retried item is a new change)."""

    __tablename__ = "bulk_jobs"
    id: Mapped[int] = mapped_column(Id, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    action: Mapped[dict[str, Any]] = mapped_column(JSON)
    target: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(30))
    total: Mapped[int] = mapped_column(Integer)
    done: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    generation: Mapped[int] = mapped_column(Integer, default=0)
    cause: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    __table_args__ = (
        CheckConstraint(
            "state IN ('running','paused','cancelled','completed','completed_with_failures')",
            name="state_known",
        ),
    )


class BulkChunk(Base):
    """A slice of a job's items, run by one task. ``lease_until``: the chunk was published and is
    someone's until then; a ``queued`` chunk of a running job whose lease ran out lost its task
    (a worker killed, a broker message lost) and is published again by the periodic round."""

    __tablename__ = "bulk_chunks"
    job_id: Mapped[int] = mapped_column(ForeignKey("bulk_jobs.id"), primary_key=True)
    chunk: Mapped[int] = mapped_column(Integer, primary_key=True)
    state: Mapped[str] = mapped_column(String(10))
    lease_until: Mapped[datetime | None]
    published: Mapped[int] = mapped_column(Integer, default=0)
    __table_args__ = (
        CheckConstraint("state IN ('queued','done')", name="state_known"),
        Index("ix_bulk_chunks_state_lease", "state", "lease_until"),
    )


class BulkItem(Base):
    """One target of a job: ``pending``, ``done`` or ``failed`` (``reason`` says why)."""

    __tablename__ = "bulk_items"
    job_id: Mapped[int] = mapped_column(ForeignKey("bulk_jobs.id"), primary_key=True)
    target_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    chunk: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(10))
    reason: Mapped[str | None] = mapped_column(Text)
    __table_args__ = (
        CheckConstraint("state IN ('pending','done','failed')", name="state_known"),
        Index("ix_bulk_items_job_chunk", "job_id", "chunk"),
        Index("ix_bulk_items_job_state", "job_id", "state"),
    )
