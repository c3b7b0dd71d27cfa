"""Threading as a graph (handlers/threading.py), in the store: any arrival order converges.

Each test is a case that broke the old lookup (references followed only to messages already
stored): a reply stored before its parent, chains linked only through parents, shuffled batches.
SQLite locally, PostgreSQL on CI; tests/test_threading_workers.py does the same across processes.
"""

from __future__ import annotations

import base64
import random

from sqlalchemy import select

from handlers.channels import adapter_for
from schemas import changes as c
from schemas.inbound import InboundMessage
from store.db import reading
from store.models import Conversation, Message, Thread
from tests import threadcorpus
from tests.storehelp import at, change, count, inbound, new_ticket, run, state, store


def mail(inbox: int, own: str, *refs: str, sent: float = 0.0) -> InboundMessage:
    """An inbound mail as the email adapters hand it over: keyed and threaded by Message-ID."""
    message = inbound(inbox, f"mid:{own}", thread=f"mid:{own}", sent=sent)
    return message.model_copy(update={"thread_refs": list(refs)})


def parsed(inbox: int, raw: bytes) -> InboundMessage:
    payload = {"raw": base64.b64encode(raw).decode()}
    return adapter_for("rfc822").normalize(inbox, at(0), payload)[0]


def homes() -> dict[str, int]:
    with reading() as session:
        rows = session.execute(select(Message.external_id, Message.conversation_id)).all()
    return {r.external_id: r.conversation_id for r in rows}


def test_a_reply_stored_before_its_parent_is_joined_by_the_parent(make_account):
    """The issue's first case: the reply is stored (batch 1), then its parent (batch 2)."""
    acct = make_account()
    reply = store(mail(acct["inbox"], "r1@x", "p1@x"))[0]
    parent = store(mail(acct["inbox"], "p1@x"))[0]
    assert parent.conversation_id == reply.conversation_id
    assert count(Conversation) == 1


def test_a_chain_of_in_reply_to_only_arriving_backwards_ends_in_one_conversation(make_account):
    """c answers b, b answers a, each naming only its parent; c arrives first, then a (which
    shares no id with c: a second conversation), then b, which names both: they merge (M2)."""
    acct = make_account()
    c_ = store(mail(acct["inbox"], "c@x", "b@x"))[0]
    a_ = store(mail(acct["inbox"], "a@x"))[0]
    assert a_.conversation_id != c_.conversation_id
    b_ = store(mail(acct["inbox"], "b@x", "a@x"))[0]
    assert b_.conversation_id == c_.conversation_id  # the oldest conversation survives
    assert set(homes().values()) == {c_.conversation_id}
    with reading() as session:
        gone = session.get(Conversation, a_.conversation_id)
        assert gone is not None and gone.merged_into == c_.conversation_id
        # Every id the merged conversation held leads to the survivor from now on.
        later = store(mail(acct["inbox"], "d@x", "a@x"))[0]
        assert later.conversation_id == c_.conversation_id


def test_two_conversations_with_tickets_are_linked_not_merged(make_account):
    """T2: a conversation never leaves its ticket. A mail answering two ticketed conversations
    joins the oldest and says it also answers the other."""
    acct = make_account()
    one = store(mail(acct["inbox"], "one@x"))[0].conversation_id
    two = store(mail(acct["inbox"], "two@x", sent=1))[0].conversation_id
    new_ticket(acct, one, "t1")
    new_ticket(acct, two, "t2")
    both = store(mail(acct["inbox"], "both@x", "two@x", "one@x", sent=2), stored=200)[0]
    assert both.conversation_id == one
    s = state([one, two])
    assert [cv[5] for cv in s["conversations"]] == [None, None]  # neither removed
    with reading() as session:
        headers = session.scalar(select(Message.headers).where(Message.external_id == "mid:both@x"))
    assert headers["threading"] == {"also_in": [two]}


def test_a_conversation_without_a_ticket_merges_into_the_one_with_a_ticket(make_account):
    acct = make_account()
    old = store(mail(acct["inbox"], "old@x"))[0].conversation_id
    young = store(mail(acct["inbox"], "young@x", sent=1))[0].conversation_id
    ticket = new_ticket(acct, young, "t")
    joined = store(mail(acct["inbox"], "j@x", "young@x", "old@x", sent=2), stored=200)[0]
    assert joined.conversation_id == young  # the ticketed one survives, though younger
    assert state([old])["conversations"][0][5] == f"merged:{young}"
    assert state([young])["tickets"][0][0] == ticket
    # A merged conversation refuses agents' changes, naming where it went.
    refused = run(
        change(
            "own",
            acct["account"],
            c.SetConversationOwner(conversation_id=old, owner_id=acct["owner"]),
            300,
        )
    )
    assert refused["outcome"] == "rejected" and "merged into" in refused["error"]


def test_a_merged_conversation_state_is_its_history_replayed(make_account):
    """The survivor's state is every message and change of it in order, the moved messages in
    their places: here an agent closed the survivor, and the merging mail reopens it (M1)."""
    acct = make_account()
    first = store(mail(acct["inbox"], "f@x"), stored=1)[0].conversation_id
    store(mail(acct["inbox"], "s@x"), stored=2)
    close = c.SetConversationStatus(conversation_id=first, status="closed")
    run(change("close", acct["account"], close, 10))
    linking = store(mail(acct["inbox"], "l@x", "s@x", "f@x"), stored=20)[0]
    assert linking.conversation_id == first
    assert state([first])["conversations"][0][1] == "open"
    assert {e["rule"] for e in linking.effects} == {"M1"}


def test_an_automatic_mail_that_links_two_conversations_merges_but_reopens_nothing(make_account):
    acct = make_account()
    first = store(mail(acct["inbox"], "f@x"), stored=1)[0].conversation_id
    store(mail(acct["inbox"], "s@x"), stored=2)
    run(
        change(
            "close",
            acct["account"],
            c.SetConversationStatus(conversation_id=first, status="closed"),
            10,
        )
    )
    bounce = mail(acct["inbox"], "b@x", "s@x", "f@x").model_copy(update={"automatic": True})
    assert store(bounce, stored=20)[0].conversation_id == first
    # s@x was stored at 2, before the close at 10: in its place in history it reopens nothing.
    assert state([first])["conversations"][0][1] == "closed"


def test_shuffled_threads_in_small_batches_give_one_conversation_per_thread(make_account):
    """The promise on a corpus: every reply style (References only, In-Reply-To only, trimmed),
    lying Date headers, redeliveries, shuffled, in batches of 7."""
    acct = make_account()
    corpus = threadcorpus.generate(60, seed=3)
    deliveries = corpus.deliveries(redelivered=0.2, seed=4)
    for start in range(0, len(deliveries), 7):
        store(*(parsed(acct["inbox"], m.raw) for m in deliveries[start : start + 7]))
    found = homes()
    assert len(found) == len(corpus.mails)
    assert count(Conversation, Conversation.removed_by.is_(None)) == corpus.threads
    by_thread: dict[int, set[int]] = {}
    for m in corpus.mails:
        by_thread.setdefault(m.thread, set()).add(found[f"mid:{m.message_id}"])
    assert all(len(convs) == 1 for convs in by_thread.values())
    assert len({next(iter(v)) for v in by_thread.values()}) == corpus.threads


def test_every_thread_id_points_to_a_conversation_after_each_batch(make_account):
    """No id is left empty (the lock rows are filled before commit), duplicates included."""
    acct = make_account()
    corpus = threadcorpus.generate(10, seed=5)
    deliveries = corpus.deliveries(redelivered=0.5, seed=6)
    rng = random.Random(7)
    while deliveries:
        size = rng.randrange(1, 5)
        store(*(parsed(acct["inbox"], m.raw) for m in deliveries[:size]))
        deliveries = deliveries[size:]
        assert count(Thread, Thread.conversation_id.is_(None)) == 0


def test_a_reply_to_our_reply_threads_back_by_its_message_id(make_account):
    """Our outbound replies record their Message-ID as a thread id (handlers/outbound)."""
    from handlers.outbound import replies
    from schemas.outbound import ReplyIn
    from store.db import transaction
    from store.models import Inbox

    acct = make_account()
    with transaction() as session:
        inbox = session.get(Inbox, acct["inbox"])
        assert inbox is not None
        inbox.outbound = {
            "via": "smtp",
            "from": "Support <s@acme.example>",
            "host": "smtp.acme.example",
        }
    conv = store(mail(acct["inbox"], "q@x"))[0].conversation_id
    reply_id, _ = replies.queue_reply(
        account_id=None,
        conversation_id=conv,
        body=ReplyIn(text="hi", to=["maria@example.com"]),
        key=None,
    )
    with reading() as session:
        ours = session.scalar(select(Message.external_id).where(Message.direction == "outbound"))
    assert ours is not None and reply_id
    answer = store(mail(acct["inbox"], "a@x", ours.removeprefix("mid:")), stored=500)[0]
    assert answer.conversation_id == conv


def test_two_groups_of_one_batch_naming_a_conversation_that_one_of_them_merges(make_account):
    """In one batch: a mail merging x into y (y has the ticket), and a mail answering x only.
    Both end in y; nothing is left in the merged conversation."""
    acct = make_account()
    x = store(mail(acct["inbox"], "x@x"))[0].conversation_id
    assert store(mail(acct["inbox"], "x2@x", "x@x"))[0].conversation_id == x
    y = store(mail(acct["inbox"], "y@x", sent=1))[0].conversation_id
    new_ticket(acct, y, "t")
    joining, answering = store(  # two groups: they share no id, only the conversation x
        mail(acct["inbox"], "j@x", "x@x", "y@x", sent=2),
        mail(acct["inbox"], "a@x", "x2@x", sent=3),
        stored=200,
    )
    assert joining.conversation_id == answering.conversation_id == y
    assert set(homes().values()) == {y}
    assert state([x])["conversations"][0][5] == f"merged:{y}"
