"""``inboxsync status``: each queue's depth (the broker) and oldest work (the store), the journal
backlog, the workers that answer a ping (not on the embedded broker), the dead letters waiting,
the replies due and who holds the periodic lease; as a table and as JSON (workers/status.py).

No worker consumes here: what the test publishes stays on the broker to be counted. It publishes
``ingest_batch`` messages naming delivery 0, which no row ever has, so a worker of a later test
that takes one does nothing; the test takes them back off the queues at its end.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import update
from typer.testing import CliRunner

from cli.main import app as cli
from handlers import deadletters, journal, pipeline
from settings import get_settings
from store import lease
from store.db import transaction
from store.models import PendingChange, Reply
from tests.apihelp import eventually
from tests.storehelp import change, conversation
from workers.periodic import LEASE, RECONCILE_LEASE
from workers.status import QUEUES, gather

PUBLISHED = {"ingest": 2, "inbox": 1, "helpdesk": 1, "outbound": 1, "bulk": 0}
EMBEDDED = get_settings().is_embedded_broker


def depth(queue: str) -> int:
    from workers.app import app
    from workers.status import depth as declared_depth

    with app.connection_for_write() as conn:
        return declared_depth(conn.default_channel, queue)


@pytest.fixture
def published(db: None) -> Iterator[dict[str, int]]:
    """Harmless messages on each queue (``PUBLISHED``); the depths before them."""
    from workers.app import app

    before = {q: depth(q) for q in QUEUES}
    for queue, n in PUBLISHED.items():
        for _ in range(n):
            app.send_task(pipeline.INGEST_TASK, args=[[0]], queue=get_settings().queue_name(queue))
    yield before
    with app.connection_for_write() as conn:  # as many taken back as were put there
        channel = conn.default_channel
        for queue, n in PUBLISHED.items():
            for _ in range(n):
                taken = channel.basic_get(get_settings().queue_name(queue))
                if taken is not None:
                    channel.message_to_python(taken).ack()


def run(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return str(result.stdout)


def a_due_reply(inbox: int, overdue: timedelta) -> int:
    from handlers.outbound import replies
    from schemas.outbound import ReplyIn
    from store.models import Inbox

    with transaction() as session:
        session.get_one(Inbox, inbox).outbound = {
            "via": "postmark",
            "from": "S <s@acme.example>",
            "server_token": "t",
            "api_url": "http://127.0.0.1:9",
        }
    conv = conversation(inbox, "t-due")
    body = ReplyIn(text="hello", to=["maria@example.com"])
    reply_id, _ = replies.queue_reply(account_id=None, conversation_id=conv, body=body, key=None)
    with transaction() as session:
        session.execute(
            update(Reply)
            .where(Reply.id == reply_id)
            .values(next_attempt_at=datetime.now(UTC) - overdue)
        )
    return reply_id


def test_status_as_json_and_as_a_table(make_account: Any, published: dict[str, int]) -> None:
    acct = make_account()
    ten_minutes_ago = (datetime.now(UTC) - timedelta(minutes=10)).isoformat()
    old = {**journal.delivery(acct["inbox"], "generic", {"x": 1}), "received_at": ten_minutes_ago}
    journal.journal([old, journal.delivery(acct["inbox"], "generic", {"x": 2})])
    conv = conversation(acct["inbox"], "t-pending")
    from schemas import changes as c

    envelope = change(
        "status-1", acct["account"], c.SetConversationStatus(conversation_id=conv, status="closed")
    )
    journal.pend("status-1", acct["account"], "helpdesk", envelope)
    with transaction() as session:
        session.execute(
            update(PendingChange).values(enqueued_at=datetime.now(UTC) - timedelta(minutes=5))
        )
    a_due_reply(acct["inbox"], timedelta(minutes=2))
    deadletters.record(
        "inboxsync.ingest_batch", "t", [({"inbox_id": acct["inbox"]}, ValueError("x"))]
    )
    assert lease.acquire(LEASE, "host-a:42:abc", ttl_s=60)

    found = json.loads(run("status", "--json"))
    queues = {q["name"]: q for q in found["queues"]}
    assert list(queues) == list(QUEUES)
    for name in QUEUES:
        assert queues[name]["depth"] == published[name] + PUBLISHED[name]
    assert queues["ingest"]["oldest_age_s"] >= 600 and queues["ingest"]["oldest_of"] == (
        "journaled delivery"
    )
    assert queues["helpdesk"]["oldest_age_s"] >= 300 and queues["inbox"]["oldest_age_s"] is None
    assert queues["outbound"]["oldest_age_s"] >= 120 and queues["bulk"]["oldest_age_s"] is None
    assert found["journal"]["count"] == 2 and found["journal"]["oldest_age_s"] >= 600
    assert found["pending_changes"]["count"] == 1
    assert found["dead_letters_waiting"] == 1 and found["replies_due"] == 1
    assert found["periodic"]["holder"] == "host-a:42:abc" and found["periodic"]["rounds"] == 1
    assert found["periodic"]["expires_in_s"] > 0
    if EMBEDDED:
        assert found["workers_alive"] is None
        assert found["workers_note"] == "n/a (embedded broker)"
    else:
        assert found["workers_alive"] == []  # no worker runs in this test
    # RabbitMQ cannot tell a message's age without taking it: the report says so, fakes nothing.
    assert (found["broker_note"] is not None) == get_settings().is_amqp_broker

    table = run("status")
    for expected in (
        "ingest",
        "helpdesk",
        "journaled delivery",
        "journal backlog",
        "2 (oldest 10 min)",
        "dead letters waiting",
        "replies due",
        "host-a:42:abc (1 rounds)",
    ):
        assert expected in table, table
    assert ("n/a (embedded broker)" in table) == EMBEDDED
    assert ("not its oldest message's age" in table) == get_settings().is_amqp_broker


def test_status_says_when_nobody_holds_the_periodic_lease(db: None) -> None:
    now = datetime.now(UTC)
    assert lease.acquire(LEASE, "gone:1:x", ttl_s=1, now=now - timedelta(minutes=5))
    status = gather(now=now)
    assert status.periodic is not None and status.periodic.expires_in_s < 0
    assert status.dead_letters_waiting == 0 and status.journal.count == 0
    assert "lease expired" in run("status")


def test_status_tells_the_last_reconciliation_and_when_the_next_is_due(db: None) -> None:
    """The reconcile lease is a turn, not a holding: its expiry is when the next turn may start
    (workers/periodic.py ``reconcile_turn``)."""
    assert gather().reconcile is None
    assert "never run" in run("status")
    now = datetime.now(UTC)
    assert lease.take_turn(RECONCILE_LEASE, "host-b:7:r", every_s=600, now=now)
    found = json.loads(run("status", "--json"))["reconcile"]
    assert found["holder"] == "host-b:7:r" and found["rounds"] == 1
    assert 500 < found["expires_in_s"] <= 600
    assert "last by host-b:7:r (1 turns; next in 10 min)" in run("status")
    later = now + timedelta(seconds=601)
    assert lease.take_turn(RECONCILE_LEASE, "host-c:8:r", every_s=600, now=later)
    turn = gather(now=later + timedelta(seconds=700)).reconcile
    assert turn is not None and turn.rounds == 2 and turn.holder == "host-c:8:r"
    assert turn.expires_in_s < 0  # overdue: nobody took the turn


def test_status_names_the_workers_that_answer_a_ping(db: None) -> None:
    """On Redis and RabbitMQ, a running worker answers; the embedded broker carries no
    broadcasts."""
    if EMBEDDED:
        status = gather()
        assert status.workers_alive is None and status.workers_note == "n/a (embedded broker)"
        return
    from tests.workerhelp import start_worker, stop

    proc = start_worker("-Q", "bulk", "--pool", "solo")
    try:
        alive = eventually(lambda: gather().workers_alive, timeout=60)
    finally:
        stop(proc)
    assert len(alive) == 1 and alive[0].startswith("celery@")


def test_the_bulk_queue_shows_its_oldest_running_job(make_account: Any) -> None:
    """Bulk jobs keep their work in the store (chunks, items): the queue's oldest work is the
    oldest job still running; a finished one is not work."""
    from handlers import bulk
    from schemas.bulk import BulkJobIn
    from store.models import BulkJob
    from tests.bulkhelp import Published, seed_tickets

    acct = make_account()
    spec = BulkJobIn.model_validate({"action": "close_tickets", "ids": seed_tickets(acct, 2)})
    job = bulk.create(spec, acct["account"], {"via": "test"}, get_settings(), Published())
    with transaction() as session:
        session.execute(
            update(BulkJob)
            .where(BulkJob.id == job.id)
            .values(created_at=datetime.now(UTC) - timedelta(minutes=3))
        )
    found = {q.name: q for q in gather().queues}["bulk"]
    assert found.oldest_of == "running bulk job"
    assert found.oldest_age_s is not None and found.oldest_age_s >= 180
    with transaction() as session:
        session.execute(update(BulkJob).where(BulkJob.id == job.id).values(state="completed"))
    assert {q.name: q for q in gather().queues}["bulk"].oldest_age_s is None


def test_status_counts_events_waiting_and_subscribers_disabled(make_account: Any) -> None:
    """An operator sees outbound events held up (a receiver down) and who was disabled."""
    from store.models import EventDelivery, OutboundEvent, Subscriber

    acct = make_account()
    now = datetime.now(UTC)
    with transaction() as session:
        up, down = (
            Subscriber(
                account_id=acct["account"],
                url="https://hooks.example.com/x",
                types=["status.changed"],
                secret="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                enabled=enabled,
                created_at=now,
            )
            for enabled in (True, False)
        )
        session.add_all([up, down])
        event = OutboundEvent(
            account_id=acct["account"],
            type="status.changed",
            data={},
            created_at=now - timedelta(minutes=5),
            fanned_out=True,
        )
        session.add(event)
        session.flush()
        for subscriber in (up, down):
            session.add(
                EventDelivery(
                    subscriber_id=subscriber.id, event_id=event.id, state="pending", created_at=now
                )
            )
    found = gather()
    assert found.events_pending.count == 1  # the disabled one's wait is counted apart
    assert (found.events_pending.oldest_age_s or 0) >= 300
    assert found.subscribers_disabled == 1
    table = run("status")
    assert "events pending" in table and "1 (oldest 5 min)" in table
    assert "subscribers disabled" in table
