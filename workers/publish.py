"""Putting work on the broker: the one place that names tasks and queues for publishers (the
HTTP service, the CLI, the periodic sweeps). Each publish retries briefly on a broker hiccup and
raises if the broker stays away; what was journaled in the store first is found again by the
periodic sweeps (handlers/periodic.py)."""

from __future__ import annotations

from typing import Any

from handlers.pipeline import APPLY_TASK, BULK_TASK, INGEST_TASK

_RETRY = {"max_retries": 2, "interval_start": 0.1, "interval_step": 0.2}


def _queue(name: str) -> str:
    """The broker's name of one of our queues (``INBOXSYNC_QUEUE_PREFIX`` in front)."""
    from settings import get_settings

    return get_settings().queue_name(name)


def ingest(delivery_ids: list[int]) -> None:
    """One ``ingest_batch`` message carrying these journaled deliveries."""
    from workers.app import app

    app.send_task(
        INGEST_TASK, args=[delivery_ids], queue=_queue("ingest"), retry=True, retry_policy=_RETRY
    )


def change(envelope: dict[str, Any], queue: str) -> None:
    """One ``apply_change`` message, on the queue R1/R2 route its case to."""
    from workers.app import app

    app.send_task(APPLY_TASK, args=[envelope], queue=_queue(queue), retry=True, retry_policy=_RETRY)


def reply(reply_id: int, countdown_s: float | None = None) -> None:
    """One ``send_reply`` attempt, now or in ``countdown_s``.

    On RabbitMQ a later attempt is not put on the broker: a countdown on a quorum queue would be
    held by a worker, taking one of its fixed prefetch slots until then (celeryconfig.py). The
    reply is in the store, due at ``next_attempt_at``; the periodic sweep publishes it then
    (up to ``INBOXSYNC_OUTBOUND_SWEEP_GRACE_S`` plus one sweep interval late)."""
    from handlers.outbound.replies import SEND_TASK
    from settings import get_settings
    from workers.app import app

    if countdown_s and countdown_s > 0 and get_settings().is_amqp_broker:
        return
    app.send_task(
        SEND_TASK,
        args=[reply_id],
        countdown=countdown_s,
        queue=_queue("outbound"),
        retry=True,
        retry_policy=_RETRY,
    )


def events(subscriber_id: int) -> None:
    """One ``deliver_events`` message: send this subscriber's pending events, in order."""
    from handlers.outbound.event_delivery import DELIVER_TASK
    from workers.app import app

    app.send_task(
        DELIVER_TASK,
        args=[subscriber_id],
        queue=_queue("outbound"),
        retry=True,
        retry_policy=_RETRY,
    )


def bulk_chunk(job_id: int, chunk: int, countdown_s: float = 0.0) -> None:
    """One ``bulk_chunk`` message on the ``bulk`` queue (handlers/bulk.py), to run now or in
    ``countdown_s`` (a job's pacing). On RabbitMQ the wait is here instead, in the task that
    publishes it: a countdown on a quorum queue would hold one of a worker's fixed prefetch
    slots (see ``reply``); a bulk worker waiting is what pacing means anyway."""
    import time

    from settings import get_settings
    from workers.app import app

    if countdown_s > 0 and get_settings().is_amqp_broker:
        time.sleep(countdown_s)
        countdown_s = 0.0
    app.send_task(
        BULK_TASK,
        args=[job_id, chunk],
        countdown=countdown_s or None,
        queue=_queue("bulk"),
        retry=True,
        retry_policy=_RETRY,
    )
