"""Dead letters: a payload a worker could not process, kept whole with its error, once.

A poison message is recorded and acknowledged instead of retried forever; ``fingerprint`` (task
plus payload digest) makes recording idempotent, ``key`` is what a caller looks it up by (a
change id for API writes).
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from handlers.journal import storable
from store.db import is_postgres, transaction
from store.models import DeadLetter


def fingerprint(task: str, payload: Any) -> str:
    return hashlib.sha256(
        task.encode() + b"\0" + orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)
    ).hexdigest()


def record(
    task: str,
    task_id: str | None,
    items: list[tuple[dict[str, Any], BaseException]],
    *,
    attempts: int = 1,
    key: str | None = None,
) -> None:
    """Keep each payload with its error, once (recording again is a no-op)."""
    if not items:
        return
    with transaction() as session:
        insert(session, task, task_id, items, attempts=attempts, key=key)


def insert(
    session: Session,
    task: str,
    task_id: str | None,
    items: list[tuple[dict[str, Any], BaseException]],
    *,
    attempts: int = 1,
    key: str | None = None,
) -> None:
    """``record`` inside the caller's transaction."""
    if not items:
        return
    dialect_insert = postgresql.insert if is_postgres(session) else sqlite.insert
    rows = [
        {
            "fingerprint": fingerprint(task, payload),
            "key": key,
            "task": task,
            "task_id": task_id,
            "payload": storable(payload),
            "error_type": type(error).__name__,
            "error": str(error)[:10_000].replace("\x00", "\ufffd"),
            "attempts": attempts,
            "created_at": datetime.now(UTC),
        }
        for payload, error in items
    ]
    session.execute(
        dialect_insert(DeadLetter).on_conflict_do_nothing(index_elements=["fingerprint"]), rows
    )
