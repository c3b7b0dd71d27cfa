"""The worker's consumer without Celery's native delayed delivery (used on RabbitMQ).

With quorum queues, Celery's ``DelayedDelivery`` step declares 28 ``celery_delayed_*`` queues and
their exchanges at every worker start, under fixed names no ``INBOXSYNC_QUEUE_PREFIX`` reaches
(shared by everything on the vhost), and binds only topic exchanges to them; our queues have
direct exchanges, so the step would leave that debris behind for nothing. Countdowns are handled
without it (celeryconfig.py, workers/publish.py).
"""

from __future__ import annotations

from celery.worker.consumer import Consumer as CeleryConsumer

_DELAYED = "celery.worker.consumer.delayed_delivery:DelayedDelivery"


class Consumer(CeleryConsumer):  # type: ignore[misc]
    class Blueprint(CeleryConsumer.Blueprint):  # type: ignore[misc,name-defined]
        default_steps = [s for s in CeleryConsumer.Blueprint.default_steps if s != _DELAYED]
