"""Conversation upsert for a batch of inbound messages: dedupe, threading, reopen.

One call handles a whole batch in the caller's transaction with a handful of statements, whatever
the batch size; per-message idempotency holds because ``(inbox_id, external_id)`` is unique and is
checked under the thread locks, and because the batch commits or rolls back as one.

Threading: messages with one thread key (or, without a key, from one sender) share a
conversation. A message whose thread points to a trashed conversation starts a new one.
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, select, text, tuple_, update
from sqlalchemy.dialects import sqlite
from sqlalchemy.orm import Session

from handlers import apply
from schemas import changes as c
from schemas.inbound import InboundMessage, IngestOutcome
from store import bulk, cases
from store.db import is_postgres
from store.models import Contact, Conversation, Inbox, Message, Thread


class UnknownInbox(Exception):
    pass


def ingest(session: Session, batch: list[InboundMessage]) -> list[IngestOutcome]:
    """Store a batch of inbound messages. Call inside a transaction; the caller commits."""
    unique = _follow_references(session, _first_of_each(batch))
    inbox_accounts = _inbox_accounts(session, {m.inbox_id for m in unique})
    keys = sorted({(m.inbox_id, m.effective_thread_key) for m in unique})
    _lock_threads(session, keys)
    seen = _already_stored(session, unique)
    fresh = [m for m in unique if (m.inbox_id, m.external_id) not in seen]
    outcomes = {
        (m.inbox_id, m.external_id): IngestOutcome(
            inbox_id=m.inbox_id,
            external_id=m.external_id,
            message_id=seen[(m.inbox_id, m.external_id)][0],
            conversation_id=seen[(m.inbox_id, m.external_id)][1],
            duplicate=True,
        )
        for m in unique
        if (m.inbox_id, m.external_id) in seen
    }
    if fresh:
        threads, created = _resolve_threads(session, fresh, inbox_accounts)
        message_ids = _insert_messages(session, fresh, threads)
        effects = _advance_conversations(session, fresh, threads, message_ids, created)
        for m in fresh:
            mid = message_ids[(m.inbox_id, m.external_id)]
            outcomes[(m.inbox_id, m.external_id)] = IngestOutcome(
                inbox_id=m.inbox_id,
                external_id=m.external_id,
                message_id=mid,
                conversation_id=threads[(m.inbox_id, m.effective_thread_key)],
                effects=effects.get(mid, []),
            )
    # A second copy within the batch is a duplicate of the first, like a copy stored before.
    answered: set[tuple[int, str]] = set()
    out = []
    for m in batch:
        key = (m.inbox_id, m.external_id)
        outcome = outcomes[key]
        out.append(outcome.model_copy(update={"duplicate": True}) if key in answered else outcome)
        answered.add(key)
    return out


def _follow_references(session: Session, msgs: list[InboundMessage]) -> list[InboundMessage]:
    """Give a message that answers a known message (or carries our reply token) the thread key
    of that message's conversation.

    ``thread_refs`` are channel message ids (email: In-Reply-To, then References from the
    newest); they match the ``external_id`` ``mid:<id>`` of messages already stored in the same
    inbox, or of an earlier message of this batch. A message that matches nothing keeps its own
    ``thread_key``: a new conversation, never one guessed from the subject."""
    if not any(m.thread_refs or m.reply_token for m in msgs):
        return msgs
    refs = sorted({(m.inbox_id, ref_key(r)) for m in msgs for r in m.thread_refs})
    known: dict[tuple[int, str], str] = {}
    if refs:
        rows = session.execute(
            select(Message.inbox_id, Message.external_id, Conversation.thread_key)
            .join(Conversation, Conversation.id == Message.conversation_id)
            .where(tuple_(Message.inbox_id, Message.external_id).in_(refs))
        ).all()
        known = {(r.inbox_id, r.external_id): r.thread_key for r in rows}
    tokens = {m.reply_token for m in msgs if m.reply_token is not None}
    by_token: dict[int, tuple[int, str]] = {}
    if tokens:
        token_rows = session.execute(
            select(Conversation.id, Conversation.inbox_id, Conversation.thread_key).where(
                Conversation.id.in_(tokens)
            )
        ).all()
        by_token = {r.id: (r.inbox_id, r.thread_key) for r in token_rows}
    in_batch = {(m.inbox_id, m.external_id): m for m in msgs}
    keys: dict[tuple[int, str], str] = {}

    def key_of(m: InboundMessage, seen: frozenset[tuple[int, str]]) -> str:
        """The thread key ``m`` ends up with; a parent in this batch is resolved first,
        whatever the order of arrival or of the mails' Date headers."""
        own = (m.inbox_id, m.external_id)
        if own in keys:
            return keys[own]
        key = None
        for ref in m.thread_refs:
            k = (m.inbox_id, ref_key(ref))
            if k in known:
                key = known[k]
            elif k in in_batch and k not in seen:
                key = key_of(in_batch[k], seen | {own})
            if key is not None:
                break
        if key is None and m.reply_token in by_token:
            token_inbox, token_key = by_token[m.reply_token]
            key = token_key if token_inbox == m.inbox_id else None  # never across inboxes
        keys[own] = key if key is not None else m.effective_thread_key
        return keys[own]

    resolved = {}
    for m in msgs:
        key = key_of(m, frozenset())
        resolved[(m.inbox_id, m.external_id)] = (
            m if key == m.effective_thread_key else m.model_copy(update={"thread_key": key})
        )
    return [resolved[(m.inbox_id, m.external_id)] for m in msgs]


def ref_key(message_id: str) -> str:
    """The ``external_id`` under which a message with this channel message id is stored."""
    return f"mid:{message_id}"


def _first_of_each(batch: list[InboundMessage]) -> list[InboundMessage]:
    firsts: dict[tuple[int, str], InboundMessage] = {}
    for m in batch:
        firsts.setdefault((m.inbox_id, m.external_id), m)
    return list(firsts.values())


def _inbox_accounts(session: Session, inbox_ids: set[int]) -> dict[int, int]:
    rows = session.execute(select(Inbox.id, Inbox.account_id).where(Inbox.id.in_(inbox_ids))).all()
    found = {r.id: r.account_id for r in rows}
    if missing := inbox_ids - set(found):
        raise UnknownInbox(f"unknown inbox ids: {sorted(missing)}")
    return found


def _lock_threads(session: Session, keys: list[tuple[int, str]]) -> None:
    """Serialise workers on each thread (PostgreSQL advisory locks, taken in one sorted pass).

    Without it two workers could both see a new thread and open two conversations for it, or
    both miss a duplicate. SQLite needs nothing: its writers are serialised already."""
    if not is_postgres(session) or not keys:
        return
    ids = sorted({zlib.crc32(f"{inbox}:{key}".encode()) for inbox, key in keys})
    session.execute(
        text("SELECT pg_advisory_xact_lock(k) FROM unnest(CAST(:ids AS bigint[])) AS k ORDER BY k"),
        {"ids": ids},
    )


def _already_stored(
    session: Session, msgs: list[InboundMessage]
) -> dict[tuple[int, str], tuple[int, int]]:
    keys = sorted({(m.inbox_id, m.external_id) for m in msgs})
    if is_postgres(session):
        # Joined to the batch's pairs: one index probe per message. (A prepared ``inbox_id = $1
        # AND external_id = ANY($2)`` got a generic plan that read every message of the inbox:
        # 25 ms a batch at 30k messages, and growing with the table.)
        rows: Sequence[Any] = bulk.select_pairs(
            session,
            "SELECT m.inbox_id, m.external_id, m.id, m.conversation_id FROM messages m"
            " JOIN :pairs ON m.inbox_id = w.a AND m.external_id = w.b",
            [k[0] for k in keys],
            [k[1] for k in keys],
            ("bigint", "text"),
        )
    else:
        rows = session.execute(
            select(
                Message.inbox_id, Message.external_id, Message.id, Message.conversation_id
            ).where(tuple_(Message.inbox_id, Message.external_id).in_(keys))
        ).all()
    return {(r.inbox_id, r.external_id): (r.id, r.conversation_id) for r in rows}


def _resolve_threads(
    session: Session, msgs: list[InboundMessage], inbox_accounts: dict[int, int]
) -> tuple[dict[tuple[int, str], int], set[int]]:
    """Map each thread of the batch to its live conversation, opening conversations as needed.

    Returns the map and the ids of the conversations opened here."""
    keys = sorted({(m.inbox_id, m.effective_thread_key) for m in msgs})
    pg = is_postgres(session)
    rows: Sequence[Any]
    if pg:
        rows = bulk.select_pairs(
            session,
            "SELECT t.inbox_id, t.thread_key, t.conversation_id FROM threads t JOIN :pairs"
            " ON t.inbox_id = w.a AND t.thread_key = w.b"
            " JOIN conversations c ON c.id = t.conversation_id WHERE c.removed_by IS NULL",
            [k[0] for k in keys],
            [k[1] for k in keys],
            ("bigint", "text"),
        )
    else:
        rows = session.execute(
            select(Thread.inbox_id, Thread.thread_key, Thread.conversation_id)
            .join(Conversation, Conversation.id == Thread.conversation_id)
            .where(
                tuple_(Thread.inbox_id, Thread.thread_key).in_(keys),
                Conversation.removed_by.is_(None),
            )
        ).all()
    threads = {(r.inbox_id, r.thread_key): r.conversation_id for r in rows}
    first_msg: dict[tuple[int, str], InboundMessage] = {}
    newest: dict[tuple[int, str], datetime] = {}
    for m in sorted(msgs, key=lambda m: m.sent_at):
        first_msg.setdefault((m.inbox_id, m.effective_thread_key), m)
        newest[(m.inbox_id, m.effective_thread_key)] = m.sent_at
    new_keys = [k for k in keys if k not in threads]
    if not new_keys:
        return threads, set()
    contacts = _contacts(session, [(inbox_accounts[k[0]], first_msg[k].sender) for k in new_keys])
    now = datetime.now(UTC)
    new_rows = [
        {
            "account_id": inbox_accounts[inbox],
            "inbox_id": inbox,
            "contact_id": contacts[(inbox_accounts[inbox], first_msg[(inbox, key)].sender.lower())],
            "thread_key": key,
            "status": "open",
            "location": "inbox",
            "created_at": now,
            # Final at insert: the batch's messages change nothing else on a new conversation.
            "last_message_at": newest[(inbox, key)],
            "last_change_at": newest[(inbox, key)],
        }
        for inbox, key in new_keys
    ]
    thread_rows: list[dict[str, Any]]
    created: Sequence[int]
    if pg:
        made = bulk.insert(
            session, Conversation, new_rows, returning=["inbox_id", "thread_key", "id"]
        )
        created = [r.id for r in made]
        threads.update({(r.inbox_id, r.thread_key): r.id for r in made})
        thread_rows = [
            {"inbox_id": i, "thread_key": k, "conversation_id": threads[(i, k)]}
            for i, k in new_keys
        ]
        bulk.insert(
            session,
            Thread,
            thread_rows,
            tail="ON CONFLICT (inbox_id, thread_key)"
            " DO UPDATE SET conversation_id = EXCLUDED.conversation_id",
        )
        return threads, set(created)
    created = (
        session.execute(
            insert(Conversation).returning(Conversation.id, sort_by_parameter_order=True), new_rows
        )
        .scalars()
        .all()
    )
    for k, conv_id in zip(new_keys, created, strict=True):
        threads[k] = conv_id
    thread_rows = [
        {"inbox_id": i, "thread_key": k, "conversation_id": threads[(i, k)]} for i, k in new_keys
    ]
    stmt = sqlite.insert(Thread)
    session.execute(
        stmt.on_conflict_do_update(
            index_elements=["inbox_id", "thread_key"],
            set_={"conversation_id": stmt.excluded.conversation_id},
        ),
        thread_rows,
    )
    return threads, set(created)


def _contacts(session: Session, pairs: list[tuple[int, str]]) -> dict[tuple[int, str], int]:
    wanted = sorted({(account, sender.lower()) for account, sender in pairs})
    if is_postgres(session):
        bulk.insert(
            session,
            Contact,
            [{"account_id": a, "handle": h} for a, h in wanted],
            tail="ON CONFLICT (account_id, handle) DO NOTHING",
        )
        found = bulk.select_pairs(
            session,
            "SELECT c.account_id, c.handle, c.id FROM contacts c JOIN :pairs"
            " ON c.account_id = w.a AND c.handle = w.b",
            [w[0] for w in wanted],
            [w[1] for w in wanted],
            ("bigint", "text"),
        )
        return {(r.account_id, r.handle): r.id for r in found}
    stmt = sqlite.insert(Contact).on_conflict_do_nothing(index_elements=["account_id", "handle"])
    session.execute(stmt, [{"account_id": a, "handle": h} for a, h in wanted])
    rows = session.execute(
        select(Contact.account_id, Contact.handle, Contact.id).where(
            tuple_(Contact.account_id, Contact.handle).in_(wanted)
        )
    ).all()
    return {(r.account_id, r.handle): r.id for r in rows}


def _insert_messages(
    session: Session, msgs: list[InboundMessage], threads: dict[tuple[int, str], int]
) -> dict[tuple[int, str], int]:
    rows = [
        {
            "inbox_id": m.inbox_id,
            "conversation_id": threads[(m.inbox_id, m.effective_thread_key)],
            "external_id": m.external_id,
            "direction": "inbound",
            "sender": m.sender,
            "text": m.text,
            "sent_at": m.sent_at,
            "received_at": m.received_at,
            "headers": m.headers,
            "automatic": m.automatic,
        }
        for m in msgs
    ]
    if is_postgres(session):
        made = bulk.insert(session, Message, rows, returning=["inbox_id", "external_id", "id"])
        return {(r.inbox_id, r.external_id): r.id for r in made}
    ids = (
        session.execute(insert(Message).returning(Message.id, sort_by_parameter_order=True), rows)
        .scalars()
        .all()
    )
    return {(m.inbox_id, m.external_id): mid for m, mid in zip(msgs, ids, strict=True)}


def _advance_conversations(
    session: Session,
    msgs: list[InboundMessage],
    threads: dict[tuple[int, str], int],
    message_ids: dict[tuple[int, str], int],
    created: set[int],
) -> dict[int, list[dict[str, object]]]:
    """Reopen what the new messages reopen; move every touched conversation's clocks."""
    by_conv: dict[int, list[InboundMessage]] = defaultdict(list)
    for m in msgs:
        by_conv[threads[(m.inbox_id, m.effective_thread_key)]].append(m)
    existing = sorted(set(by_conv) - created)
    loaded = cases.lock_case(session, conversation_ids=existing) if existing else None
    effects: dict[int, list[dict[str, Any]]] = {}
    clocks: list[dict[str, Any]] = []
    for cid, conv_msgs in by_conv.items():
        if cid in created or loaded is None:
            continue  # its clocks were set at insert (_resolve_threads)
        newest = max(m.sent_at for m in conv_msgs)
        last_message_at = max(newest, loaded.last_message_at[cid])
        conv = loaded.case.conversations[cid]
        case_clock = loaded.clock_of_conversation(cid)
        own_clock = loaded.clocks[("conversation", cid)]
        # Auto-replies and bounces take no part in the rules: they reopen nothing.
        human = [m for m in conv_msgs if not m.automatic]
        if not human:
            clocks.append(
                {"id": cid, "last_message_at": last_message_at, "last_change_at": own_clock}
            )
            continue
        # Open, live, and either without a ticket or newer than everything in its case: the
        # rules would change nothing but the clocks. Anything else goes through the rules.
        latest = max(m.sent_at for m in human)
        if (
            conv.status == "open"
            and conv.removed_by is None
            and (conv.ticket_id is None or latest >= case_clock)
        ):
            clocks.append(
                {
                    "id": cid,
                    "last_message_at": last_message_at,
                    "last_change_at": max(latest, own_clock),
                }
            )
            continue
        case = cases.lock_case(session, conversation_ids=[cid])
        for m in sorted(human, key=lambda m: m.sent_at):
            mid = message_ids[(m.inbox_id, m.external_id)]
            produced, _ = apply.fold_into_case(
                session, case, f"message:{mid}", m.sent_at, c.MessageReceived(conversation_id=cid)
            )
            cases.save_case(session, case, m.sent_at)
            effects[mid] = [e.as_dict() for e in produced]
        session.execute(
            update(Conversation)
            .where(Conversation.id == cid, Conversation.last_message_at < newest)
            .values(last_message_at=newest)
        )
    if clocks and is_postgres(session):
        bulk.update(session, Conversation, clocks)
    elif clocks:
        session.execute(update(Conversation), clocks)
    return effects
