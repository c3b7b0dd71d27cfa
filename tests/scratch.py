"""Scratch space inside the services the environment names, and nothing else.

Tests, the benchmark and the chaos run are given ``DATABASE_URL`` and ``CELERY_BROKER_URL``. They
work inside those, under names of their own, and remove exactly what they made:

- PostgreSQL: a schema with a unique name in the named database, selected through the URL's
  ``options=-csearch_path=…`` (so every process started with the URL, workers included, uses it),
  dropped at the end;
- Redis: the named database number, every key under a unique prefix (kombu's
  ``global_keyprefix``, set through ``INBOXSYNC_REDIS_KEY_PREFIX``), deleted at the end by prefix.
- RabbitMQ: the named vhost (guest may not create one), every queue and exchange inboxsync
  declares named under a unique prefix (``INBOXSYNC_QUEUE_PREFIX``), deleted at the end by name:
  exactly the names that prefix gives (``amqp_names``), nothing listed or matched.

Nothing is flushed, no database or vhost is created or dropped.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field

from sqlalchemy import make_url


def unique_name(kind: str) -> str:
    return f"inboxsync_{kind}_{os.getpid()}_{uuid.uuid4().hex[:8]}"


@dataclass
class Scratch:
    """What one run made; ``env`` is what its processes need, ``remove()`` undoes it."""

    env: dict[str, str] = field(default_factory=dict)
    schema: str | None = None
    admin_url: str | None = None
    redis_url: str | None = None
    redis_prefix: str | None = None
    amqp_url: str | None = None
    queue_prefix: str | None = None

    def remove(self) -> None:
        if self.schema and self.admin_url:
            import psycopg

            with psycopg.connect(self.admin_url, autocommit=True) as conn:
                # A straggling worker of the run may still hold a lock: wait for it, not forever.
                conn.execute("SET lock_timeout = '30s'")
                conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
        if self.redis_url and self.redis_prefix:
            import redis

            client = redis.Redis.from_url(self.redis_url)
            batch = []
            for key in client.scan_iter(match=f"{self.redis_prefix}*", count=1000):
                batch.append(key)
                if len(batch) >= 1000:
                    client.delete(*batch)
                    batch = []
            if batch:
                client.delete(*batch)
        if self.amqp_url and self.queue_prefix:
            remove_amqp(self.amqp_url, self.queue_prefix)


def make(database_url: str | None, broker_url: str | None, kind: str) -> Scratch:
    """A scratch schema in ``database_url`` (PostgreSQL) and a key prefix in ``broker_url``
    (Redis); other URLs (SQLite, the embedded broker) are left to the caller."""
    scratch = Scratch()
    if database_url and database_url.split("://", 1)[0] in (
        "postgresql",
        "postgres",
        "postgresql+psycopg",
    ):
        import psycopg

        url = make_url(database_url.replace("postgres://", "postgresql://", 1))
        scratch.admin_url = url.set(drivername="postgresql").render_as_string(hide_password=False)
        scratch.schema = unique_name(kind)
        with psycopg.connect(scratch.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{scratch.schema}"')
        options = " ".join(
            filter(None, [url.query.get("options"), f"-csearch_path={scratch.schema}"])  # type: ignore[list-item]
        )
        scratch.env["DATABASE_URL"] = (
            url.set(drivername="postgresql")
            .update_query_dict({"options": options})
            .render_as_string(hide_password=False)
        )
    if broker_url and broker_url.startswith(("amqp://", "amqps://", "pyamqp://")):
        scratch.amqp_url = broker_url
        scratch.queue_prefix = unique_name(kind) + "."
        scratch.env["CELERY_BROKER_URL"] = broker_url
        scratch.env["INBOXSYNC_QUEUE_PREFIX"] = scratch.queue_prefix
    if broker_url and broker_url.startswith(("redis://", "rediss://")):
        scratch.redis_url = broker_url
        scratch.redis_prefix = unique_name(kind) + ":"
        scratch.env["CELERY_BROKER_URL"] = broker_url
        scratch.env["INBOXSYNC_REDIS_KEY_PREFIX"] = scratch.redis_prefix
    return scratch


def amqp_names(prefix: str) -> tuple[list[str], list[str]]:
    """(queues, exchanges) inboxsync declares on RabbitMQ under ``prefix`` (celeryconfig.py):
    the task queues and their exchanges, remote control's and events' exchanges. Workers' own
    pidbox and reply queues are auto-delete: they go with their connections."""
    from settings import QUEUES

    queues = [prefix + q for q in QUEUES]
    exchanges = [
        *queues,
        f"{prefix}celery.pidbox",
        f"reply.{prefix}celery.pidbox",
        f"{prefix}celeryev",
    ]
    return queues, exchanges


def remove_amqp(url: str, prefix: str) -> list[str]:
    """Delete the queues and exchanges ``prefix`` names (those that exist); what was deleted."""
    from kombu import Connection

    removed = []
    with Connection(url, connect_timeout=5) as conn:
        queues, exchanges = amqp_names(prefix)
        for name in queues:
            channel = conn.channel()
            try:
                channel.queue_declare(queue=name, passive=True)
            except conn.channel_errors:  # 404: never declared (the channel is closed by it)
                continue
            channel.queue_delete(queue=name)
            channel.close()
            removed.append(name)
        for name in exchanges:
            channel = conn.channel()
            try:
                channel.exchange_declare(exchange=name, type="direct", passive=True)
            except conn.channel_errors:
                continue
            channel.exchange_delete(exchange=name)
            channel.close()
            removed.append(name)
    return removed
