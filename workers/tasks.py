"""The Celery tasks: thin. They parse, call handlers/, and return.

Every task is idempotent (a change id or a provider message id is applied once), so Celery's
at-least-once delivery is safe: ``acks_late`` plus ``reject_on_worker_lost`` redeliver a task
whose worker died, and the second run is a no-op where the first one committed.

Retries: only for transient errors (database or broker trouble), with exponential backoff and
jitter. Anything else is a poison message: it ends in a dead-letter record with its payload and
error, and the task is acknowledged instead of retried forever.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task
from kombu.exceptions import OperationalError as BrokerOperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from handlers import bulk_run, deadletters, pipeline
from handlers.outbound import event_delivery, replies
from observability import logs, metrics
from settings import get_settings
from workers import coalesce, publish
from workers.app import app

# The broker going away mid-task (a Redis restart) raises redis-py's own errors, not Python's.
BROKER_TROUBLE = (BrokerOperationalError, ConnectionError, RedisConnectionError, RedisTimeoutError)
TRANSIENT = (*pipeline.TRANSIENT_DB_ERRORS, *BROKER_TROUBLE)
log = logging.getLogger(__name__)


class InboxsyncTask(Task):  # type: ignore[misc]
    autoretry_for = TRANSIENT
    retry_backoff = 1  # seconds, doubled each retry, full jitter
    retry_backoff_max = 60
    retry_jitter = True
    max_retries = get_settings().task_max_retries

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        if isinstance(exc, BROKER_TROUBLE):
            # Not the payload's fault, and nothing is lost: every task's work is kept in the store
            # (journal rows, pending changes, replies) until done, and the periodic sweep
            # publishes it again. A dead letter here would be a false alarm (seen in a chaos run:
            # the retry's own publish failed while Redis restarted).
            log.warning(
                "task %s stopped by broker trouble (%s); the sweep publishes its work again",
                self.name,
                type(exc).__name__,
            )
            return
        payload = {"args": list(args), "kwargs": dict(kwargs)}
        key = None
        if self.name == pipeline.APPLY_TASK and args and isinstance(args[0], dict):
            key = args[0].get("id")
        deadletters.record(
            self.name,
            task_id,
            [(payload, exc)],
            attempts=self.request.retries + 1,
            key=key,
        )
        if metrics.enabled():
            metrics.DEAD_LETTERS.labels(self.name).inc()
        log.error("task %s failed for good: %s", self.name, type(exc).__name__)


@app.task(name=pipeline.INGEST_TASK, base=InboxsyncTask, bind=True)
def ingest_batch(self: Task, delivery_ids: list[int]) -> dict[str, int]:
    # What else has queued up goes in the same transaction (workers/coalesce.py).
    limit = get_settings().ingest_transaction_max
    more = coalesce.take_more(
        self.app, get_settings().queue_name("ingest"), len(delivery_ids), limit
    )
    ids = delivery_ids + more.ids
    with logs.bind(delivery_ids=ids, task_id=self.request.id):
        try:
            counts = pipeline.process_deliveries(ids, task_id=self.request.id)
        except BaseException:
            more.settle(done=False)
            raise
        more.settle(done=True)
        log.info("deliveries processed", extra={"fields": counts})
    return counts


@app.task(name=pipeline.APPLY_TASK, base=InboxsyncTask, bind=True)
def apply_change(self: Task, envelope: dict[str, Any]) -> dict[str, Any]:
    with logs.bind(change_id=envelope.get("id"), task_id=self.request.id):
        result = pipeline.run_change(envelope)
        log.info("change %s", result.get("outcome"))
    return result


@app.task(name=pipeline.BULK_TASK, base=InboxsyncTask, bind=True)
def bulk_chunk(self: Task, job_id: int, chunk: int) -> dict[str, int]:
    with logs.bind(bulk_job=job_id, chunk=chunk, task_id=self.request.id):
        counts = bulk_run.run_chunk(job_id, chunk, get_settings(), publish.bulk_chunk)
        log.info("bulk chunk run", extra={"fields": counts})
    return counts


@app.task(name=replies.SEND_TASK, base=InboxsyncTask, bind=True)
def send_reply(self: Task, reply_id: int) -> str:
    with logs.bind(reply_id=reply_id, task_id=self.request.id):
        done = replies.attempt(reply_id)
        if done.outcome == "retry":
            publish.reply(reply_id, countdown_s=done.retry_in_s)
        log.info("reply attempt: %s", done.outcome)
    return done.outcome


@app.task(name=event_delivery.DELIVER_TASK, base=InboxsyncTask, bind=True)
def deliver_events(self: Task, subscriber_id: int) -> str:
    with logs.bind(subscriber_id=subscriber_id, task_id=self.request.id):
        outcome = event_delivery.send(subscriber_id)
        if outcome == "more":
            publish.events(subscriber_id)
        log.info("events sent: %s", outcome)
    return outcome
