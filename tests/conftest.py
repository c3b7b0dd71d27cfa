"""Test fixtures: a fresh store per test run, real services when the environment names them.

With ``DATABASE_URL`` set (CI: the machine's PostgreSQL), the run creates its own database
``inboxsync_test_<pid>`` next to the named one and drops it at the end; otherwise a SQLite file in
a temporary directory. With ``CELERY_BROKER_URL`` set (CI: Redis), worker tests use that broker;
otherwise the embedded SQLite broker. The variables are read here once and then replaced by the
run's own, so that nothing touches a developer's data.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import delete, make_url, text

DATA_DIR = Path(os.environ.get("PYTEST_INBOXSYNC_DIR", f"/tmp/inboxsync-test-{os.getpid()}"))
_ORIGINAL_DB = os.environ.pop("DATABASE_URL", None) or os.environ.pop(
    "INBOXSYNC_DATABASE_URL", None
)
_ORIGINAL_BROKER = os.environ.pop("CELERY_BROKER_URL", None) or os.environ.pop(
    "INBOXSYNC_CELERY_BROKER_URL", None
)


def _test_database_url() -> str:
    if not _ORIGINAL_DB:
        return f"sqlite:///{DATA_DIR / 'store.sqlite'}"
    import psycopg

    url = make_url(_ORIGINAL_DB.replace("postgresql://", "postgresql+psycopg://", 1))
    name = f"inboxsync_test_{os.getpid()}"
    admin = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return url.set(database=name).render_as_string(hide_password=False)


def _test_broker_url() -> str:
    if not _ORIGINAL_BROKER:
        return f"sqlq+sqlite:///{DATA_DIR / 'broker.sqlite'}"
    if _ORIGINAL_BROKER.startswith("redis://"):
        # A database number of its own, flushed at start: no leftovers from other runs.
        import redis

        base = (
            _ORIGINAL_BROKER.rsplit("/", 1)[0]
            if _ORIGINAL_BROKER.count("/") > 2
            else (_ORIGINAL_BROKER.rstrip("/"))
        )
        url = f"{base}/13"
        redis.Redis.from_url(url).flushdb()
        return url
    return _ORIGINAL_BROKER


DATA_DIR.mkdir(parents=True, exist_ok=True)
os.environ["INBOXSYNC_DATA_DIR"] = str(DATA_DIR)
os.environ["DATABASE_URL"] = _test_database_url()
os.environ["CELERY_BROKER_URL"] = _test_broker_url()
os.environ.setdefault("INBOXSYNC_ADMIN_TOKEN", "test-admin-token")
os.environ.setdefault("INBOXSYNC_API_WAIT_TIMEOUT_S", "20")
# Replies: short waits, so that retries and recovery happen within a test (worker processes
# inherit these). Tests that need time to pass for a reply give ``attempt`` a later ``now``.
os.environ.setdefault("INBOXSYNC_OUTBOUND_RETRY_BASE_S", "0.2")
os.environ.setdefault("INBOXSYNC_OUTBOUND_LOOKUP_AFTER_S", "0")
os.environ.setdefault("INBOXSYNC_OUTBOUND_SWEEP_GRACE_S", "0")

USING_POSTGRES = os.environ["DATABASE_URL"].startswith("postgresql")
USING_REDIS = os.environ["CELERY_BROKER_URL"].startswith("redis")


def pytest_report_header() -> list[str]:
    return [
        f"inboxsync store: {os.environ['DATABASE_URL']}",
        f"inboxsync broker: {os.environ['CELERY_BROKER_URL']}",
    ]


def pytest_sessionfinish() -> None:
    from store.db import reset_engine

    reset_engine()
    if USING_POSTGRES:
        import psycopg

        url = make_url(os.environ["DATABASE_URL"])
        admin = url.set(drivername="postgresql", database=make_url(_ORIGINAL_DB or "").database)
        try:
            with psycopg.connect(
                admin.render_as_string(hide_password=False), autocommit=True
            ) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)')
        except psycopg.Error:
            pass  # a worker still connected; the next run drops it by name


@pytest.fixture(scope="session")
def migrated() -> None:
    from store.migrate import upgrade

    upgrade()


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
