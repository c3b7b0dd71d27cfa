"""Prometheus metrics (``prometheus-client``), on ``/metrics`` of the HTTP service and of workers.

Counted where things happen: webhooks by provider and answer code (the fast ingress path too),
signature failures by provider, API requests by route and code, task runs by task and outcome,
retries, dead letters, the time from a webhook accepted to its message committed (a histogram),
deliveries processed by outcome. Read from the store and the broker when scraped, on the HTTP
service only (``StoreCollector``): the journal's backlog and its oldest age, pending API writes,
queue depths, replies by state, dead letters waiting.

Several processes (uvicorn ``--workers``, Celery's prefork pool) share their counts through
prometheus-client's multiprocess mode: ``inboxsync serve`` / ``inboxsync worker`` point
``PROMETHEUS_MULTIPROC_DIR`` at a directory of their own before anything is counted
(observability/multiprocess.py). ``INBOXSYNC_METRICS=false`` turns counting off (the bench
measures what it costs).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from settings import get_settings

WEBHOOKS = Counter(
    "inboxsync_webhooks",
    "Webhook requests answered, by provider and HTTP code",
    ["provider", "code"],
)
SIGNATURE_FAILURES = Counter(
    "inboxsync_webhook_signature_failures", "Webhooks refused as not authentic", ["provider"]
)
REQUESTS = Counter(
    "inboxsync_http_requests", "API requests answered, by route and HTTP code", ["route", "code"]
)
TASKS = Counter("inboxsync_tasks", "Task runs, by task and outcome", ["task", "outcome"])
RETRIES = Counter("inboxsync_task_retries", "Task retries (transient errors)", ["task"])
DEAD_LETTERS = Counter("inboxsync_dead_letters", "Payloads set aside as dead letters", ["task"])
DELIVERIES = Counter(
    "inboxsync_deliveries_processed", "Deliveries processed, by outcome", ["state"]
)
COMMIT_LATENCY = Histogram(
    "inboxsync_delivery_commit_seconds",
    "From a webhook accepted (202) to its message committed in the store",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)


def enabled() -> bool:
    return get_settings().metrics


def process_registry() -> Any:
    """This process's counts (every process's of the directory, in multiprocess mode)."""
    from prometheus_client import REGISTRY, multiprocess

    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        return REGISTRY
    counts = CollectorRegistry()
    multiprocess.MultiProcessCollector(counts)
    return counts


def exposition(with_store: bool) -> tuple[bytes, str]:
    """What ``/metrics`` shows: this process's counts (every process's, in multiprocess mode),
    then, when ``with_store``, the store's and the broker's state."""
    body = generate_latest(process_registry())
    if with_store:
        state = CollectorRegistry()
        state.register(StoreCollector())
        body += generate_latest(state)
    return body, CONTENT_TYPE_LATEST


class StoreCollector(Collector):
    """Gauges read from the store and the broker at scrape time (one short query each)."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from sqlalchemy import func, select

        from store.db import reading
        from store.models import BulkJob, DeadLetter, Delivery, PendingChange, Reply
        from workers.status import events_pending, subscribers_disabled

        now = datetime.now(UTC)
        with reading() as session:
            backlog, oldest = session.execute(
                select(func.count(Delivery.id), func.min(Delivery.received_at))
            ).one()
            pending = session.scalar(select(func.count()).select_from(PendingChange)) or 0
            rows = session.execute(select(Reply.state, func.count()).group_by(Reply.state)).all()
            replies = {state: count for state, count in rows}
            dead = (
                session.scalar(
                    select(func.count()).select_from(DeadLetter).where(_waiting(DeadLetter))
                )
                or 0
            )
            events = events_pending(session, now)
            disabled = subscribers_disabled(session)
            jobs = dict(
                session.execute(select(BulkJob.state, func.count()).group_by(BulkJob.state)).all()
            )
        yield GaugeMetricFamily(
            "inboxsync_journal_backlog", "Accepted deliveries not stored yet", value=backlog
        )
        yield GaugeMetricFamily(
            "inboxsync_journal_oldest_seconds",
            "Age of the oldest accepted delivery not stored yet",
            value=(now - oldest).total_seconds() if oldest else 0.0,
        )
        yield GaugeMetricFamily(
            "inboxsync_pending_changes", "API writes queued, not applied yet", value=pending
        )
        by_state = GaugeMetricFamily("inboxsync_replies", "Replies by state", labels=["state"])
        for state in ("queued", "sending", "sent", "failed"):
            by_state.add_metric([state], replies.get(state, 0))
        yield by_state
        yield GaugeMetricFamily(
            "inboxsync_dead_letters_waiting", "Dead letters not replayed or discarded", value=dead
        )
        yield GaugeMetricFamily(
            "inboxsync_events_pending",
            "Outbound events not delivered yet to enabled subscribers",
            value=events.count,
        )
        yield GaugeMetricFamily(
            "inboxsync_events_oldest_seconds",
            "Age of the oldest outbound event not delivered yet to an enabled subscriber",
            value=events.oldest_age_s or 0.0,
        )
        yield GaugeMetricFamily(
            "inboxsync_subscribers_disabled",
            "Event subscribers disabled after failing",
            value=disabled or 0,
        )
        by_job_state = GaugeMetricFamily(
            "inboxsync_bulk_jobs", "Bulk jobs by state", labels=["state"]
        )
        for state in ("running", "paused", "cancelled", "completed", "completed_with_failures"):
            by_job_state.add_metric([state], jobs.get(state, 0))
        yield by_job_state
        depth = GaugeMetricFamily(
            "inboxsync_queue_depth", "Messages waiting on the broker", labels=["queue"]
        )
        for queue, count in _queue_depths().items():
            depth.add_metric([queue], count)
        yield depth


def _waiting(model: Any) -> Any:
    state = getattr(model, "state", None)
    return state == "waiting" if state is not None else True


def _queue_depths() -> dict[str, int]:
    from settings import QUEUES
    from workers.app import app
    from workers.status import depth

    depths: dict[str, int] = {}
    try:
        with app.connection_for_write() as conn:
            channel = conn.default_channel
            for queue in QUEUES:  # by the code's names; on the broker with the queue prefix
                depths[queue] = depth(channel, queue)
    except Exception:  # the broker is away: /readyz says so; metrics show no depth
        return {}
    return depths


def since(received_at: datetime) -> float:
    return max(0.0, (datetime.now(UTC) - received_at).total_seconds())


def monotonic() -> float:
    return time.monotonic()
