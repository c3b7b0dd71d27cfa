"""Worker-side batching of ingest messages: one transaction for what has queued up.

Under a steady stream each ingress flush publishes a small batch (api/batcher.py); run one task
each, a worker spends its time on the cost of a task and a transaction, not on the messages, and
falls behind (at 1,000 webhooks/s, two deliveries a task). So the ingest task first takes the
further ingest messages waiting on the broker (``basic_get``, unacknowledged), up to
``ingest_transaction_max`` deliveries, stores them all in its one transaction, and acknowledges
them after the commit; if the work fails they are given back to the broker.

Each message is thus consumed by the worker that did its work: none is left behind to find its
work done (workers that took other messages' journal rows did leave them: a task and a
transaction each, after the fact). A worker killed between its commit and the acknowledgements
leaves them to come back after the broker's visibility timeout, to find their rows gone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from celery import Celery

from handlers.pipeline import INGEST_TASK

_connection: Any = None


@dataclass
class Taken:
    """Ingest messages taken from the broker, and the delivery ids they carry."""

    messages: list[Any] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)

    def settle(self, done: bool) -> None:
        """Acknowledge the messages (their work is committed) or give them back."""
        for message in self.messages:
            if done:
                message.ack()
            else:
                message.reject(requeue=True)
        self.messages.clear()


def take_more(app: Celery, queue: str, have: int, limit: int) -> Taken:
    """Ingest messages waiting on ``queue``, until ``have`` plus theirs reach ``limit`` ids."""
    taken, strangers = Taken(), []
    channel = _channel(app)
    while have + len(taken.ids) < limit:
        raw = channel.basic_get(queue, no_ack=False)
        if raw is None:
            break
        # A kombu message (decode, ack, reject) whatever the transport: py-amqp's is raw.
        message = channel.message_to_python(raw)
        ids = _delivery_ids(message)
        if ids is None:
            strangers.append(message)  # not ours to run here: Celery's consumer will
            continue
        taken.messages.append(message)
        taken.ids += ids
    for message in strangers:
        message.reject(requeue=True)
    return taken


def _delivery_ids(message: Any) -> list[int] | None:
    if (message.headers or {}).get("task") != INGEST_TASK:
        return None
    try:
        args, _kwargs, _embed = message.decode()
        return [int(i) for i in args[0]]
    except (TypeError, ValueError, IndexError, KeyError):
        return None


def _channel(app: Celery) -> Any:
    """One broker connection per worker process, opened when first needed."""
    global _connection
    if _connection is None or not _connection.connected:
        _connection = app.connection_for_read()
        _connection.ensure_connection(max_retries=3)
    return _connection.default_channel


def forget() -> None:
    """Drop the connection (a forked pool process must open its own)."""
    global _connection
    _connection = None
