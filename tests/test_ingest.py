"""The ingestion path below HTTP: conversation upsert (handlers/ingest.py) and the journaled
deliveries a worker stores (handlers/pipeline.py). SQLite locally, PostgreSQL on CI."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from handlers import deadletters, journal, pipeline
from schemas import changes as c
from schemas.inbound import InboundMessage
from store.db import reading
from store.models import Conversation, DeadLetter, Delivery, Message
from tests.storehelp import (
    at,
    change,
    conversation,
    count,
    in_threads,
    inbound,
    run,
    state,
    store,
    ticket_of_two,
)


def generic(external_id: str, **fields: Any) -> dict[str, Any]:
    body = {
        "external_id": external_id,
        "sender": "maria@example.com",
        "thread_key": "order-1",
        "text": "hello",
        "sent_at": at(0).isoformat(),
    }
    return {**body, **fields}


def deliveries(inbox: int, *payloads: dict[str, Any]) -> list[dict[str, Any]]:
    return [journal.delivery(inbox, "generic", p) for p in payloads]


# Dedupe -------------------------------------------------------------------------------------


def test_the_same_external_id_is_stored_once_within_and_across_batches(make_account):
    acct = make_account()
    a, a_again = inbound(acct["inbox"], "m1"), inbound(acct["inbox"], "m1", text="changed")
    first = store(a, a_again)
    assert [o.duplicate for o in first] == [False, True]  # the second copy is the duplicate
    assert first[0].message_id == first[1].message_id
    later = store(a)
    assert later[0].duplicate is True and later[0].message_id == first[0].message_id
    assert count(Message) == 1
    with reading() as session:
        assert session.scalar(select(Message.text)) == "hello"  # the first copy wins


def test_external_ids_are_unique_per_inbox_not_globally(make_account):
    one, two = make_account(), make_account()
    store(inbound(one["inbox"], "m1"), inbound(two["inbox"], "m1"))
    assert count(Message) == 2


# Threading ----------------------------------------------------------------------------------


def test_messages_with_one_thread_key_share_a_conversation(make_account):
    acct = make_account()
    outcomes = store(
        inbound(acct["inbox"], "m1", thread="order-1", sent=0),
        inbound(acct["inbox"], "m2", thread="order-1", sent=5, sender="other@example.com"),
        inbound(acct["inbox"], "m3", thread="order-2", sent=6),
    )
    assert outcomes[0].conversation_id == outcomes[1].conversation_id
    assert outcomes[2].conversation_id != outcomes[0].conversation_id
    later = store(inbound(acct["inbox"], "m4", thread="order-1", sent=9))
    assert later[0].conversation_id == outcomes[0].conversation_id
    assert count(Conversation) == 2


def test_without_a_thread_key_messages_thread_by_sender(make_account):
    acct = make_account()
    outcomes = store(
        inbound(acct["inbox"], "m1", sender="Maria@Example.com"),
        inbound(acct["inbox"], "m2", sender="maria@example.com", sent=1),
        inbound(acct["inbox"], "m3", sender="joao@example.com", sent=2),
    )
    assert outcomes[0].conversation_id == outcomes[1].conversation_id != outcomes[2].conversation_id


def test_a_message_on_a_closed_conversation_reopens_it_and_S2_holds(make_account):
    acct = make_account()
    first, second, ticket = ticket_of_two(acct)
    run(change("close", acct["account"], c.SetTicketStatus(ticket_id=ticket, status="closed"), 30))
    outcome = store(inbound(acct["inbox"], "again", thread="a", sent=40))[0]
    assert outcome.conversation_id == first
    assert {e["rule"] for e in outcome.effects} == {"M1"}
    s = state([first, second])
    assert [cv[1] for cv in s["conversations"]] == ["open", "closed"]  # with two, the other stays
    assert s["tickets"][0][1] == "closed"  # M1: only a ticket that holds only it reopens


def test_a_message_that_threads_to_a_trashed_conversation_starts_a_new_one(make_account):
    acct = make_account()
    old = conversation(acct["inbox"], "a")
    run(change("trash", acct["account"], c.TrashConversation(conversation_id=old), 10))
    outcome = store(inbound(acct["inbox"], "after", thread="a", sent=20))[0]
    assert outcome.conversation_id != old
    assert state([old])["conversations"][0][5] == "trash"  # the old one stays trashed
    again = store(inbound(acct["inbox"], "after-2", thread="a", sent=30))[0]
    assert again.conversation_id == outcome.conversation_id


def test_M1_a_mail_delayed_in_transit_reopens_what_was_closed_before_it_arrived(make_account):
    """Dated before the close (its sender's clock), stored after it (ours): the agent who closed
    could not have seen it, so it reopens the conversation."""
    acct = make_account()
    conv = conversation(acct["inbox"], "a", sent=0)
    close = c.SetConversationStatus(conversation_id=conv, status="closed")
    run(change("close", acct["account"], close, 30))
    outcome = store(inbound(acct["inbox"], "late", thread="a", sent=20), stored=40)[0]
    assert {e["rule"] for e in outcome.effects} == {"M1"}
    assert state([conv])["conversations"][0][1] == "open"


def test_a_change_placed_before_a_stored_message_is_superseded_not_applied(make_account):
    """A close that happened (by its time) before a message was stored takes its place in
    history: the message reopened the conversation after it, so the answer says superseded."""
    acct = make_account()
    conv = conversation(acct["inbox"], "a", sent=0)
    store(inbound(acct["inbox"], "m2", thread="a", sent=1), stored=50)
    close = c.SetConversationStatus(conversation_id=conv, status="closed")
    result = run(change("close", acct["account"], close, 30))
    assert result["outcome"] == "superseded"
    assert result["superseded"][0]["rule"] == "M1"
    assert state([conv])["conversations"][0][1] == "open"


# Journaled deliveries -----------------------------------------------------------------------


def test_a_delivery_is_stored_once_however_often_its_id_comes(make_account):
    acct = make_account()
    ids = journal.journal(deliveries(acct["inbox"], generic("m1"), generic("m2")))
    assert pipeline.process_deliveries(ids, "task-1")["stored"] == 2
    assert pipeline.process_deliveries(ids, "task-2") == {
        "stored": 0,
        "duplicate": 0,
        "dead": 0,
        "gone": 2,
    }
    assert count(Message) == 2 and count(Delivery) == 0


def test_a_provider_retry_of_a_stored_message_is_a_duplicate(make_account):
    acct = make_account()
    pipeline.ingest_deliveries(deliveries(acct["inbox"], generic("m1")), None)
    counts = pipeline.ingest_deliveries(deliveries(acct["inbox"], generic("m1")), None)
    assert counts["duplicate"] == 1 and count(Message) == 1


def test_a_malformed_delivery_is_dead_lettered_and_the_rest_of_the_batch_stored(make_account):
    acct = make_account()
    bad = generic("m2", sender="")
    counts = pipeline.ingest_deliveries(
        deliveries(acct["inbox"], generic("m1"), bad, generic("m3")), "task-1"
    )
    assert counts == {"stored": 2, "duplicate": 0, "dead": 1, "gone": 0}
    with reading() as session:
        letter = session.scalars(select(DeadLetter)).one()
    assert letter.payload["payload"] == bad
    assert "sender" in letter.error
    assert count(Delivery) == 0


def test_a_delivery_that_breaks_the_batch_is_isolated_and_buried(make_account):
    """An unknown inbox fails the whole transaction; the worker retries each delivery alone."""
    acct = make_account()
    batch = deliveries(acct["inbox"], generic("m1"), generic("m3"))
    batch.insert(1, journal.delivery(999_999, "generic", generic("m2")))
    counts = pipeline.ingest_deliveries(batch, "task-1")
    assert counts == {"stored": 2, "duplicate": 0, "dead": 1, "gone": 0}
    with reading() as session:
        letter = session.scalars(select(DeadLetter)).one()
    assert letter.error_type == "UnknownInbox" and letter.payload["inbox_id"] == 999_999
    assert count(Delivery) == 0 and count(Message) == 2


def test_dead_letters_are_recorded_once(make_account):
    payload = {"args": [1], "kwargs": {}}
    for _ in range(3):
        deadletters.record("t", "id", [(payload, ValueError("boom"))])
    assert count(DeadLetter) == 1


def test_the_sweeper_hands_out_stale_deliveries_again_once_per_period(make_account):
    acct = make_account()
    ids = journal.journal(deliveries(acct["inbox"], generic("m1")))
    assert journal.sweep(older_than_s=3600) == []
    assert journal.sweep(older_than_s=-1) == ids  # stale: handed out and marked
    assert journal.sweep(older_than_s=5) == []  # just marked: not again this period
    pipeline.process_deliveries(ids, None)
    assert journal.sweep(older_than_s=-1) == []


def _published_ago(table: Any, seconds: float) -> None:
    """Pretend the journal rows of ``table`` were last published ``seconds`` ago."""
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import update

    from store.db import transaction

    with transaction() as session:
        session.execute(
            update(table).values(enqueued_at=datetime.now(UTC) - timedelta(seconds=seconds))
        )


def test_a_row_the_sweeper_keeps_finding_waits_twice_as_long_each_time(make_account):
    """Workers that are only behind must not get a fresh copy of every pending row each period
    (the chaos run's 32,000 broker copies of 850 changes): the wait doubles per re-publish, up
    to 16 periods, so a row whose message was really lost still goes out again."""
    acct = make_account()
    ids = journal.journal(deliveries(acct["inbox"], generic("m1")))
    period = 10.0
    for republished in range(journal.BACKOFF_MAX_DOUBLINGS + 2):
        wait = period * 2 ** min(republished, journal.BACKOFF_MAX_DOUBLINGS)
        _published_ago(Delivery, wait - 2)
        assert journal.sweep(older_than_s=period) == [], republished
        _published_ago(Delivery, wait + 2)
        assert journal.sweep(older_than_s=period) == ids, republished
    with reading() as session:
        assert session.scalar(select(Delivery.republished)) == journal.BACKOFF_MAX_DOUBLINGS + 2


def test_a_pending_change_the_sweeper_keeps_finding_waits_twice_as_long_each_time(make_account):
    from store.models import PendingChange

    acct = make_account()
    journal.pend("c-1", acct["account"], "inbox", {"id": "c-1"})
    _published_ago(PendingChange, 15)
    assert [e["id"] for _, e in journal.sweep_changes(older_than_s=10)] == ["c-1"]
    _published_ago(PendingChange, 15)  # once re-published it waits 20 s, not 10
    assert journal.sweep_changes(older_than_s=10) == []
    _published_ago(PendingChange, 25)
    assert [e["id"] for _, e in journal.sweep_changes(older_than_s=10)] == ["c-1"]


def test_a_worker_stores_its_own_deliveries_and_leaves_the_others_to_their_messages(make_account):
    """Taking other pending rows left their broker messages to find nothing: a task and a
    transaction each, after the work was done."""
    acct = make_account()
    ids = journal.journal(deliveries(acct["inbox"], *(generic(f"m{i}") for i in range(10))))
    counts = pipeline.process_deliveries(ids[:2], None)
    assert counts["stored"] == 2 and count(Delivery) == 8
    assert pipeline.process_deliveries(ids[2:], None) == {
        "stored": 8,
        "duplicate": 0,
        "dead": 0,
        "gone": 0,
    }


def test_concurrent_workers_store_each_message_once_and_one_conversation_per_thread(make_account):
    acct = make_account()
    payloads = [generic(f"m{i}", thread_key=f"t{i % 7}") for i in range(120)]
    # Two providers' retries overlap: each worker gets every message, in its own order.
    batches = [deliveries(acct["inbox"], *payloads), deliveries(acct["inbox"], *payloads[::-1])]

    def work(batch: list[dict[str, Any]]) -> None:
        for start in range(0, len(batch), 15):
            pipeline.ingest_deliveries(batch[start : start + 15], None)

    assert in_threads(work, batches) == []
    assert count(Message) == 120
    assert count(Conversation) == 7
    assert count(Delivery) == 0


# Threading hints from channels (email) -------------------------------------------------------


def mail(
    inbox: int, message_id: str, *, refs: tuple[str, ...] = (), sent: float = 0.0
) -> InboundMessage:
    """An inbound mail as an email adapter hands it over: keyed and threaded by Message-ID."""
    own = inbound(inbox, f"mid:{message_id}", thread=f"mid:{message_id}", sent=sent)
    return own.model_copy(update={"thread_refs": list(refs)})


def test_a_reply_threads_by_the_message_it_answers_not_by_its_own_key(make_account):
    acct = make_account()
    first = store(mail(acct["inbox"], "a@x"))[0].conversation_id
    reply = store(mail(acct["inbox"], "b@x", refs=("a@x",), sent=5))[0]
    assert reply.conversation_id == first
    unrelated = store(mail(acct["inbox"], "c@x", refs=("unknown@x",), sent=6))[0]
    assert unrelated.conversation_id != first


def test_M2_a_mail_naming_two_conversations_merges_them_into_the_oldest(make_account):
    acct = make_account()
    one = store(mail(acct["inbox"], "one@x"))[0].conversation_id
    two = store(mail(acct["inbox"], "two@x", sent=1))[0].conversation_id
    # In-Reply-To two, References one: both are this thread.
    merged = store(mail(acct["inbox"], "r@x", refs=("two@x", "one@x"), sent=2))[0]
    assert merged.conversation_id == one
    assert state([one, two])["conversations"][1][5] == f"merged:{one}"
    with reading() as session:
        homes = session.scalars(select(Message.conversation_id)).all()
    assert set(homes) == {one}
    # A new mail and its reply in one batch: one conversation.
    new, answer = store(
        mail(acct["inbox"], "n@x", sent=3), mail(acct["inbox"], "m@x", refs=("n@x",), sent=4)
    )
    assert new.conversation_id == answer.conversation_id not in (one, two)
    # Ids of the merged conversation lead to where it went.
    assert store(mail(acct["inbox"], "late@x", refs=("two@x",), sent=5))[0].conversation_id == one


def test_a_reply_token_names_the_conversation_but_never_across_inboxes(make_account):
    a, b = make_account(), make_account()
    conv = store(mail(a["inbox"], "a@x"))[0].conversation_id
    tokened = inbound(a["inbox"], "mid:t@x", thread="mid:t@x", sent=1).model_copy(
        update={"reply_token": conv}
    )
    assert store(tokened)[0].conversation_id == conv
    foreign = inbound(b["inbox"], "mid:f@x", thread="mid:f@x", sent=1).model_copy(
        update={"reply_token": conv}
    )
    assert store(foreign)[0].conversation_id != conv


def test_a_reply_to_a_trashed_conversation_starts_a_new_one(make_account):
    acct = make_account()
    old = store(mail(acct["inbox"], "a@x"))[0].conversation_id
    run(change("trash", acct["account"], c.TrashConversation(conversation_id=old), 10))
    reply = store(mail(acct["inbox"], "b@x", refs=("a@x",), sent=20))[0]
    assert reply.conversation_id != old


def test_an_auto_reply_is_stored_but_reopens_nothing_even_on_replay(make_account):
    acct = make_account()
    conv = store(mail(acct["inbox"], "a@x"))[0].conversation_id
    ticket = run(change("create", acct["account"], c.CreateTicket(conversation_id=conv), 10))[
        "ticket_id"
    ]
    run(change("close", acct["account"], c.SetTicketStatus(ticket_id=ticket, status="closed"), 30))
    vacation = mail(acct["inbox"], "ooo@x", refs=("a@x",), sent=40).model_copy(
        update={"automatic": True}
    )
    outcome = store(vacation)[0]
    assert outcome.conversation_id == conv and outcome.effects == []
    # A late change forces a replay of the case's history: the auto-reply still reopens nothing.
    run(
        change(
            "late", acct["account"], c.SetTicketOwner(ticket_id=ticket, owner_id=acct["owner"]), 20
        )
    )
    s = state([conv])
    assert s["conversations"][0][1] == "closed" and s["tickets"][0][1] == "closed"
    with reading() as session:
        assert session.scalar(select(Message.automatic).where(Message.external_id == "mid:ooo@x"))


def test_a_late_message_never_moves_last_message_at_back(make_account):
    acct = make_account()
    conv = conversation(acct["inbox"], "a", sent=0)
    store(inbound(acct["inbox"], "new", thread="a", sent=50))
    store(inbound(acct["inbox"], "old", thread="a", sent=20))
    with reading() as session:
        last = session.scalar(select(Conversation.last_message_at).where(Conversation.id == conv))
    assert last == at(51)  # when the newer one reached us (its sender's Date is only shown)


def test_a_reply_dated_before_its_parent_in_the_same_batch_still_joins_it(make_account):
    acct = make_account()
    # Clock skew: the reply's Date is earlier than the mail it answers; both arrive together.
    parent = mail(acct["inbox"], "p@x", sent=50)
    child = mail(acct["inbox"], "c@x", refs=("p@x",), sent=10)
    grandchild = mail(acct["inbox"], "g@x", refs=("c@x",), sent=5)
    outcomes = store(grandchild, child, parent)
    assert len({o.conversation_id for o in outcomes}) == 1
