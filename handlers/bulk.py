"""Bulk jobs: one action on many tickets or conversations, as resumable chunked work.

The promises, and where each is kept:

- **the target set is frozen when the job is made**: ``create`` inserts one ``bulk_items`` row
  per target (one ``INSERT … SELECT`` for a filter, one batch insert for ids) in the transaction
  that makes the job; a ticket made afterwards is not in it;
- **each item is one change** through ``handlers.apply.apply_change``, with an id derived from the
  job, the target and the retry generation (``change_id``): a chunk run twice does nothing the
  second time for what the first committed, and a retried item is a new change;
- **progress is in the store**: items ``pending`` / ``done`` / ``failed`` (with the reason), the
  job's counts and state. A chunk commits its items, its counts and its own ``done`` together
  (handlers/bulk_run.py), so a worker killed mid-chunk leaves the chunk as it was;
- **nothing is lost**: a published chunk is leased (``lease_until``); the periodic round
  (``sweep``) publishes again a chunk of a running job whose lease ran out, and keeps each job's
  chunks in flight up to ``bulk_parallel_chunks``;
- **live traffic first**: the ``bulk`` queue, chunks of ``bulk_chunk_size``, at most
  ``bulk_parallel_chunks`` of a job in flight, at most ``bulk_rate_per_s`` items/s per job.

Pause lets the chunks in flight finish and publishes no more; resume publishes again; cancel ends
the job (done items stay done, pending ones stay pending); retry-failed puts only the failed items
back, under a new generation. Publishing is the caller's (``Publish``): handlers do not know
Celery.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, func, insert, literal, select, update
from sqlalchemy.orm import Session

from handlers import events, journal
from schemas.bulk import ENDED, RESTORE_KINDS, BulkFailure, BulkJobIn, BulkJobOut, entity_of
from settings import Settings
from store import bulk as batch
from store.db import reading, transaction
from store.models import Account, BulkChunk, BulkItem, BulkJob, Conversation, Owner, Ticket

log = logging.getLogger(__name__)
# (job id, chunk, seconds from now): put one chunk's task on the broker.
Publish = Callable[[int, int, float], None]
FAILURES_SHOWN = 100


class BulkError(Exception):
    status = 409
    code = "conflict"


class NotFound(BulkError):
    status, code = 404, "not_found"


class Refused(BulkError):
    status, code = 409, "job_state"


class Invalid(BulkError):
    status, code = 422, "invalid_request"


def change_id(job_id: int, target_id: int, generation: int) -> str:
    """The identity of one item's change: the same on every run of its chunk."""
    return f"bulk:{job_id}:{target_id}" + (f":r{generation}" if generation else "")


# ---- making a job ----------------------------------------------------------------------------


def create(
    spec: BulkJobIn,
    account_id: int,
    cause: dict[str, Any],
    settings: Settings,
    publish: Publish,
) -> BulkJobOut:
    """Make the job and freeze its targets, in one transaction; then publish its first chunks."""
    now = datetime.now(UTC)
    with transaction() as session:
        if session.get(Account, account_id) is None:
            raise NotFound(f"account {account_id} not found")
        _check_owner(session, spec, account_id)
        job = BulkJob(
            account_id=account_id,
            action=spec.model_dump(mode="json", include={"action", "owner_id", "status"}),
            # The ids themselves are the items; the job keeps how many were given.
            target=(
                {"ids": len(spec.ids)}
                if spec.ids is not None
                else {"filter": spec.filter.model_dump(mode="json", exclude_none=True)}
                if spec.filter is not None
                else {}
            ),
            state="running",
            total=0,
            done=0,
            failed=0,
            generation=0,
            cause=cause,
            created_at=now,
            updated_at=now,
        )
        session.add(job)
        session.flush()
        job.total = _freeze(session, job, spec, settings.bulk_chunk_size)
        session.execute(
            insert(BulkChunk).from_select(
                ["job_id", "chunk", "state", "published"],
                select(literal(job.id), BulkItem.chunk, literal("queued"), literal(0))
                .where(BulkItem.job_id == job.id)
                .distinct(),
            )
        )
        maybe_finish(session, job)
        chunks = dispatch(session, job.id, settings)
        out = job_out(session, job)
    for chunk in chunks:
        publish(out.id, chunk, 0.0)
    return out


def _check_owner(session: Session, spec: BulkJobIn, account_id: int) -> None:
    if spec.owner_id is None or spec.action not in ("set_ticket_owner", "set_conversation_owner"):
        return
    found = session.scalar(
        select(Owner.id).where(Owner.id == spec.owner_id, Owner.account_id == account_id)
    )
    if found is None:
        raise Invalid(f"owner {spec.owner_id} not found in this account")


def _freeze(session: Session, job: BulkJob, spec: BulkJobIn, size: int) -> int:
    """Insert the job's items, ``size`` to a chunk; how many."""
    if spec.ids is not None:
        ids = sorted(set(spec.ids))
        batch.insert_many(
            session,
            BulkItem,
            [
                {"job_id": job.id, "target_id": t, "chunk": n // size, "state": "pending"}
                for n, t in enumerate(ids)
            ],
        )
        return len(ids)
    matching = _matching(spec, job.account_id).subquery()
    ranked = select(
        literal(job.id),
        matching.c.id,
        (func.row_number().over(order_by=matching.c.id) - 1) // size,
        literal("pending"),
    )
    session.execute(insert(BulkItem).from_select(["job_id", "target_id", "chunk", "state"], ranked))
    return int(
        session.scalar(select(func.count()).select_from(BulkItem).where(BulkItem.job_id == job.id))
        or 0
    )


def _matching(spec: BulkJobIn, account_id: int) -> Select[Any]:
    """The ids the filter names now: live ones, or for a restore the removed ones."""
    f = spec.filter
    assert f is not None
    restore = spec.action in RESTORE_KINDS
    if entity_of(spec.action) == "ticket":
        query = select(Ticket.id).where(
            Ticket.account_id == account_id,
            Ticket.removed_by.is_not(None) if restore else Ticket.removed_by.is_(None),
        )
        if f.inbox_id is not None:
            in_inbox = select(Conversation.ticket_id).where(Conversation.inbox_id == f.inbox_id)
            query = query.where(Ticket.id.in_(in_inbox))
        model: Any = Ticket
    else:
        query = select(Conversation.id).where(
            Conversation.account_id == account_id,
            Conversation.merged_into.is_(None),
            Conversation.removed_by.is_not(None) if restore else Conversation.removed_by.is_(None),
        )
        if f.inbox_id is not None:
            query = query.where(Conversation.inbox_id == f.inbox_id)
        model = Conversation
    for column, value in (("status", f.status), ("owner_id", f.owner_id), ("location", f.location)):
        if value is not None:
            query = query.where(getattr(model, column) == value)
    if f.older_than is not None:
        query = query.where(model.created_at < f.older_than)
    return query


# ---- running: what chunks go out, and when a job ends -----------------------------------------


def dispatch(session: Session, job_id: int, settings: Settings) -> list[int]:
    """Lease the chunks to publish now: up to ``bulk_parallel_chunks`` in flight for a running
    job, taking the queued ones that nobody holds (never leased, or whose lease ran out). The
    job's row is locked so that two dispatchers do not both fill the same free places."""
    job = session.get(BulkJob, job_id, with_for_update=True, populate_existing=True)
    if job is None or job.state != "running":
        return []
    now = datetime.now(UTC)
    queued = (BulkChunk.job_id == job_id, BulkChunk.state == "queued")
    held = session.scalar(
        select(func.count()).select_from(BulkChunk).where(*queued, BulkChunk.lease_until > now)
    )
    free = settings.bulk_parallel_chunks - int(held or 0)
    if free <= 0:
        return []
    chunks = list(
        session.scalars(
            select(BulkChunk.chunk)
            .where(*queued, (BulkChunk.lease_until.is_(None)) | (BulkChunk.lease_until <= now))
            .order_by(BulkChunk.chunk)
            .limit(free)
            .with_for_update(skip_locked=True)
        )
    )
    if chunks:
        session.execute(
            update(BulkChunk)
            .where(BulkChunk.job_id == job_id, BulkChunk.chunk.in_(chunks))
            .values(lease_until=_lease(now, settings), published=BulkChunk.published + 1)
        )
    return chunks


def _lease(now: datetime, settings: Settings) -> Any:
    """``bulk_chunk_lease_s``, doubled for each earlier publish of the chunk, up to 16 times (as
    the journal sweep backs off, handlers/journal.py): a chunk that fails as a whole, or is only
    slow, is not published again every lease period for ever."""
    step = settings.bulk_chunk_lease_s
    return journal.doubled(BulkChunk.lease_until, BulkChunk.published, now, step)


def maybe_finish(session: Session, job: BulkJob) -> bool:
    """End a running job none of whose chunks is left; whether it ended now. Call with the job's
    row locked (after its counts were updated in this transaction)."""
    if job.state != "running":
        return False
    left = session.scalar(
        select(func.count())
        .select_from(BulkChunk)
        .where(BulkChunk.job_id == job.id, BulkChunk.state == "queued")
    )
    if left:
        return False
    _end(session, job, "completed_with_failures" if job.failed else "completed")
    return True


def _end(session: Session, job: BulkJob, state: str) -> None:
    job.state = state
    job.finished_at = job.updated_at = datetime.now(UTC)
    session.flush()
    _finished(session, job)


def _finished(session: Session, job: BulkJob) -> None:
    """A job has just ended (completed, with failures, or cancelled), inside the transaction
    that ends it: the one place that learns it, so that what follows an end (the outbound
    ``bulk_job.finished`` event) commits with it or not at all."""
    summary = {
        "job_id": job.id,
        "action": job.action.get("action"),
        "state": job.state,
        "total": job.total,
        "done": job.done,
        "failed": job.failed,
    }
    events.emit(session, job.account_id, "bulk_job.finished", summary)
    log.info(
        "bulk job %(job_id)s %(state)s: %(done)s done, %(failed)s failed of %(total)s", summary
    )


def sweep(settings: Settings, publish: Publish) -> int:
    """The periodic round's part: for every running job with a chunk nobody holds, publish what
    ``dispatch`` leases (a lost chunk again, or the next ones of a chain whose worker died before
    it published them); how many chunks."""
    now = datetime.now(UTC)
    with reading() as session:
        jobs = list(
            session.scalars(
                select(BulkChunk.job_id)
                .join(BulkJob, BulkJob.id == BulkChunk.job_id)
                .where(
                    BulkJob.state == "running",
                    BulkChunk.state == "queued",
                    (BulkChunk.lease_until.is_(None)) | (BulkChunk.lease_until <= now),
                )
                .distinct()
            )
        )
    published = 0
    for job_id in jobs:
        with transaction() as session:
            chunks = dispatch(session, job_id, settings)
        for chunk in chunks:
            publish(job_id, chunk, 0.0)
        published += len(chunks)
    if published:
        log.warning("published %d bulk chunks again (lost, or their chain was cut)", published)
    return published


# ---- control ---------------------------------------------------------------------------------


def _locked(session: Session, job_id: int, account_id: int | None) -> BulkJob:
    job = session.get(BulkJob, job_id, with_for_update=True, populate_existing=True)
    if job is None or (account_id is not None and job.account_id != account_id):
        raise NotFound(f"bulk job {job_id} not found")
    return job


def pause(job_id: int, account_id: int | None) -> BulkJobOut:
    """Publish no more chunks; the ones in flight finish."""
    with transaction() as session:
        job = _locked(session, job_id, account_id)
        if job.state != "running":
            raise Refused(f"bulk job {job_id} is {job.state}: only a running job is paused")
        job.state, job.updated_at = "paused", datetime.now(UTC)
        return job_out(session, job)


def resume(job_id: int, account_id: int | None, settings: Settings, publish: Publish) -> BulkJobOut:
    with transaction() as session:
        job = _locked(session, job_id, account_id)
        if job.state != "paused":
            raise Refused(f"bulk job {job_id} is {job.state}: only a paused job is resumed")
        job.state, job.updated_at = "running", datetime.now(UTC)
        # What a paused chunk's task gave back is free again; a chunk in flight keeps its lease.
        maybe_finish(session, job)
        chunks = dispatch(session, job.id, settings)
        out = job_out(session, job)
    for chunk in chunks:
        publish(job_id, chunk, 0.0)
    return out


def cancel(job_id: int, account_id: int | None) -> BulkJobOut:
    """End the job now: done items stay done, pending ones are left as they are."""
    with transaction() as session:
        job = _locked(session, job_id, account_id)
        if job.state in ENDED:
            raise Refused(f"bulk job {job_id} is {job.state} already")
        _end(session, job, "cancelled")
        return job_out(session, job)


def retry_failed(
    job_id: int, account_id: int | None, settings: Settings, publish: Publish
) -> BulkJobOut:
    """Run the failed items again, and only them, as new changes (the next generation)."""
    with transaction() as session:
        job = _locked(session, job_id, account_id)
        if job.state != "completed_with_failures":
            raise Refused(f"bulk job {job_id} is {job.state}: it has no failed items to retry")
        job.generation += 1
        session.execute(
            update(BulkItem)
            .where(BulkItem.job_id == job_id, BulkItem.state == "failed")
            .values(state="pending", reason=None)
        )
        again = select(BulkItem.chunk).where(BulkItem.job_id == job_id, BulkItem.state == "pending")
        session.execute(
            update(BulkChunk)
            .where(BulkChunk.job_id == job_id, BulkChunk.chunk.in_(again))
            .values(state="queued", lease_until=None)
        )
        job.failed, job.state, job.finished_at = 0, "running", None
        job.updated_at = datetime.now(UTC)
        session.flush()
        chunks = dispatch(session, job.id, settings)
        out = job_out(session, job)
    for chunk in chunks:
        publish(job_id, chunk, 0.0)
    return out


# ---- reading ---------------------------------------------------------------------------------


def get(
    job_id: int, account_id: int | None, *, failures_after_id: int = 0, limit: int = FAILURES_SHOWN
) -> BulkJobOut:
    with reading() as session:
        job = session.get(BulkJob, job_id)
        if job is None or (account_id is not None and job.account_id != account_id):
            raise NotFound(f"bulk job {job_id} not found")
        return job_out(session, job, failures_after_id=failures_after_id, limit=limit)


def find(account_id: int | None, *, after_id: int, limit: int) -> list[BulkJobOut]:
    """Jobs by id after ``after_id`` (the caller's account's, or all for the admin)."""
    with reading() as session:
        query = select(BulkJob).where(BulkJob.id > after_id).order_by(BulkJob.id).limit(limit)
        if account_id is not None:
            query = query.where(BulkJob.account_id == account_id)
        return [job_out(session, job, limit=0) for job in session.scalars(query)]


def job_out(
    session: Session, job: BulkJob, *, failures_after_id: int = 0, limit: int = FAILURES_SHOWN
) -> BulkJobOut:
    failures: list[Any] = []
    if limit and job.failed:
        failures = list(
            session.execute(
                select(BulkItem.target_id, BulkItem.reason)
                .where(
                    BulkItem.job_id == job.id,
                    BulkItem.state == "failed",
                    BulkItem.target_id > failures_after_id,
                )
                .order_by(BulkItem.target_id)
                .limit(limit + 1)
            )
        )
    more = len(failures) > limit
    failures = failures[:limit]
    return BulkJobOut(
        id=job.id,
        account_id=job.account_id,
        action=job.action,
        target=job.target,
        entity=entity_of(job.action["action"]),
        state=job.state,  # type: ignore[arg-type]
        total=job.total,
        done=job.done,
        failed=job.failed,
        pending=job.total - job.done - job.failed,
        generation=job.generation,
        created_at=job.created_at,
        updated_at=job.updated_at,
        finished_at=job.finished_at,
        failures=[BulkFailure(target_id=f.target_id, reason=f.reason or "") for f in failures],
        next_failures_after_id=failures[-1].target_id if more else None,
    )
