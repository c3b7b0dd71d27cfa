"""Reconciliation: find where the store drifted from the rules, and repair it once.

Drift is a state no sequence of changes through the rules can make: a write that bypassed them
(a manual SQL fix, a restore of part of a backup, a bug). Per ticket:

- **D2** a deleted ticket with live conversations: they are removed by the ticket's own cause;
- **D1** a trashed conversation whose ticket lives: the ticket (and its other conversations) are
  removed by the trash's cause, so restoring either brings back the whole case;
- **S1** a closed ticket with open conversations whose history says closed: they close. A
  conversation reopened after the ticket closed (S3 by an agent, M1 by a message) is not drift:
  its case's history is replayed (handlers/apply.py ``replay``) to tell them apart;
- **R1/R2** a conversation in another location than its ticket: it moves to the ticket's.

Each repair is a change like any other (a ``repair`` action, its ``cause`` in the payload, its
effects tagged with the rule), applied through handlers/apply.py under the case's locks, with an
id derived from the drift: ``reconcile:<rule>:ticket:<id>:<the ticket's clock>``. Two
reconcilers at once, or a rerun, repair it once: the second finds the case repaired under the
lock, or the change already recorded.

It also counts what is stuck past its deadline: journaled deliveries and pending changes whose
broker message was lost, replies due and not sent. The periodic sweeps (workers/periodic.py)
publish those again; the ones the sweeps never look at (a time ahead of the clock, a reply with
no due time or a lease past any lease given) are published again here.

A dry run reports the same and changes nothing. The periodic rounds run it once per
``INBOXSYNC_RECONCILE_INTERVAL_S`` per deployment (workers/periodic.py); ``inboxsync reconcile``
and ``POST /reconcile`` run it at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select, union, update
from sqlalchemy.orm import Session

from handlers import apply
from handlers.rules import merged_into
from schemas import changes as c
from schemas.reconcile import ReconcileReport, Repair, RuleId, Stuck
from settings import Settings, get_settings
from store import cases
from store.db import reading, transaction
from store.models import Conversation, Delivery, PendingChange, Reply, Ticket

log = logging.getLogger(__name__)
PAGE = 500
TICK = timedelta(microseconds=1)


def run(settings: Settings | None = None, *, dry_run: bool = False) -> ReconcileReport:
    """One pass over the whole store; what it found and did."""
    settings = settings or get_settings()
    now = datetime.now(UTC)
    repairs: list[Repair] = []
    examined = 0
    after = 0
    while ticket_ids := candidates(after, PAGE):
        for ticket_id in ticket_ids:
            with transaction() as session:
                repairs += examine(session, ticket_id, settings, dry_run=dry_run)
        examined += len(ticket_ids)
        after = ticket_ids[-1]
        if len(ticket_ids) < PAGE:
            break
    counts: dict[str, int] = {}
    for r in repairs:
        counts[r.rule] = counts.get(r.rule, 0) + 1
    report = ReconcileReport(
        dry_run=dry_run,
        started_at=now,
        tickets_examined=examined,
        repairs=repairs,
        counts=counts,
        deliveries=stuck_deliveries(settings, now, dry_run=dry_run),
        changes=stuck_changes(settings, now, dry_run=dry_run),
        replies=stuck_replies(settings, now, dry_run=dry_run),
    )
    if repairs and not dry_run:
        log.warning("reconciliation repaired drift: %s", counts)
    return report


def candidates(after: int, limit: int) -> list[int]:
    """Ids of tickets (above ``after``) whose rows may have drifted, in order."""
    joined = select(Ticket.id.label("id")).join(Conversation, Conversation.ticket_id == Ticket.id)
    live_conv, live_ticket = Conversation.removed_by.is_(None), Ticket.removed_by.is_(None)
    drifts = [
        and_(Ticket.removed_by.is_not(None), live_conv),  # D2
        and_(live_ticket, Conversation.removed_by.is_not(None), Conversation.merged_into.is_(None)),
        and_(live_ticket, Ticket.status == "closed", live_conv, Conversation.status == "open"),
        Conversation.location != Ticket.location,  # R1/R2
    ]
    found = union(*(joined.where(Ticket.id > after, d) for d in drifts)).subquery()
    with reading() as session:
        return list(session.scalars(select(found.c.id).order_by(found.c.id).limit(limit)))


@dataclass(frozen=True)
class Drift:
    rule: RuleId
    conversation_ids: list[int]
    cause: str
    removed_by: str | None = None


def examine(
    session: Session, ticket_id: int, settings: Settings, *, dry_run: bool = False
) -> list[Repair]:
    """Find the drift of one ticket's case under its locks and repair it (unless ``dry_run``)."""
    try:
        loaded = cases.lock_case(session, ticket_ids=[ticket_id], snapshot=False)
    except cases.NotFound:
        return []
    account_id = loaded.account_ids[("ticket", ticket_id)]
    marker = loaded.clocks[("ticket", ticket_id)].astimezone(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    at = max(datetime.now(UTC), loaded.last_change_at)
    out = []
    for drift in drifts(session, loaded, ticket_id):
        change_id = f"reconcile:{drift.rule}:ticket:{ticket_id}:{marker}"
        repair = Repair(
            rule=drift.rule,
            account_id=account_id,
            ticket_id=ticket_id,
            conversation_ids=drift.conversation_ids,
            cause=drift.cause,
            change_id=change_id,
            outcome="found",
            removed_by=drift.removed_by,
        )
        if not dry_run:
            at += TICK  # each repair strictly after the case's clock: folded on top, no replay
            _apply(session, repair, at, settings)
        out.append(repair)
    return out


def drifts(session: Session, loaded: cases.LoadedCase, ticket_id: int) -> list[Drift]:
    ticket = loaded.case.tickets[ticket_id]
    convs = loaded.case.conversations_of(ticket_id)
    found = []
    if ticket.removed_by is not None:
        live = [cv.id for cv in convs if cv.removed_by is None]
        if live:
            found.append(
                Drift(
                    "D2",
                    live,
                    f"ticket {ticket_id} is deleted (by {ticket.removed_by}) but its "
                    f"conversation(s) {_ids(live)} are not",
                )
            )
    else:
        trashed = [cv for cv in convs if cv.removed_by and merged_into(cv.removed_by) is None]
        if trashed:
            first = trashed[0]
            found.append(
                Drift(
                    "D1",
                    [first.id],
                    f"conversation {first.id} is trashed (by {first.removed_by}) but its ticket "
                    f"{ticket_id} is not deleted",
                    first.removed_by,
                )
            )
        elif ticket.status == "closed":
            open_now = [cv.id for cv in convs if cv.removed_by is None and cv.status == "open"]
            if open_now and (wrong := _closed_by_history(session, ticket_id, open_now)):
                found.append(
                    Drift(
                        "S1",
                        wrong,
                        f"ticket {ticket_id} is closed but its conversation(s) {_ids(wrong)} "
                        "are open, and nothing in their history reopened them",
                    )
                )
    elsewhere = [cv.id for cv in convs if cv.location != ticket.location]
    if elsewhere:
        rule: RuleId = "R1" if ticket.location == "help_desk" else "R2"
        found.append(
            Drift(
                rule,
                elsewhere,
                f"conversation(s) {_ids(elsewhere)} are not in their ticket {ticket_id}'s "
                f"location ({ticket.location})",
            )
        )
    return found


def _ids(ids: list[int]) -> str:
    return ", ".join(str(i) for i in ids)


def _closed_by_history(session: Session, ticket_id: int, open_now: list[int]) -> list[int]:
    """Those of ``open_now`` that the case's history, replayed, leaves closed."""
    scratch = cases.lock_case(session, ticket_ids=[ticket_id], snapshot=False)
    apply.replay(session, scratch)  # rebuilds scratch.case from history; nothing is saved
    replayed = scratch.case.conversations
    return [cid for cid in open_now if cid in replayed and replayed[cid].status == "closed"]


def _apply(session: Session, repair: Repair, at: datetime, settings: Settings) -> None:
    action = c.Repair(
        rule=repair.rule,
        ticket_id=repair.ticket_id,
        conversation_ids=repair.conversation_ids,
        cause=repair.cause,
        removed_by=repair.removed_by,
    )
    env = c.ChangeEnvelope(
        id=repair.change_id,
        account_id=repair.account_id,
        occurred_at=at,
        action=action,
        cause={"via": "reconcile"},
    )
    try:
        result = apply.apply_change(session, env, settings)
    except apply.ChangeConflict:  # another reconciler recorded this id for what it saw
        repair.outcome = "duplicate"
        return
    if result.duplicate:
        repair.outcome = "duplicate"
    elif result.outcome == "rejected":
        repair.outcome, repair.error = "rejected", result.error
    else:
        repair.outcome = "repaired"
    repair.effects = result.effects


# ---- stuck work ------------------------------------------------------------------------------


def _count(session: Session, model: Any, *where: Any) -> int:
    return int(session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def stuck_deliveries(settings: Settings, now: datetime, *, dry_run: bool) -> Stuck:
    """Journaled deliveries not stored: overdue ones the sweep publishes again; ones enqueued
    "in the future" (a clock that ran ahead) it would not see for that long: published now."""
    late = now - timedelta(seconds=settings.sweep_after_s)
    ahead = now + timedelta(seconds=settings.sweep_after_s)
    with transaction() as session:
        overdue = _count(session, Delivery, Delivery.enqueued_at < late)
        ids = list(session.scalars(select(Delivery.id).where(Delivery.enqueued_at > ahead)))
        if ids and not dry_run:
            session.execute(update(Delivery).where(Delivery.id.in_(ids)).values(enqueued_at=now))
    if ids and not dry_run:
        from workers import publish

        for start in range(0, len(ids), settings.ingest_batch_max):
            publish.ingest(ids[start : start + settings.ingest_batch_max])
    return Stuck(overdue=overdue, unswept=len(ids), republished=0 if dry_run else len(ids))


def stuck_changes(settings: Settings, now: datetime, *, dry_run: bool) -> Stuck:
    """Pending API changes not applied, as ``stuck_deliveries``."""
    late = now - timedelta(seconds=settings.sweep_after_s)
    ahead = now + timedelta(seconds=settings.sweep_after_s)
    with transaction() as session:
        overdue = _count(session, PendingChange, PendingChange.enqueued_at < late)
        rows = session.execute(
            select(PendingChange.id, PendingChange.queue, PendingChange.envelope).where(
                PendingChange.enqueued_at > ahead
            )
        ).all()
        if rows and not dry_run:
            session.execute(
                update(PendingChange)
                .where(PendingChange.id.in_([r.id for r in rows]))
                .values(enqueued_at=now)
            )
    if rows and not dry_run:
        from workers import publish

        for row in rows:
            publish.change(row.envelope, row.queue)
    return Stuck(overdue=overdue, unswept=len(rows), republished=0 if dry_run else len(rows))


def stuck_replies(settings: Settings, now: datetime, *, dry_run: bool) -> Stuck:
    """Replies due and not sent. Overdue: queued past their due time (and the sweep's grace), or
    sending past their lease (the worker died); the sweep takes both. It never sees a queued
    reply without a due time, or one sending under a lease longer than any lease given: those
    are made due now (the latter as a worker that died: its next attempt asks the provider
    first) and published."""
    grace = now - timedelta(seconds=settings.outbound_sweep_grace_s)
    longest = now + timedelta(seconds=settings.outbound_lease_s)
    queued, sending = Reply.state == "queued", Reply.state == "sending"
    with transaction() as session:
        overdue = _count(
            session,
            Reply,
            or_(
                and_(queued, Reply.next_attempt_at <= grace), and_(sending, Reply.lease_until < now)
            ),
        )
        undue = list(
            session.scalars(select(Reply.id).where(queued, Reply.next_attempt_at.is_(None)))
        )
        held = list(
            session.scalars(
                select(Reply.id).where(
                    sending, or_(Reply.lease_until.is_(None), Reply.lease_until > longest)
                )
            )
        )
        if not dry_run:
            if undue:
                session.execute(
                    update(Reply)
                    .where(Reply.id.in_(undue), queued, Reply.next_attempt_at.is_(None))
                    .values(next_attempt_at=now)
                )
            if held:
                session.execute(
                    update(Reply)
                    .where(Reply.id.in_(held), sending)
                    .values(
                        state="queued",
                        lease_until=None,
                        uncertain=True,
                        next_attempt_at=now,
                        error="reconciliation: its lease was past any lease given",
                    )
                )
    ids = undue + held
    if ids and not dry_run:
        from workers import publish

        for reply_id in ids:
            publish.reply(reply_id)
    return Stuck(overdue=overdue, unswept=len(ids), republished=0 if dry_run else len(ids))
