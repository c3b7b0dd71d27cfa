"""Real ``inboxsync worker`` processes on the configured broker (Redis on CI), end to end.

The HTTP ingress runs in-process; the workers are separate OS processes started as a user
would start them. The second test kills a worker with SIGKILL in the middle of the work and
checks that every accepted message is stored exactly once after another worker takes over.

That test found a real hole: kombu's Redis transport takes a message with BRPOP and only then
records it as unacknowledged, so a worker killed in between loses it for good (a few messages in
one run of six). The delivery journal and its sweeper (handlers/pipeline.py) close it.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from api.app import create_app
from api.webhooks import Ingress
from settings import get_settings
from store.db import reading
from store.models import Conversation, Message
from tests.apihelp import eventually, message, post_webhook, setup_account
from tests.workerhelp import killed_midway_then_finished, start_worker, stop


@pytest.fixture
def client(db: None) -> Iterator[TestClient]:
    # The ingress sweeps often here, so that a lost broker message is made good within the test.
    settings = get_settings().model_copy(update={"sweep_after_s": 5.0, "sweep_interval_s": 1.0})
    with TestClient(Ingress(create_app(settings))) as c:
        yield c


def stored_messages() -> int:
    with reading() as session:
        return session.scalar(select(func.count()).select_from(Message)) or 0


def post_many(client: TestClient, inbox: int, ids: list[str]) -> None:
    def post(external_id: str) -> int:
        thread = f"thread-{int(external_id.split('-')[1]) % 20}"
        return post_webhook(client, inbox, message(external_id, thread=thread)).status_code

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(post, ids)) == {202}


def test_worker_process_end_to_end(client: TestClient) -> None:
    acct = setup_account(client)
    worker = start_worker("-c", "2")
    try:
        ids = [f"m-{i}" for i in range(200)]
        post_many(client, acct["inbox"], ids)
        post_many(client, acct["inbox"], ids[:50])  # redeliveries
        eventually(lambda: stored_messages() == 200, timeout=60)
        with reading() as session:
            assert session.scalar(select(func.count()).select_from(Conversation)) == 20
    finally:
        stop(worker)
    assert stored_messages() == 200


SMALL = {"INBOXSYNC_INGEST_TRANSACTION_MAX": "5"}  # many small transactions: one is cut


def test_killed_worker_loses_and_doubles_nothing(client: TestClient) -> None:
    acct = setup_account(client)
    client.app.state.batcher._max_items = 5  # type: ignore[attr-defined]  # many small tasks
    ids = [f"m-{i}" for i in range(300)]
    post_many(client, acct["inbox"], ids)
    killed_midway_then_finished(stored_messages, 300, "--pool", "solo", extra_env=SMALL)
    with reading() as session:
        rows = session.scalars(select(Message.external_id)).all()
    assert sorted(rows) == sorted(ids)


def queued_batches(client: TestClient, inbox: int, batches: int, size: int) -> list[int]:
    """``batches`` ingest messages of ``size`` journaled deliveries each, on the broker."""
    from handlers import journal
    from workers import publish

    ids = []
    for b in range(batches):
        payloads = [message(f"b{b}-{i}", thread=f"t{b}-{i}") for i in range(size)]
        made = journal.journal([journal.delivery(inbox, "generic", p) for p in payloads])
        publish.ingest([i for i in made if i is not None])
        ids += [i for i in made if i is not None]
    return ids


def transactions_of(ids: list[int]) -> int:
    """How many transactions stored these deliveries (one processed_at per transaction)."""
    from store.models import DeliveryOutcome

    with reading() as session:
        stamps = session.scalars(
            select(DeliveryOutcome.processed_at).where(DeliveryOutcome.id.in_(ids))
        ).all()
    assert len(stamps) == len(ids)
    return len(set(stamps))


@pytest.fixture
def unswept_client(db: None) -> Iterator[TestClient]:
    # No sweep within the test: on a slow machine it would publish again what the worker has not
    # stored yet, and its copies would be left on the queue this test expects empty.
    settings = get_settings().model_copy(update={"sweep_after_s": 600.0})
    with TestClient(Ingress(create_app(settings))) as c:
        yield c


@pytest.mark.parametrize(("limit", "most"), [(4, None), (500, 1)])
def test_a_worker_stores_what_queued_up_in_one_transaction_up_to_the_setting(
    unswept_client: TestClient, limit: int, most: int | None
) -> None:
    """INBOXSYNC_INGEST_TRANSACTION_MAX reaches the worker: five queued messages of two
    deliveries each are one transaction under 500, at least three under 4; and every message
    is consumed, none left behind to find its work done."""
    from workers.app import app
    from workers.status import depth

    acct = setup_account(unswept_client)
    ids = queued_batches(unswept_client, acct["inbox"], batches=5, size=2)
    unswept = {"INBOXSYNC_INGEST_TRANSACTION_MAX": str(limit), "INBOXSYNC_SWEEP_AFTER_S": "600"}
    worker = start_worker("--pool", "solo", extra_env=unswept)
    try:
        eventually(lambda: stored_messages() == 10, timeout=60)
    finally:
        stop(worker)
    count = transactions_of(ids)
    assert count == most if most is not None else count >= 3
    with app.connection_for_write() as conn:
        assert depth(conn.default_channel, "ingest") == 0
