"""Celery configuration, from the one settings object (settings.py).

Delivery is at least once: tasks are acknowledged after they finish (``acks_late``) and a task
whose worker died is redelivered (``reject_on_worker_lost``; the Redis and embedded brokers
redeliver unacknowledged messages after their visibility timeout). Every task is idempotent, so a
second run is harmless.
"""

from kombu import Queue

from settings import get_settings

_settings = get_settings()

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

# ingest: webhook deliveries; inbox / helpdesk: work on tickets and conversations, routed by
# R1/R2 (handlers/routing.py); outbound: replies to customers, which wait on providers' APIs
# (a worker with a threads pool suits it); bulk: long jobs. Each can get its own workers.
task_queues = [
    Queue("ingest"),
    Queue("inbox"),
    Queue("helpdesk"),
    Queue("outbound"),
    Queue("bulk"),
]
task_default_queue = "inbox"
task_routes = {
    "inboxsync.ingest_batch": {"queue": "ingest"},
    "inboxsync.send_reply": {"queue": "outbound"},
}
