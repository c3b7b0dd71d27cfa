"""Storing a batch of inbound messages in one transaction: dedupe, threading, reopening.

``ingest`` goes in four steps:

1. **Lock what the batch touches.** Every thread id its messages name is locked in one sorted
   pass (store/threads.py), then copies stored before are found under those locks: two workers
   that share an id queue behind each other, and never both store one message.
2. **Place** each group of messages that share ids (handlers/threading.py): in the conversation
   they name, a new one, or a merge of several (M2). The conversations named are locked as cases
   (tickets first, the order every writer uses). Only then is the clock read that gives the
   messages their place in time (``stored_at``): a change applied to the case before is ordered
   before them, one applied after waits for this commit.
3. **Write** new conversations, merges, the messages, and where each id points now.
4. **Advance** the conversations touched: their clocks, and M1 through the rules (a message
   reopens what was closed before it was stored; a sender's Date is only displayed).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from handlers import apply, events, threading
from handlers.threading import Conv, Group, MessageKey, Placement
from schemas import changes as c
from schemas.inbound import InboundMessage, IngestOutcome
from settings import get_settings
from store import bulk, cases, threads
from store.models import Contact, Conversation, Inbox, Message, Reply

ref_key = threading.ref_key  # the name other modules know it by


class UnknownInbox(Exception):
    pass


def ingest(
    session: Session, batch: list[InboundMessage], *, clock: datetime | None = None
) -> list[IngestOutcome]:
    """Store a batch of inbound messages. Call inside a transaction; the caller commits.

    ``clock``: the time to store them at instead of now (tests that tell a story in time)."""
    firsts: dict[MessageKey, InboundMessage] = {}
    for m in batch:
        firsts.setdefault(_key(m), m)  # the first copy of each; later ones are duplicates
    unique = list(firsts.values())
    accounts, chats = _inboxes(session, {m.inbox_id for m in unique})
    ids_of = {_key(m): threading.thread_ids(m) for m in unique}
    links = threads.lock(session, [(m.inbox_id, t) for m in unique for t in ids_of[_key(m)]])
    stored = _already_stored(session, unique)
    named = _named_by_message(session, unique, stored)
    groups = threading.groups(unique, ids_of, links, named, set(stored))
    convs, loaded = _lock_named(session, groups)
    now = clock or datetime.now(UTC)  # read after the case locks: see step 2 above
    _forget_stale_chats(convs, loaded, chats, now)
    placed, created = _open_conversations(
        session, threading.place_all(groups, convs), accounts, now
    )
    absorbed = _merge(session, placed, accounts, now)
    placed = threading.settled(placed, convs)
    home = {_key(m): p.conversation_id for g, p in placed for m in g.messages}
    fresh = [m for g, _ in placed for m in g.messages if _key(m) not in stored]
    message_ids = _insert_messages(session, fresh, placed, now)
    threads.point(session, _links_to_point(placed, links, convs, stored, ids_of))
    effects = _advance(session, loaded, fresh, home, message_ids, created, absorbed, now)
    events.emit_many(
        session, _events(placed, created, fresh, accounts, message_ids, effects), now=now
    )
    return _outcomes(batch, stored, home, message_ids, effects, absorbed)


def _key(m: InboundMessage) -> MessageKey:
    return (m.inbox_id, m.external_id)


def _inboxes(session: Session, inbox_ids: set[int]) -> tuple[dict[int, int], set[int]]:
    """Each inbox's account, and which inboxes are chat inboxes."""
    rows = session.execute(
        select(Inbox.id, Inbox.account_id, Inbox.channel).where(Inbox.id.in_(inbox_ids))
    ).all()
    found = {r.id: r.account_id for r in rows}
    if missing := inbox_ids - set(found):
        raise UnknownInbox(f"unknown inbox ids: {sorted(missing)}")
    return found, {r.id for r in rows if r.channel == "chat"}


def _forget_stale_chats(
    convs: dict[int, Conv],
    loaded: cases.LoadedCase | None,
    chats: set[int],
    now: datetime,
) -> None:
    """A chat closed longer than ``chat_reopen_days`` is not reopened by a new message (M1): a
    new conversation starts, and the thread's ids move to it. (Mail has no such window: a
    reply names what it answers.)"""
    if loaded is None or not chats:
        return
    window = timedelta(days=get_settings().chat_reopen_days)
    for cid, closed in loaded.closed_at.items():
        conv = convs.get(cid)
        if conv is None or not conv.live or loaded.inbox_of.get(cid) not in chats:
            continue
        if loaded.case.conversations[cid].status == "closed" and closed < now - window:
            convs[cid] = Conv(cid, live=False, ticket_id=conv.ticket_id)


def _already_stored(
    session: Session, msgs: list[InboundMessage]
) -> dict[MessageKey, tuple[int, int]]:
    """(message id, conversation id) of the messages stored before, by (inbox, external id)."""
    rows = bulk.matching(
        session,
        Message,
        ("inbox_id", "external_id", "id", "conversation_id"),
        ("inbox_id", "external_id"),
        sorted({_key(m) for m in msgs}),
    )
    return {(r.inbox_id, r.external_id): (r.id, r.conversation_id) for r in rows}


def _named_by_message(
    session: Session, msgs: list[InboundMessage], stored: dict[MessageKey, tuple[int, int]]
) -> dict[MessageKey, set[int]]:
    """Conversations a message names besides its thread ids: its stored copy's, and the one its
    reply token (``[#C123]``) names, if that is in the same inbox (never across inboxes)."""
    named = {key: {conv} for key, (_, conv) in stored.items()}
    tokens = {m.reply_token for m in msgs if m.reply_token is not None}
    if tokens:
        rows = session.execute(
            select(Conversation.id, Conversation.inbox_id).where(Conversation.id.in_(tokens))
        ).all()
        inbox_of = {r.id: r.inbox_id for r in rows}
        for m in msgs:
            if m.reply_token is not None and inbox_of.get(m.reply_token) == m.inbox_id:
                named.setdefault(_key(m), set()).add(m.reply_token)
    return named


def _lock_named(
    session: Session, groups: list[Group]
) -> tuple[dict[int, Conv], cases.LoadedCase | None]:
    """Lock the cases of every conversation the groups name, and of the conversations those
    were merged into; what placing needs to know of each. The merge targets are locked after
    the rest (out of order: a deadlock with a concurrent merge is possible, and is retried)."""
    wanted = set().union(*(g.named for g in groups)) if groups else set()
    convs: dict[int, Conv] = {}
    loaded: cases.LoadedCase | None = None
    while missing := wanted - convs.keys():
        more = cases.lock_case(session, conversation_ids=missing, snapshot=False)
        loaded = more if loaded is None else cases.combined(loaded, more)
        for cid, state in more.case.conversations.items():
            convs[cid] = Conv(
                cid, state.removed_by is None, state.ticket_id, more.merged_into.get(cid)
            )
        wanted |= {cv.merged_into for cv in convs.values() if cv.merged_into is not None}
    return convs, loaded


def _open_conversations(
    session: Session,
    placed: list[tuple[Group, Placement]],
    accounts: dict[int, int],
    now: datetime,
) -> tuple[list[tuple[Group, Placement]], set[int]]:
    """A new conversation for every group with new messages that names no live one."""
    new = [g for g, p in placed if p.conversation_id is None and g.fresh]
    if not new:
        return placed, set()
    firsts = [min(g.messages, key=lambda m: m.sent_at) for g in new]  # its contact
    contacts = _contacts(
        session, [(accounts[m.inbox_id], m.sender, m.contact_name) for m in firsts]
    )
    rows = [
        {
            "account_id": accounts[m.inbox_id],
            "inbox_id": m.inbox_id,
            "contact_id": contacts[(accounts[m.inbox_id], m.sender.lower())],
            "thread_key": m.effective_thread_key,
            "status": "open",
            "location": "inbox",
            "created_at": now,
            # Final at insert: the batch's messages change nothing else on a new conversation.
            "last_message_at": max(x.received_at for x in g.messages),
            "last_change_at": now,
        }
        for g, m in zip(new, firsts, strict=True)
    ]
    made = bulk.insert_many(session, Conversation, rows, returning=("id",))
    opened = {id(g): r.id for g, r in zip(new, made, strict=True)}
    out = [(g, Placement(opened[id(g)]) if id(g) in opened else p) for g, p in placed]
    return out, set(opened.values())


def _contacts(
    session: Session, people: list[tuple[int, str, str | None]]
) -> dict[tuple[int, str], int]:
    """The contact of each (account, handle), made if new (with the name first seen)."""
    names: dict[tuple[int, str], str | None] = {}
    for account, sender, name in people:
        names.setdefault((account, sender.lower()), name)
    wanted = sorted(names)
    bulk.insert_many(
        session,
        Contact,
        [{"account_id": a, "handle": h, "name": names[(a, h)]} for a, h in wanted],
        skip_conflicts_on=("account_id", "handle"),
    )
    rows = bulk.matching(
        session, Contact, ("account_id", "handle", "id"), ("account_id", "handle"), wanted
    )
    return {(r.account_id, r.handle): r.id for r in rows}


def _merge(
    session: Session,
    placed: list[tuple[Group, Placement]],
    accounts: dict[int, int],
    now: datetime,
) -> dict[int, int]:
    """M2: move each absorbed conversation's messages to the survivor and record the merge as a
    change of the absorbed one. Returns {absorbed: survivor}."""
    absorbed: dict[int, int] = {}
    for group, p in placed:
        for gone in p.absorbed:
            assert p.conversation_id is not None
            survivor, account = p.conversation_id, accounts[group.messages[0].inbox_id]
            case = cases.lock_case(session, conversation_ids=[gone])  # locked already
            action = c.MergeConversation(conversation_id=gone, into_id=survivor)
            apply.apply_internal(session, case, f"merge:{gone}", account, now, action)
            for model in (Message, Reply):
                session.execute(
                    update(model)
                    .where(model.conversation_id == gone)
                    .values(conversation_id=survivor)
                )
            session.execute(
                update(Conversation).where(Conversation.id == gone).values(merged_into=survivor)
            )
            absorbed[gone] = survivor
    return absorbed


def _insert_messages(
    session: Session,
    msgs: list[InboundMessage],
    placed: list[tuple[Group, Placement]],
    now: datetime,
) -> dict[MessageKey, int]:
    home = {_key(m): p for g, p in placed for m in g.messages}
    rows = [
        {
            "inbox_id": m.inbox_id,
            "conversation_id": home[_key(m)].conversation_id,
            "external_id": m.external_id,
            "provider_id": m.provider_id,
            "direction": "inbound",
            "sender": m.sender,
            "text": m.text,
            "sent_at": m.sent_at,
            "received_at": m.received_at,
            "stored_at": now,
            "headers": _with_links(m.headers, home[_key(m)].linked),
            "automatic": m.automatic,
        }
        for m in msgs
    ]
    made = bulk.insert_many(session, Message, rows, returning=("inbox_id", "external_id", "id"))
    return {(r.inbox_id, r.external_id): r.id for r in made}


def _with_links(headers: dict[str, Any], linked: tuple[int, ...]) -> dict[str, Any]:
    """Say so on the message when it also answers conversations left apart (their tickets)."""
    return {**headers, "threading": {"also_in": list(linked)}} if linked else headers


def _links_to_point(
    placed: list[tuple[Group, Placement]],
    links: dict[threading.Key, int | None],
    convs: dict[int, Conv],
    stored: dict[MessageKey, tuple[int, int]],
    ids_of: dict[MessageKey, list[str]],
) -> dict[threading.Key, int]:
    """Every id of the batch that must point somewhere new; none is left empty. A copy of a
    message stored before moves no id (at-least-once delivery changes nothing): only the ids
    of new messages, and ids not known yet, are pointed anew."""
    out: dict[threading.Key, int] = {}
    for group, p in placed:
        if p.conversation_id is not None:
            new = {
                (m.inbox_id, t)
                for m in group.messages
                if _key(m) not in stored
                for t in ids_of[_key(m)]
            }
            moves = threading.repointed(group, p, links, convs)
            out.update({k: v for k, v in moves.items() if k in new or links.get(k) is None})
            continue
        # Copies seen before whose conversation is gone: their new ids go where they are.
        home = stored[_key(group.messages[0])][1]
        out.update({k: home for k in group.keys if links.get(k) is None})
    return out


def _advance(
    session: Session,
    loaded: cases.LoadedCase | None,
    msgs: list[InboundMessage],
    home: dict[MessageKey, int | None],
    message_ids: dict[MessageKey, int],
    created: set[int],
    absorbed: dict[int, int],
    now: datetime,
) -> dict[int, list[dict[str, object]]]:
    """Move every touched conversation's clocks; reopen what the new messages reopen (M1)."""
    by_conv: dict[int, list[InboundMessage]] = defaultdict(list)
    for m in msgs:
        by_conv[home[_key(m)]].append(m)  # type: ignore[index]
    effects: dict[int, list[dict[str, Any]]] = {}
    clocks: list[dict[str, Any]] = []
    survivors = set(absorbed.values())
    for cid, conv_msgs in by_conv.items():
        if cid in created:
            continue  # its clocks were set at insert (_open_conversations)
        assert loaded is not None
        if cid in survivors:
            effects.update(_replay_merged(session, cid, conv_msgs, message_ids, now))
            continue
        last_message_at = max(max(m.received_at for m in conv_msgs), loaded.last_message_at[cid])
        own_clock = loaded.clocks[("conversation", cid)]
        human = [m for m in conv_msgs if not m.automatic]  # auto-replies reopen nothing
        if not human or _changes_nothing(loaded, cid, now):
            moved = max(now, own_clock) if human else own_clock
            clocks.append({"id": cid, "last_message_at": last_message_at, "last_change_at": moved})
            continue
        case = cases.lock_case(session, conversation_ids=[cid])  # locked already: its own case
        for m in human:
            mid = message_ids[_key(m)]
            received = c.MessageReceived(conversation_id=cid)
            folded = apply.fold_into_case(session, case, f"message:{mid}", now, received)
            effects[mid] = [e.as_dict() for e in folded.effects]
        cases.save_case(session, case, now)
        session.execute(
            update(Conversation)
            .where(Conversation.id == cid, Conversation.last_message_at < last_message_at)
            .values(last_message_at=last_message_at)
        )
    bulk.update_many(session, Conversation, clocks)
    return effects


def _changes_nothing(loaded: cases.LoadedCase, cid: int, now: datetime) -> bool:
    """Open, live, and without a ticket or newer than everything in its case: a message would
    change nothing but the clocks, and the rules need not run."""
    conv = loaded.case.conversations[cid]
    return (
        conv.status == "open"
        and conv.removed_by is None
        and (conv.ticket_id is None or now >= loaded.clock_of_conversation(cid))
    )


def _replay_merged(
    session: Session,
    cid: int,
    msgs: Iterable[InboundMessage],
    message_ids: dict[MessageKey, int],
    now: datetime,
) -> dict[int, list[dict[str, Any]]]:
    """A conversation that absorbed others: its state is its whole history replayed, the moved
    messages in their places (as if they had been here from the start)."""
    case = cases.lock_case(session, conversation_ids=[cid])
    case.touched.add(("conversation", cid))
    produced, _ = apply.replay(session, case)
    cases.save_case(session, case, now)
    newest = (
        select(func.max(Message.received_at))
        .where(Message.conversation_id == cid, Message.direction == "inbound")
        .scalar_subquery()
    )
    session.execute(
        update(Conversation).where(Conversation.id == cid).values(last_message_at=newest)
    )
    ids = [message_ids[_key(m)] for m in msgs]
    return {mid: [e.as_dict() for e in produced.get(f"message:{mid}", [])] for mid in ids}


def _events(
    placed: list[tuple[Group, Placement]],
    created: set[int],
    fresh: list[InboundMessage],
    accounts: dict[int, int],
    message_ids: dict[MessageKey, int],
    effects: dict[int, list[dict[str, Any]]],
) -> list[events.Pending]:
    """The batch's outbound events, in the order they happened: each new conversation, then each
    new message and what it changed (M1 reopening)."""
    out: list[events.Pending] = []
    for group, p in placed:
        if p.conversation_id in created:
            inbox = group.messages[0].inbox_id
            made = {"conversation_id": p.conversation_id, "inbox_id": inbox}
            out.append((accounts[inbox], "conversation.created", made, None))
    home = {_key(m): p.conversation_id for g, p in placed for m in g.messages}
    for m in fresh:
        mid, account = message_ids[_key(m)], accounts[m.inbox_id]
        data: dict[str, Any] = {
            "message_id": mid,
            "conversation_id": home[_key(m)],
            "inbox_id": m.inbox_id,
            "external_id": m.external_id,
            "automatic": m.automatic,
        }
        out.append((account, "message.received", data, None))
        out.extend(events.of_effects(account, f"message:{mid}", effects.get(mid, [])))
    return out


def _outcomes(
    batch: list[InboundMessage],
    stored: dict[MessageKey, tuple[int, int]],
    home: dict[MessageKey, int | None],
    message_ids: dict[MessageKey, int],
    effects: dict[int, list[dict[str, Any]]],
    absorbed: dict[int, int],
) -> list[IngestOutcome]:
    out = []
    answered: set[MessageKey] = set()
    for m in batch:
        key = _key(m)
        if key in stored:
            mid, conv = stored[key]
            while conv in absorbed:  # merged in this batch, perhaps more than once
                conv = absorbed[conv]
        else:
            mid, conv = message_ids[key], home[key]  # type: ignore[assignment]
        out.append(
            IngestOutcome(
                inbox_id=m.inbox_id,
                external_id=m.external_id,
                message_id=mid,
                conversation_id=conv,
                # A second copy within the batch is a duplicate of the first, like one stored
                # before.
                duplicate=key in stored or key in answered,
                effects=[] if key in stored or key in answered else effects.get(mid, []),
            )
        )
        answered.add(key)
    return out
