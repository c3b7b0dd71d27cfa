"""The ``threads`` table: thread ids and the conversation each belongs to, locked per id.

``lock`` is how ingestion serialises on what a message touches: every thread id of a batch is
locked in one sorted pass, so two transactions that share any id queue behind each other, across
worker processes, and two that share none run side by side. The lock is the id's row: a missing
id is inserted empty (``conversation_id`` NULL) and so locked by this transaction until it
commits; an existing one is taken ``FOR UPDATE``. Both passes go in (inbox, id) order, so two
transactions cannot each hold what the other waits for. Row locks, unlike advisory locks, live in
the rows and not in PostgreSQL's shared lock table, which a batch of a few thousand ids would
otherwise fill. On SQLite, ``BEGIN IMMEDIATE`` (store/db.py) has serialised writers already.

The caller must ``point`` every id it locked at a conversation before it commits.
"""

from __future__ import annotations

from functools import lru_cache

from sqlalchemy import TextClause, select, tuple_
from sqlalchemy import text as sql_text
from sqlalchemy.orm import Session

from store import bulk
from store.db import is_postgres
from store.models import Thread

Key = tuple[int, str]  # (inbox id, thread id)


@lru_cache(maxsize=1)
def _pg_statements() -> tuple[TextClause, TextClause]:
    pairs = "json_to_recordset(CAST(:rows AS json)) AS w(a bigint, b text)"
    insert = sql_text(
        f"INSERT INTO threads (inbox_id, thread_key) SELECT a, b FROM {pairs}"
        " ORDER BY a, b ON CONFLICT (inbox_id, thread_key) DO NOTHING"
    )
    lock = sql_text(
        f"SELECT t.inbox_id, t.thread_key, t.conversation_id FROM threads t JOIN {pairs}"
        " ON t.inbox_id = w.a AND t.thread_key = w.b"
        " ORDER BY t.inbox_id, t.thread_key FOR UPDATE OF t"
    )
    return insert, lock


def lock(session: Session, keys: list[Key]) -> dict[Key, int | None]:
    """Lock every id in ``keys`` for this transaction; the conversation each points to (None:
    the id is new)."""
    wanted = sorted(set(keys))
    if not wanted:
        return {}
    if is_postgres(session):
        insert, locking = _pg_statements()
        rows = bulk.json_rows([{"a": inbox, "b": key} for inbox, key in wanted])
        session.execute(insert, rows)
        found = session.execute(locking, rows).all()
    else:
        bulk.insert_many(
            session,
            Thread,
            [{"inbox_id": i, "thread_key": k} for i, k in wanted],
            skip_conflicts_on=("inbox_id", "thread_key"),
        )
        found = []
        for start in range(0, len(wanted), 5000):  # SQLite's limit on bound parameters
            found += session.execute(
                select(Thread.inbox_id, Thread.thread_key, Thread.conversation_id).where(
                    tuple_(Thread.inbox_id, Thread.thread_key).in_(wanted[start : start + 5000])
                )
            ).all()
    return {(r.inbox_id, r.thread_key): r.conversation_id for r in found}


def point(session: Session, links: dict[Key, int]) -> None:
    """Point each (locked) id at its conversation."""
    bulk.update_many(
        session,
        Thread,
        [{"inbox_id": i, "thread_key": k, "conversation_id": c} for (i, k), c in links.items()],
        key=("inbox_id", "thread_key"),
    )
