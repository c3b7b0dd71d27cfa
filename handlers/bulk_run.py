"""Running one chunk of a bulk job (handlers/bulk.py): what the ``bulk_chunk`` task calls.

One transaction per chunk: the chunk's row is locked (SKIP LOCKED: a copy of the task that finds
another worker on it leaves at once), its pending items are applied as changes, each under a
savepoint so that one refused or broken item fails alone with its reason, and the items' states,
the job's counts and the chunk's ``done`` commit together. Killed before the commit, nothing of
the chunk happened; run again after it, its items are no longer pending (and were they, their
change ids would make each a no-op). Then the next chunk of the job is leased and published,
to start when ``bulk_rate_per_s`` allows: the job goes on as a chain of chunks, at most
``bulk_parallel_chunks`` of them in flight.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from handlers import apply, apply_batch, bulk
from handlers.pipeline import TRANSIENT_DB_ERRORS
from schemas import changes as c
from settings import Settings
from store import bulk as batch
from store.db import transaction
from store.models import BulkChunk, BulkItem, BulkJob

log = logging.getLogger(__name__)


def action_for(spec: dict[str, Any], target: int) -> c.Action:
    """The change one item of a job is."""
    kind = spec["action"]
    made: dict[str, Callable[[], c.Action]] = {
        "close_tickets": lambda: c.SetTicketStatus(ticket_id=target, status="closed"),
        "reopen_tickets": lambda: c.SetTicketStatus(ticket_id=target, status=spec["status"]),
        "set_ticket_owner": lambda: c.SetTicketOwner(ticket_id=target, owner_id=spec["owner_id"]),
        "delete_tickets": lambda: c.DeleteTicket(ticket_id=target),
        "restore_tickets": lambda: c.RestoreTicket(ticket_id=target),
        "reroute_tickets": lambda: c.RerouteTicket(ticket_id=target),
        "set_conversation_owner": lambda: c.SetConversationOwner(
            conversation_id=target, owner_id=spec["owner_id"]
        ),
        "close_conversations": lambda: c.SetConversationStatus(
            conversation_id=target, status="closed"
        ),
        "trash_conversations": lambda: c.TrashConversation(conversation_id=target),
        "restore_conversations": lambda: c.RestoreConversation(conversation_id=target),
    }
    return made[kind]()


def run_chunk(job_id: int, chunk: int, settings: Settings, publish: bulk.Publish) -> dict[str, int]:
    """Run one chunk, then publish what comes next; counts of what it did."""
    started = time.monotonic()
    with transaction() as session:
        counts = _run(session, job_id, chunk, settings)
    if not counts["ran"]:
        return counts
    # Pacing: each of the job's chains takes its share of the job's rate. The next chunk is
    # published to start later rather than this worker waiting: the worker stays free.
    delay = 0.0
    if settings.bulk_rate_per_s > 0:
        items = counts["applied"] + counts["failed"]
        due = items * settings.bulk_parallel_chunks / settings.bulk_rate_per_s
        delay = max(0.0, due - (time.monotonic() - started))
    with transaction() as session:
        chunks = bulk.dispatch(session, job_id, settings)
    for following in chunks:
        publish(job_id, following, delay)
    return counts


def _run(session: Session, job_id: int, chunk: int, settings: Settings) -> dict[str, int]:
    counts = {"ran": 0, "applied": 0, "failed": 0}
    row = session.scalars(
        select(BulkChunk)
        .where(BulkChunk.job_id == job_id, BulkChunk.chunk == chunk)
        .with_for_update(skip_locked=True)
    ).first()
    if row is None or row.state == "done":
        return counts  # another worker has it, or had it
    job = session.get_one(BulkJob, job_id)
    if job.state != "running":
        # Paused: the chunk is given back, resume publishes it; ended: nothing more to do.
        row.lease_until = None
        return counts
    targets = list(
        session.scalars(
            select(BulkItem.target_id)
            .where(BulkItem.job_id == job_id, BulkItem.chunk == chunk, BulkItem.state == "pending")
            .order_by(BulkItem.target_id)
        )
    )
    outcomes = _apply_items(session, job, targets, settings)
    batch.update_many(session, BulkItem, outcomes, key=("job_id", "target_id"))
    counts["failed"] = sum(1 for o in outcomes if o["state"] == "failed")
    counts["applied"] = len(outcomes) - counts["failed"]
    row.state, counts["ran"] = "done", 1
    session.flush()
    job = session.get_one(BulkJob, job_id, with_for_update=True, populate_existing=True)
    job.done += counts["applied"]
    job.failed += counts["failed"]
    job.updated_at = datetime.now(UTC)
    session.flush()
    bulk.maybe_finish(session, job)
    return counts


def _apply_items(
    session: Session, job: BulkJob, targets: list[int], settings: Settings
) -> list[dict[str, Any]]:
    """Each target's change: its outcome (``done``, or ``failed`` with the reason). The batch
    (handlers/apply_batch.py) applies what it can in a few statements; the rest one by one,
    each under its own savepoint so that one broken item fails alone. A transient store error
    fails the whole chunk, to be run again."""
    now = datetime.now(UTC)
    cause = {"via": "bulk", "job_id": job.id}
    reasons: dict[int, str] = {}
    envs: dict[str, tuple[int, c.ChangeEnvelope]] = {}
    for target in targets:
        try:
            env = c.ChangeEnvelope(
                id=bulk.change_id(job.id, target, job.generation),
                account_id=job.account_id,
                occurred_at=now,
                action=action_for(job.action, target),
                cause=cause,
            )
        except Exception as exc:  # noqa: BLE001 - the item's reason
            reasons[target] = _reason(exc)
            continue
        envs[env.id] = (target, env)
    results = _batched(session, [env for _, env in envs.values()], settings)
    for change_id, (target, env) in envs.items():
        if change_id in results:
            continue
        try:
            with session.begin_nested():
                results[change_id] = apply.apply_change(session, env, settings)
        except TRANSIENT_DB_ERRORS:
            raise
        except Exception as exc:  # one broken item must not fail its neighbours
            reasons[target] = _reason(exc)
    for change_id, (target, _env) in envs.items():
        result = results.get(change_id)
        if result is not None and result.outcome == "rejected":
            rule = f" ({result.code})" if result.code else ""
            reasons[target] = f"{result.error or 'refused'}{rule}"[:2000]
    return [
        {
            "job_id": job.id,
            "target_id": t,
            "state": "failed" if t in reasons else "done",
            "reason": reasons.get(t),
        }
        for t in targets
    ]


def _batched(
    session: Session, envs: list[c.ChangeEnvelope], settings: Settings
) -> dict[str, c.ChangeResult]:
    """What the batch applied, by change id; nothing if it failed (all go one by one)."""
    try:
        with session.begin_nested():
            return apply_batch.apply_many(session, envs, settings).results
    except TRANSIENT_DB_ERRORS:
        raise
    except Exception:
        log.exception("a bulk batch failed; its items are applied one by one")
        return {}


def _reason(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"[:2000]
