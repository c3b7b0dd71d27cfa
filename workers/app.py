"""The Celery app. ``celery -A workers.app worker -Q ingest,inbox,helpdesk,outbound,bulk``."""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import (
    setup_logging,
    task_failure,
    task_retry,
    task_success,
    worker_process_init,
    worker_ready,
    worker_shutdown,
)

from observability import metrics
from settings import get_settings
from store.db import reset_engine

if get_settings().is_embedded_broker:
    import workers.embedded_broker  # noqa: F401  (registers the sqlq:// transport)

app = Celery("inboxsync")
app.config_from_object("celeryconfig")
app.autodiscover_tasks(["workers"], related_name="tasks", force=True)


_scheduler: Any = None


@worker_ready.connect
def _start_periodic(**_: Any) -> None:
    # The periodic work (workers/periodic.py) runs in workers too, so recovery never depends on
    # the HTTP service; the store's lease lets one process of the deployment do each round.
    global _scheduler
    if get_settings().scheduler:
        from workers.periodic import Scheduler

        _scheduler = Scheduler().start()
    port = get_settings().worker_metrics_port
    if port and metrics.enabled():
        from prometheus_client import start_http_server

        # This worker's counts, its pool processes' included (multiprocess mode: cli/main.py).
        start_http_server(port, registry=metrics.process_registry())


@worker_shutdown.connect
def _stop_periodic(**_: Any) -> None:
    if _scheduler is not None:
        _scheduler.stop()


@setup_logging.connect
def _keep_our_logging(**_: Any) -> None:
    """Connected, so Celery leaves logging as ``inboxsync worker`` configured it."""


@task_success.connect
def _count_success(sender: Any = None, **_: Any) -> None:
    if metrics.enabled():
        metrics.TASKS.labels(getattr(sender, "name", "?"), "success").inc()


@task_failure.connect
def _count_failure(sender: Any = None, **_: Any) -> None:
    if metrics.enabled():
        metrics.TASKS.labels(getattr(sender, "name", "?"), "failure").inc()


@task_retry.connect
def _count_retry(sender: Any = None, **_: Any) -> None:
    if metrics.enabled():
        metrics.TASKS.labels(getattr(sender, "name", "?"), "retry").inc()
        metrics.RETRIES.labels(getattr(sender, "name", "?")).inc()


@worker_process_init.connect
def _fresh_connections(**_: Any) -> None:
    # A forked pool process must not share the parent's database or broker connections.
    reset_engine()
    from workers import coalesce

    coalesce.forget()
