"""The broker is a setting: what the code names on it carries ``INBOXSYNC_QUEUE_PREFIX``, RabbitMQ's
queues are durable quorum queues, and a worker killed with SIGKILL loses and doubles nothing.

Each test runs on whichever broker the run has (embedded, Redis, RabbitMQ: CI runs this file on
RabbitMQ too); where brokers differ, the test says what it expects of each.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.app import create_app
from api.webhooks import Ingress
from settings import QUEUES, get_settings
from store.db import reading
from store.models import Message
from tests import scratch
from tests.apihelp import setup_account
from tests.conftest import USING_AMQP, USING_REDIS
from tests.test_worker_process import post_many, stored_messages
from tests.workerhelp import ROOT, killed_midway_then_finished

PROBE = """
import json
import celeryconfig
from workers import publish
from workers.status import _depths
publish.ingest([0])
publish.change({"id": "probe"}, "helpdesk")
print(json.dumps({
    "queues": [q.name for q in celeryconfig.task_queues],
    "arguments": [q.queue_arguments for q in celeryconfig.task_queues],
    "default": celeryconfig.task_default_queue,
    "routes": sorted(r["queue"] for r in celeryconfig.task_routes.values()),
    "exchanges": [celeryconfig.control_exchange, celeryconfig.event_exchange],
    "depths": _depths()[0],
}))
"""


def test_the_queue_prefix_reaches_config_publishers_and_status(migrated: None) -> None:
    """A process started with another prefix names every queue and exchange with it, publishes
    to those queues and counts them there; the run's own queues see none of it."""
    from workers.app import app
    from workers.status import depth

    probe = scratch.unique_name("probe") + "."
    with app.connection_for_write() as conn:
        before = {q: depth(conn.default_channel, q) for q in QUEUES}
    env = {**os.environ, "INBOXSYNC_QUEUE_PREFIX": probe}
    try:
        out = subprocess.run(
            [sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, timeout=60
        )
        assert out.returncode == 0, out.stderr.decode()
        found = json.loads(out.stdout.decode().strip().splitlines()[-1])
    finally:
        if USING_AMQP:
            scratch.remove_amqp(os.environ["CELERY_BROKER_URL"], probe)
    assert found["queues"] == [probe + q for q in QUEUES]
    assert found["default"] == probe + "inbox"
    assert found["routes"] == [probe + q for q in ("bulk", "ingest", "outbound", "outbound")]
    assert found["exchanges"] == [probe + "celery", probe + "celeryev"]
    assert found["depths"] == {"ingest": 1, "inbox": 0, "helpdesk": 1, "outbound": 0, "bulk": 0}
    with app.connection_for_write() as conn:
        assert {q: depth(conn.default_channel, q) for q in QUEUES} == before
    quorum = {"x-queue-type": "quorum", "x-delivery-limit": get_settings().amqp_delivery_limit}
    assert found["arguments"] == [quorum if USING_AMQP else None] * len(QUEUES)


def test_task_queues_are_declared_under_the_prefix_and_on_rabbitmq_are_quorum_with_confirms(
    migrated: None,
) -> None:
    """On RabbitMQ the queue exists under the run's prefix (a passive declare finds it), and the
    broker refuses to take it for a classic queue; Redis and the embedded broker have no queue
    types, and are given no arguments."""
    from kombu import Queue

    from workers.app import app
    from workers.status import depth

    settings = get_settings()
    name = settings.queue_name("bulk")
    declared = app.amqp.queues[name]
    assert declared.durable and declared.exchange.name == name
    with app.connection_for_write() as conn:
        assert depth(conn.default_channel, "bulk") == 0
        if not USING_AMQP:
            assert declared.queue_arguments is None
            return
        assert settings.queue_prefix and name.startswith(settings.queue_prefix)
        # Publisher confirms: every publish (the ingress's before its 202) waits for the broker.
        assert conn.connection.confirm_publish is True
        channel = conn.channel()
        assert channel.queue_declare(queue=name, passive=True).message_count == 0
        classic = Queue(name, durable=True, queue_arguments={"x-queue-type": "classic"})
        with pytest.raises(conn.channel_errors, match="x-queue-type"):
            classic.bind(conn.channel()).queue_declare()


@pytest.fixture
def quiet_client(db: None) -> Iterator[TestClient]:
    """An ingress that sweeps nothing within the test, unless the broker needs it (Redis)."""
    after = 5.0 if USING_REDIS else 600.0
    settings = get_settings().model_copy(update={"sweep_after_s": after})
    with TestClient(Ingress(create_app(settings))) as c:
        yield c


def test_a_worker_killed_mid_task_is_made_good_by_the_broker_alone(
    quiet_client: TestClient,
) -> None:
    """SIGKILL a worker while it works through 100 messages; another finishes: each stored once.

    On RabbitMQ and the embedded broker, nothing is swept: the dead worker's unacknowledged
    messages come back from the broker itself (RabbitMQ: when its connection drops; embedded:
    after the visibility timeout). Redis can lose a message a worker had popped but not yet
    recorded (README: Ingestion), so there the journal's sweep runs as in production."""
    quiet_client.app.state.batcher._max_items = 5  # type: ignore[attr-defined]  # many tasks
    acct = setup_account(quiet_client)
    ids = [f"k-{i}" for i in range(100)]
    post_many(quiet_client, acct["inbox"], ids)
    env = {"INBOXSYNC_INGEST_TRANSACTION_MAX": "5"}
    if not USING_REDIS:
        env["INBOXSYNC_SWEEP_AFTER_S"] = "600"
    killed_midway_then_finished(stored_messages, 100, "--pool", "solo", extra_env=env)
    with reading() as session:
        rows = session.scalars(select(Message.external_id)).all()
    assert sorted(rows) == sorted(ids)
