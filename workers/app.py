"""The Celery app. ``celery -A workers.app worker -Q ingest,inbox,helpdesk,outbound,bulk``."""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import worker_process_init, worker_ready, worker_shutdown

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


@worker_shutdown.connect
def _stop_periodic(**_: Any) -> None:
    if _scheduler is not None:
        _scheduler.stop()


@worker_process_init.connect
def _fresh_connections(**_: Any) -> None:
    # A forked pool process must not share the parent's database or broker connections.
    reset_engine()
    from workers import coalesce

    coalesce.forget()
