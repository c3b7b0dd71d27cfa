"""Engine and sessions: PostgreSQL (psycopg 3) in production, a SQLite file (WAL) by default."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

import orjson
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from settings import get_settings


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for ``url`` that never renders statement parameters into logs or exception
    messages: they hold inboxes' signing secrets and outbound credentials, and journal rows with
    customers' message text (a failed batch would otherwise put other customers' mail in a log
    line). A caller cannot turn this off."""
    kwargs["hide_parameters"] = True
    # JSON columns (payloads, headers) through orjson: several times faster than the stdlib.
    kwargs.setdefault("json_serializer", _dumps)
    kwargs.setdefault("json_deserializer", orjson.loads)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)
        _configure_sqlite(engine)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy issue BEGIN itself (below) instead of pysqlite's deferred BEGIN.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")  # acknowledged means on disk
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # IMMEDIATE takes the write lock up front: two writers never deadlock upgrading a read
        # lock, they queue on busy_timeout instead. SQLite then serialises writers, which is
        # what row locks give on PostgreSQL. Readers (``reading()``) take no lock in WAL mode.
        if conn.get_execution_options().get("readonly"):
            conn.exec_driver_sql("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")


@lru_cache
def engine() -> Engine:
    return make_engine(get_settings().resolved_database_url)


@lru_cache
def _sessions() -> sessionmaker[Session]:
    return sessionmaker(engine(), expire_on_commit=False)


@contextmanager
def transaction() -> Iterator[Session]:
    """One unit of work: commits on success, rolls back on any exception."""
    with _sessions().begin() as session:
        yield session


@lru_cache
def _reader() -> Engine:
    """The engine of ``reading()``. On PostgreSQL its transactions are REPEATABLE READ: every
    statement of one read sees the same moment. Under READ COMMITTED each statement sees what was
    committed when it began, and ``GET /conversations/{id}`` once answered a conversation as it
    was before a worker's commit with the message that commit stored (closed, with the message
    that reopened it). A read-only transaction never fails to serialize. SQLite's read
    transaction (WAL) is a snapshot already."""
    base = engine()
    if base.dialect.name == "postgresql":
        return base.execution_options(readonly=True, isolation_level="REPEATABLE READ")
    return base.execution_options(readonly=True)


@contextmanager
def reading() -> Iterator[Session]:
    """A read-only unit of work that sees one moment: never blocks writers, rolls back at the
    end."""
    with Session(_reader()) as session:
        yield session  # closing the session rolls its transaction back


def reset_engine() -> None:
    """Forget the cached engine (tests and forked workers)."""
    if engine.cache_info().currsize:
        engine().dispose()
    engine.cache_clear()
    _reader.cache_clear()
    _sessions.cache_clear()


def is_postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"
