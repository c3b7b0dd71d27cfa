"""Test fixtures: a fresh store per test run, real services when the environment names them.

With ``DATABASE_URL`` set (CI: the machine's PostgreSQL), the run works in a schema of its own
inside that database and drops it at the end; otherwise a SQLite file in a temporary directory.
With ``CELERY_BROKER_URL`` set (CI: Redis, then RabbitMQ for the worker tests), worker tests use
that Redis database with every key under a prefix of the run's own, or that RabbitMQ vhost with
every queue and exchange named under a prefix of the run's own (``INBOXSYNC_QUEUE_PREFIX``),
deleted at the end; otherwise the embedded SQLite broker. Nothing else is created, flushed or
dropped (tests/scratch.py). The variables are read here once and then
replaced by the run's own, so that nothing touches a developer's data.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import delete, text

from tests import scratch

DATA_DIR = Path(os.environ.get("PYTEST_INBOXSYNC_DIR", f"/tmp/inboxsync-test-{os.getpid()}"))
_ORIGINAL_DB = os.environ.pop("DATABASE_URL", None) or os.environ.pop(
    "INBOXSYNC_DATABASE_URL", None
)
_ORIGINAL_BROKER = os.environ.pop("CELERY_BROKER_URL", None) or os.environ.pop(
    "INBOXSYNC_CELERY_BROKER_URL", None
)
SCRATCH = scratch.make(_ORIGINAL_DB, _ORIGINAL_BROKER, "test")

DATA_DIR.mkdir(parents=True, exist_ok=True)
os.environ["INBOXSYNC_DATA_DIR"] = str(DATA_DIR)
os.environ["DATABASE_URL"] = SCRATCH.env.get(
    "DATABASE_URL", _ORIGINAL_DB or f"sqlite:///{DATA_DIR / 'store.sqlite'}"
)
os.environ["CELERY_BROKER_URL"] = SCRATCH.env.get(
    "CELERY_BROKER_URL", _ORIGINAL_BROKER or f"sqlq+sqlite:///{DATA_DIR / 'broker.sqlite'}"
)
for _name in ("INBOXSYNC_REDIS_KEY_PREFIX", "INBOXSYNC_QUEUE_PREFIX"):
    if _name in SCRATCH.env:
        os.environ[_name] = SCRATCH.env[_name]
os.environ.setdefault("INBOXSYNC_ADMIN_TOKEN", "test-admin-token")
os.environ.setdefault("INBOXSYNC_API_WAIT_TIMEOUT_S", "20")
# Replies: short waits, so that retries and recovery happen within a test (worker processes
# inherit these). Tests that need time to pass for a reply give ``attempt`` a later ``now``.
os.environ.setdefault("INBOXSYNC_OUTBOUND_RETRY_BASE_S", "0.2")
os.environ.setdefault("INBOXSYNC_OUTBOUND_LOOKUP_AFTER_S", "0")
os.environ.setdefault("INBOXSYNC_OUTBOUND_SWEEP_GRACE_S", "0")
# Outbound events: a failing subscriber is tried again within a second (tests/test_events*.py).
os.environ.setdefault("INBOXSYNC_EVENTS_RETRY_BASE_S", "0.2")
os.environ.setdefault("INBOXSYNC_EVENTS_RETRY_MAX_S", "0.5")
# The periodic work (workers/periodic.py) runs in every process of a test, the lease picks one:
# all of them must sweep quickly, the in-process app and the worker processes alike.
os.environ.setdefault("INBOXSYNC_SWEEP_INTERVAL_S", "1")
os.environ.setdefault("INBOXSYNC_SWEEP_AFTER_S", "5")
# Reconciliation (handlers/reconcile.py) off in the background: the tests that make drift on
# purpose run it themselves (tests/test_reconcile.py), and nothing else races them to it.
os.environ.setdefault("INBOXSYNC_RECONCILE_INTERVAL_S", "0")
# The fake providers listen on loopback, which workers refuse by default (handlers/netguard.py).
os.environ.setdefault("INBOXSYNC_OUTBOUND_ALLOW_PRIVATE", "true")

USING_POSTGRES = os.environ["DATABASE_URL"].startswith("postgresql")
USING_REDIS = os.environ["CELERY_BROKER_URL"].startswith("redis")
USING_AMQP = os.environ["CELERY_BROKER_URL"].startswith(("amqp", "pyamqp"))


def pytest_report_header() -> list[str]:
    return [
        f"inboxsync store: {os.environ['DATABASE_URL']}",
        f"inboxsync broker: {os.environ['CELERY_BROKER_URL']}"
        + (f" (keys under {SCRATCH.redis_prefix})" if SCRATCH.redis_prefix else "")
        + (f" (queues under {SCRATCH.queue_prefix})" if SCRATCH.queue_prefix else ""),
    ]


def pytest_sessionfinish() -> None:
    from store.db import reset_engine

    reset_engine()
    SCRATCH.remove()


@pytest.fixture(scope="session")
def migrated() -> None:
    from store.migrate import upgrade

    upgrade()


@pytest.fixture(scope="module")
def worker(migrated: None) -> Iterator[None]:
    """A Celery worker in a thread of the test process, on the run's broker (module-wide)."""
    from celery.contrib.testing.worker import start_worker

    from settings import get_settings
    from workers.app import app

    with start_worker(
        app,
        pool="solo",
        perform_ping_check=False,
        shutdown_timeout=30,
        queues=[get_settings().queue_name(q) for q in ("ingest", "inbox", "helpdesk", "bulk")],
    ):
        yield


@pytest.fixture
def db(migrated: None) -> Iterator[None]:
    """An empty, migrated store."""
    from store.db import transaction
    from store.models import Base

    with transaction() as session:
        if USING_POSTGRES:
            # One statement, one lock: a worker still busy with the previous test waits or is
            # waited for, instead of racing a table-by-table delete.
            names = ", ".join(t.name for t in Base.metadata.sorted_tables)
            session.execute(text(f"TRUNCATE {names} CASCADE"))
        else:
            for table in reversed(Base.metadata.sorted_tables):
                session.execute(delete(table))
    # Ids are reused from test to test; the ingress's inbox cache must not outlive the rows.
    from api import webhooks

    webhooks._inboxes.clear()
    yield


@pytest.fixture
def make_account(db: None):  # noqa: ANN201
    """``make_account(tier, created_at)`` -> account id, with one inbox and one owner."""
    from tests.storehelp import new_account

    def make(
        tier: str = "free",
        created_at: datetime = datetime(2023, 1, 1, tzinfo=UTC),
        *,
        secret: str = "s3cret",
    ) -> dict[str, int]:
        return new_account(tier, created_at, secrets={"signing_secret": secret})

    return make
