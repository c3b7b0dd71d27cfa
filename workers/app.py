"""The Celery app. ``celery -A workers.app worker -Q ingest,inbox,helpdesk,outbound,bulk``."""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import worker_process_init

from settings import get_settings
from store.db import reset_engine

if get_settings().is_embedded_broker:
    import workers.embedded_broker  # noqa: F401  (registers the sqlq:// transport)

app = Celery("inboxsync")
app.config_from_object("celeryconfig")
app.autodiscover_tasks(["workers"], related_name="tasks", force=True)


@worker_process_init.connect
def _fresh_connections(**_: Any) -> None:
    # A forked pool process must not share the parent's database or broker connections.
    reset_engine()
    from workers import coalesce

    coalesce.forget()
