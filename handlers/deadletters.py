"""Dead letters: a payload a worker could not process, kept whole with its error, once.

A poison message is recorded and acknowledged instead of retried forever; ``fingerprint`` (task
plus payload digest) makes recording idempotent, ``key`` is what a caller looks it up by (a
change id for API writes). Each letter says whose it is (``inbox_id``, ``account_id``: an ingest
delivery's inbox, a change's account, a reply's inbox), so an account sees its own letters.

A letter that was replayed (handlers/deadletter_replay.py) and fails again is the same letter
(same task and payload: same fingerprint): it goes back to ``waiting`` with the new error, its
attempts added up. A discarded one stays discarded. A dead-lettered change leaves the journal
of pending changes: it is dead, not pending, until it is replayed (the periodic round would
otherwise publish it again and again).
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from handlers.journal import storable
from store.db import is_postgres, transaction
from store.models import DeadLetter, Inbox, PendingChange, Reply


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
    """Keep each payload with its error, once (recording again is a no-op, unless the letter
    was replayed: then it is waiting again, with the new error)."""
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
    owners = _owners(session, task, [payload for payload, _ in items])
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
            "inbox_id": inbox_id,
            "account_id": account_id,
            "state": "waiting",
            "replays": 0,
        }
        for (payload, error), (inbox_id, account_id) in zip(items, owners, strict=True)
    ]
    # One row per fingerprint: PostgreSQL refuses a statement that updates a row twice.
    rows = list({row["fingerprint"]: row for row in reversed(rows)}.values())[::-1]
    stmt = dialect_insert(DeadLetter)
    session.execute(
        stmt.on_conflict_do_update(
            index_elements=["fingerprint"],
            set_={
                "state": "waiting",
                "task_id": stmt.excluded.task_id,
                "error_type": stmt.excluded.error_type,
                "error": stmt.excluded.error,
                "attempts": DeadLetter.attempts + stmt.excluded.attempts,
            },
            where=DeadLetter.state == "replayed",
        ),
        rows,
    )
    if key is not None and task == _task_names()[1]:
        session.execute(delete(PendingChange).where(PendingChange.id == key))


Owner = tuple[int | None, int | None]


def _task_names() -> tuple[str, str, str]:
    # Imported here: handlers/pipeline.py imports this module.
    from handlers.outbound.replies import SEND_TASK
    from handlers.pipeline import APPLY_TASK, INGEST_TASK

    return INGEST_TASK, APPLY_TASK, SEND_TASK


def _owners(session: Session, task: str, payloads: list[dict[str, Any]]) -> list[Owner]:
    """(inbox_id, account_id) of each payload: an ingest delivery's inbox and its account, a
    change's account (from its envelope), a reply's inbox and account; (None, None) for what
    names no one (a batch of delivery ids, a payload too broken to say)."""
    ingest_task, apply_task, send_task = _task_names()
    firsts = [_first_arg(p) for p in payloads]
    if task == ingest_task:
        inbox_ids = [
            int(p["inbox_id"]) if "args" not in p and _is_id(p.get("inbox_id")) else None
            for p in payloads
        ]
        known = {i for i in inbox_ids if i is not None}
        accounts: dict[int, int] = {}
        if known:
            rows = session.execute(select(Inbox.id, Inbox.account_id).where(Inbox.id.in_(known)))
            accounts = {r.id: r.account_id for r in rows}
        return [(i, accounts.get(i)) if i is not None else (None, None) for i in inbox_ids]
    if task == apply_task:
        return [
            (None, int(f["account_id"]))
            if isinstance(f, dict) and _is_id(f.get("account_id"))
            else (None, None)
            for f in firsts
        ]
    if task == send_task:
        ids = {f for f in firsts if _is_id(f)}
        replies = {
            r.id: (r.inbox_id, r.account_id)
            for r in session.execute(
                select(Reply.id, Reply.inbox_id, Reply.account_id).where(Reply.id.in_(ids))
            )
        }
        return [replies.get(f, (None, None)) if _is_id(f) else (None, None) for f in firsts]
    return [(None, None)] * len(payloads)


def _first_arg(payload: dict[str, Any]) -> Any:
    args = payload.get("args")
    return args[0] if isinstance(args, list) and args else None


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63
