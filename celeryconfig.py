"""Celery configuration, from the one settings object (settings.py).

Delivery is at least once: tasks are acknowledged after they finish (``acks_late``) and a task
whose worker died is redelivered (``reject_on_worker_lost``; the Redis and embedded brokers
redeliver unacknowledged messages after their visibility timeout, RabbitMQ as soon as the dead
worker's connection closes). Every task is idempotent, so a second run is harmless.

Every queue and exchange is named with ``INBOXSYNC_QUEUE_PREFIX`` in front (settings.py).
"""

from kombu import Exchange, Queue

from settings import QUEUES, get_settings

_settings = get_settings()
_prefix = _settings.queue_prefix

broker_url = _settings.resolved_broker_url
result_backend = None  # results live in the store (changes table), not in Celery
task_ignore_result = True

task_acks_late = True
task_reject_on_worker_lost = True
# A failed task has its dead-letter record (workers/tasks.py): acknowledge it, no requeue loop.
task_acks_on_failure = True
task_acks_on_timeout = True
worker_prefetch_multiplier = 1
broker_connection_retry_on_startup = True
broker_transport_options: dict[str, object]
if _settings.is_embedded_broker:
    # workers/embedded_broker.py: a message a dead worker had claimed comes back after this.
    broker_transport_options = {"visibility_timeout": _settings.embedded_visibility_timeout_s}
elif _settings.is_amqp_broker:
    # RabbitMQ: publisher confirms, so a publish returns only once the broker has the message
    # (a quorum queue: on a majority of its replicas), and the ingress answers 202 after that.
    # Unacknowledged messages of a worker that died go back as soon as its connection closes:
    # no visibility timeout.
    broker_transport_options = {"confirm_publish": True, "connect_timeout": 3}
else:
    # Redis: a message taken by a worker that died is put back once it is older than the
    # visibility timeout, by a sweep every ``unacked_restore_interval`` seconds.
    broker_transport_options = {
        "visibility_timeout": _settings.redis_visibility_timeout_s,
        "unacked_restore_interval": _settings.redis_restore_interval_s,
        "unacked_restore_throttle": 1,
        "unacked_mutex_expire": 30,  # a worker killed mid-sweep blocks sweeps this long
        "socket_connect_timeout": 3,
        "global_keyprefix": _settings.redis_key_prefix,
        # No task uses priorities: one list per queue, so an empty poll is one RPOP, not four.
        "priority_steps": [0],
    }

task_serializer = "json"
accept_content = ["json"]
timezone = "UTC"
enable_utc = True
# Events (what flower reads) and remote control (celery inspect) are broadcasts, which the
# embedded broker does not carry between processes. No "task-sent" events: they would double
# the ingress's broker writes (the profile showed it), and workers report every task anyway.
worker_send_task_events = not _settings.is_embedded_broker
task_send_sent_event = False
worker_enable_remote_control = not _settings.is_embedded_broker


def _queue(name: str) -> Queue:
    """One task queue: durable, its own direct exchange; on RabbitMQ a quorum queue."""
    physical = _settings.queue_name(name)
    arguments: dict[str, object] | None = None
    if _settings.is_amqp_broker:
        arguments = {"x-queue-type": "quorum"}
        if _settings.amqp_delivery_limit:
            arguments["x-delivery-limit"] = _settings.amqp_delivery_limit
    return Queue(
        physical,
        Exchange(physical, type="direct", durable=True),
        routing_key=physical,
        durable=True,
        queue_arguments=arguments,
    )


# ingest: webhook deliveries; inbox / helpdesk: work on tickets and conversations, routed by
# R1/R2 (handlers/routing.py); outbound: replies to customers, which wait on providers' APIs
# (a worker with a threads pool suits it); bulk: long jobs. Each can get its own workers.
task_queues = [_queue(name) for name in QUEUES]
task_default_queue = _settings.queue_name("inbox")
task_routes = {
    "inboxsync.ingest_batch": {"queue": _settings.queue_name("ingest")},
    "inboxsync.send_reply": {"queue": _settings.queue_name("outbound")},
    "inboxsync.deliver_events": {"queue": _settings.queue_name("outbound")},
    "inboxsync.bulk_chunk": {"queue": _settings.queue_name("bulk")},
}
# Remote control (celery inspect ping: ``inboxsync status``) and events: exchanges of the
# deployment's own, so another deployment's workers on the same vhost neither answer nor listen.
control_exchange = f"{_prefix}celery"
event_exchange = f"{_prefix}celeryev"

if _settings.is_amqp_broker:
    # Quorum queues do not support global QoS: Celery sees our queues are quorum and sets the
    # prefetch per consumer (static). A queue Celery creates on the fly is quorum too.
    worker_detect_quorum_queues = True
    task_create_missing_queue_type = "quorum"
    # Celery's native delayed delivery (for countdowns on quorum queues) declares 28 shared
    # ``celery_delayed_*`` queues and exchanges that no prefix reaches, and works only through
    # topic exchanges; ours are direct and the step is left out (workers/consumer.py). A reply
    # due later is published by the periodic sweep when due (workers/publish.py); a task retry's
    # countdown is held by the worker that took it.
    worker_consumer = "workers.consumer:Consumer"
