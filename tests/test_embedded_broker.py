"""The embedded SQLite broker (workers/embedded_broker.py) through kombu's public API.

Each test has a broker file of its own; the guarantees checked are the ones the pipeline relies
on: a published message survives the publisher, an acknowledged one is gone, an unacknowledged one
comes back (at channel close at once, after the visibility timeout when the consumer vanished),
and nothing is ever delivered as two copies.
"""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection, Exchange, Queue

import workers.embedded_broker  # noqa: F401  (registers sqlq://)
from workers.embedded_broker import database_path

QUEUE = Queue("ingest", Exchange("ingest", type="direct"), routing_key="ingest")


def url(path: Path) -> str:
    return f"sqlq+sqlite:///{path}"


def publish(broker: str, *bodies: Any) -> None:
    with Connection(broker) as conn:
        producer = conn.Producer()
        for body in bodies:
            producer.publish(body, exchange=QUEUE.exchange, routing_key="ingest", declare=[QUEUE])


def take(broker: str, *, ack: bool, visibility_timeout: float = 60.0) -> Any:
    """One message from a fresh connection; acknowledged or left unacknowledged at close."""
    with Connection(broker, transport_options={"visibility_timeout": visibility_timeout}) as conn:
        message = conn.SimpleQueue(QUEUE).get(timeout=2)
        if ack:
            message.ack()
        return message.payload


def rows(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT count(*) FROM messages").fetchone()[0])


@pytest.fixture
def broker(tmp_path: Path) -> tuple[str, Path]:
    path = tmp_path / "broker.sqlite"
    return url(path), path


def test_a_message_is_delivered_in_order_and_gone_once_acknowledged(broker):
    address, path = broker
    publish(address, {"n": 1}, {"n": 2})
    assert rows(path) == 2
    assert take(address, ack=True) == {"n": 1}
    assert take(address, ack=True) == {"n": 2}
    assert rows(path) == 0


def test_unacknowledged_at_close_is_delivered_again_without_a_copy(broker):
    address, path = broker
    publish(address, {"n": 1})
    assert take(address, ack=False) == {"n": 1}  # the channel closes with it unacknowledged
    assert rows(path) == 1
    assert take(address, ack=True) == {"n": 1}
    assert rows(path) == 0


def test_a_claimed_message_is_invisible_to_others_until_it_expires(broker):
    address, path = broker
    publish(address, {"n": 1})
    conn = Connection(address, transport_options={"visibility_timeout": 1.0})
    first = conn.SimpleQueue(QUEUE).get(timeout=2)
    assert first.payload == {"n": 1}
    with Connection(address) as other, pytest.raises(other.SimpleQueue(QUEUE).Empty):
        other.SimpleQueue(QUEUE).get(timeout=0.3)
    time.sleep(1.1)
    # The first consumer is still alive but too late: the message is someone else's now.
    again = take(address, ack=True)
    assert again == {"n": 1}
    first.ack()  # a stale claim's acknowledgement deletes nothing, and fails nothing
    assert rows(path) == 0
    conn.release()


def test_a_stale_acknowledgement_does_not_delete_the_new_claim(broker):
    address, path = broker
    publish(address, {"n": 1})
    old = Connection(address, transport_options={"visibility_timeout": 0.5})
    stale = old.SimpleQueue(QUEUE).get(timeout=2)
    time.sleep(0.6)
    new = Connection(address)
    current = new.SimpleQueue(QUEUE).get(timeout=2)
    stale.ack()
    assert rows(path) == 1  # still claimed by the live consumer
    current.ack()
    assert rows(path) == 0
    old.release()
    new.release()


def test_reject_with_requeue_redelivers_and_without_requeue_drops(broker):
    address, path = broker
    publish(address, {"n": 1})
    with Connection(address) as conn:
        queue = conn.SimpleQueue(QUEUE)
        queue.get(timeout=2).reject(requeue=True)
        again = queue.get(timeout=2)
        assert again.payload == {"n": 1}
        again.reject(requeue=False)
    assert rows(path) == 0


def _claim_and_die(address: str) -> None:
    conn = Connection(address, transport_options={"visibility_timeout": 1.0})
    conn.SimpleQueue(QUEUE).get(timeout=2)
    os._exit(0)  # no close, no restore: as if killed


def test_a_consumer_that_dies_holding_a_message_loses_it_only_until_the_timeout(broker):
    address, path = broker
    publish(address, {"n": 1})
    child = multiprocessing.get_context("spawn").Process(target=_claim_and_die, args=(address,))
    child.start()
    child.join(20)
    assert child.exitcode == 0
    with Connection(address) as conn, pytest.raises(conn.SimpleQueue(QUEUE).Empty):
        conn.SimpleQueue(QUEUE).get(timeout=0.2)
    time.sleep(1.0)
    assert take(address, ack=True) == {"n": 1}
    assert rows(path) == 0


def _consume_all(address: str, out: Any) -> None:
    seen = []
    with Connection(address) as conn:
        queue = conn.SimpleQueue(QUEUE)
        while True:
            try:
                message = queue.get(timeout=1.0)
            except queue.Empty:
                break
            seen.append(message.payload["n"])
            message.ack()
    out.put(seen)


def test_competing_consumers_in_processes_share_the_work_without_duplicates(broker):
    address, path = broker
    publish(address, *({"n": n} for n in range(300)))
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_consume_all, args=(address, out)) for _ in range(3)]
    for proc in procs:
        proc.start()
    seen = [n for _ in procs for n in out.get(timeout=60)]
    for proc in procs:
        proc.join(20)
    assert sorted(seen) == list(range(300))
    assert rows(path) == 0


def test_queue_size_and_purge(broker):
    address, path = broker
    publish(address, {"n": 1}, {"n": 2})
    with Connection(address) as conn:
        channel = conn.default_channel
        assert QUEUE(channel).queue_declare(passive=True).message_count == 2
        assert QUEUE(channel).purge() == 2
    assert rows(path) == 0


def test_a_url_that_is_not_sqlite_is_refused():
    with pytest.raises(ValueError, match="sqlq\\+sqlite"):
        database_path("postgresql://x/y")
