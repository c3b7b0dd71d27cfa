"""Idempotency as DESIGN.md defines it, enforced in the store (handlers/apply.py).

Runs on the test store: SQLite locally, PostgreSQL on CI. Changes go through
``pipeline.run_change`` (what the Celery task calls) or the task itself, run in-process.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

import pytest

from handlers import pipeline
from handlers.apply import ChangeConflict
from schemas import changes as c
from settings import get_settings
from store.db import reading
from store.models import Change, Effect
from tests.storehelp import (
    change,
    conversation,
    count,
    in_threads,
    new_ticket,
    run,
    state,
    ticket_of_two,
)

HELPDESK_ACCOUNT = ("enterprise", datetime(2025, 1, 1, tzinfo=UTC))


def test_the_same_change_three_times_applies_once_and_returns_the_first_result(make_account):
    acct = make_account()
    conv = conversation(acct["inbox"], "a")
    envelope = change(
        "api:1:k1",
        acct["account"],
        c.SetConversationOwner(conversation_id=conv, owner_id=acct["owner"]),
    )
    first, second, third = run(envelope), run(envelope), run(envelope)
    assert first["duplicate"] is False and second["duplicate"] is third["duplicate"] is True
    strip = {"duplicate"}
    assert {k: v for k, v in first.items() if k not in strip} == {
        k: v for k, v in third.items() if k not in strip
    }
    assert count(Change, Change.id == "api:1:k1") == 1
    assert count(Effect, Effect.change_id == "api:1:k1") == 1


def test_a_task_rerun_after_its_commit_is_a_no_op(make_account):
    from workers.tasks import apply_change

    acct = make_account()
    conv = conversation(acct["inbox"], "a")
    ticket = new_ticket(acct, conv, "create")
    envelope = change(
        "close-1", acct["account"], c.SetTicketStatus(ticket_id=ticket, status="closed")
    )
    first = apply_change.apply(args=[envelope]).get()
    before = state([conv])
    # The worker died after its commit and before its ack: the broker delivers the task again.
    again = apply_change.apply(args=[envelope]).get()
    assert again["duplicate"] is True and again["effects"] == first["effects"]
    assert state([conv]) == before
    assert count(Effect, Effect.change_id == "close-1") == 2  # ticket status + S1, once


def test_a_change_id_reused_for_another_change_is_a_conflict(make_account):
    acct = make_account()
    conv = conversation(acct["inbox"], "a")
    run(
        change("k", acct["account"], c.SetConversationStatus(conversation_id=conv, status="closed"))
    )
    with pytest.raises(ChangeConflict):
        run(
            change(
                "k", acct["account"], c.SetConversationStatus(conversation_id=conv, status="open")
            )
        )


def test_a_stale_change_does_not_overwrite_a_newer_one(make_account):
    acct = make_account()
    conv = conversation(acct["inbox"], "a")
    newer = c.SetConversationOwner(conversation_id=conv, owner_id=acct["owner2"])
    older = c.SetConversationOwner(conversation_id=conv, owner_id=acct["owner"])
    run(change("newer", acct["account"], newer, seconds=50))
    late = run(change("older", acct["account"], older, seconds=40))
    # In its place in history, but overridden: the answer says so instead of "applied".
    assert late["outcome"] == "superseded" and late["replayed"] is True
    assert late["superseded"] == [
        {"entity": "conversation", "id": conv, "field": "owner_id", "by": "newer", "rule": "owner"}
    ]
    assert state([conv])["conversations"][0][2] == acct["owner2"]


def test_a_propagated_change_does_not_echo(make_account):
    acct = make_account()
    first, second, ticket = ticket_of_two(acct)
    result = run(
        change("close", acct["account"], c.SetTicketStatus(ticket_id=ticket, status="closed"), 30)
    )
    touched = [(e["entity"], e["field"], e["rule"]) for e in result["effects"]]
    assert touched.count(("ticket", "status", "status")) == 1
    assert ("ticket", "status", "S1") not in touched


def test_R1_through_the_store_moves_ticket_and_conversation_and_routes_to_helpdesk(make_account):
    acct = make_account(*HELPDESK_ACCOUNT)
    conv = conversation(acct["inbox"], "a")
    action = c.CreateTicket(conversation_id=conv)
    with reading() as session:
        assert pipeline.queue_for_action(session, action, get_settings()) == "helpdesk"
    ticket = new_ticket(acct, conv, "create")
    s = state([conv])
    assert s["conversations"][0][3] == "help_desk"
    assert s["tickets"][0][0] == ticket and s["tickets"][0][3] == "help_desk"


def test_R2_through_the_store_keeps_ticket_and_conversation_in_the_inbox(make_account):
    acct = make_account("professional", datetime(2024, 3, 31, 23, 59, tzinfo=UTC))
    conv = conversation(acct["inbox"], "a")
    with reading() as session:
        queue = pipeline.queue_for_action(
            session, c.CreateTicket(conversation_id=conv), get_settings()
        )
    assert queue == "inbox"
    new_ticket(acct, conv, "create")
    s = state([conv])
    assert s["conversations"][0][3] == "inbox" and s["tickets"][0][3] == "inbox"


def test_T1_at_most_one_ticket_per_conversation_even_with_two_create_changes(make_account):
    acct = make_account()
    conv = conversation(acct["inbox"], "a")
    first = new_ticket(acct, conv, "create-1")
    second = new_ticket(acct, conv, "create-2", seconds=20)
    assert first == second
    assert len(state([conv])["tickets"]) == 1


def test_another_accounts_objects_are_not_found_and_nothing_is_recorded(make_account):
    a, b = make_account(), make_account()
    conv = conversation(a["inbox"], "a")
    result = run(
        change(
            "intruder", b["account"], c.SetConversationStatus(conversation_id=conv, status="closed")
        )
    )
    assert result["outcome"] == "rejected" and result["code"].endswith(":404")
    assert count(Change, Change.id == "intruder") == 0
    assert state([conv])["conversations"][0][1] == "open"


def test_an_owner_of_another_account_is_refused(make_account):
    a, b = make_account(), make_account()
    conv = conversation(a["inbox"], "a")
    result = run(
        change("x", a["account"], c.SetConversationOwner(conversation_id=conv, owner_id=b["owner"]))
    )
    assert result["outcome"] == "rejected" and result["code"].endswith(":422")
    assert state([conv])["conversations"][0][2] is None


def _history(
    acct: dict[str, int], first: int, second: int, ticket: int, p: str
) -> list[dict[str, Any]]:
    """Ten changes on one ticket, each at its own time (the ticket itself exists at t=10)."""
    A = acct["account"]
    actions: list[tuple[float, c.Action]] = [
        (20, c.AssociateConversation(ticket_id=ticket, conversation_id=second)),
        (30, c.SetConversationOwner(conversation_id=first, owner_id=acct["owner"])),
        (40, c.SetTicketOwner(ticket_id=ticket, owner_id=acct["owner2"])),
        (50, c.SetTicketStatus(ticket_id=ticket, status="closed")),
        (60, c.SetConversationStatus(conversation_id=second, status="open")),
        (70, c.SetTicketStatus(ticket_id=ticket, status="waiting_on_us")),
        (80, c.SetConversationOwner(conversation_id=second, owner_id=acct["owner2"])),
        (90, c.TrashConversation(conversation_id=second)),
        (95, c.RestoreConversation(conversation_id=first)),
        (99, c.SetTicketStatus(ticket_id=ticket, status="closed")),
    ]
    return [change(f"{p}-{int(t)}", A, action, t) for t, action in actions]


def _relative(s: dict[str, Any], acct: dict[str, int], convs: dict[int, str], p: str) -> Any:
    """The state with this run's ids replaced by names, so that runs can be compared."""
    owner = {acct["owner"]: "ana", acct["owner2"]: "bruno", None: None}
    conv = {**convs, None: None}
    ticket = {tid: "ticket" for tid in {t[0] for t in s["tickets"]}} | {None: None}

    def cause(value: str | None) -> str | None:
        return None if value is None else value.removeprefix(p)

    return (
        [
            (conv[cv[0]], cv[1], owner[cv[2]], cv[3], ticket[cv[4]], cause(cv[5]))
            for cv in s["conversations"]
        ],
        [(ticket[t[0]], t[1], owner[t[2]], t[3], cause(t[4])) for t in s["tickets"]],
    )


def test_the_same_changes_in_shuffled_orders_reach_one_end_state(make_account):
    rng = random.Random(2026)
    end_states = []
    for run_no in range(6):
        acct = make_account(*HELPDESK_ACCOUNT)
        first, second = conversation(acct["inbox"], "a"), conversation(acct["inbox"], "b")
        p = f"run{run_no}"
        ticket = new_ticket(acct, first, f"{p}-create")
        envelopes = _history(acct, first, second, ticket, p)
        if run_no == 1:
            envelopes.reverse()
        elif run_no > 1:
            rng.shuffle(envelopes)
        for envelope in envelopes:
            run(envelope)
        for envelope in envelopes[:3]:  # and some delivered twice
            assert run(envelope)["duplicate"] is True
        names = {first: "first", second: "second"}
        end_states.append(_relative(state([first, second]), acct, names, p))
    in_order = end_states[0]
    # What applying them in order means, rule by rule (the reference the others must match):
    # the trash at 90 removed ticket and both conversations (D1+D2), the restore at 95 brought
    # all three back, the close at 99 closed both conversations (S1); owners: O1 at 80.
    assert in_order == (
        [
            ("first", "closed", "ana", "help_desk", "ticket", None),
            ("second", "closed", "bruno", "help_desk", "ticket", None),
        ],
        [("ticket", "closed", "bruno", "help_desk", None)],
    )
    for other in end_states[1:]:
        assert other == in_order


def test_two_threads_racing_on_one_ticket_converge(make_account):
    acct = make_account()
    first, second, ticket = ticket_of_two(acct, associated_at=15)
    owners = [acct["owner"], acct["owner2"]]
    statuses = ["closed", "waiting_on_us", "waiting_on_contact", "closed"]
    work: list[list[dict[str, Any]]] = [[], []]
    for i in range(40):
        t = 20 + i
        if i % 2:
            action: c.Action = c.SetConversationOwner(
                conversation_id=first, owner_id=owners[i % 4 // 2]
            )
        else:
            action = c.SetTicketStatus(ticket_id=ticket, status=statuses[i % 4])
        work[i % 2 if i < 20 else (i + 1) % 2].append(
            change(f"race-{i}", acct["account"], action, t)
        )
    # The same change raced by both threads as well: recorded once.
    shared = change(
        "race-shared",
        acct["account"],
        c.SetTicketOwner(ticket_id=ticket, owner_id=acct["owner"]),
        10_000,
    )
    for part in work:
        part.insert(len(part) // 2, shared)
    results: list[dict[str, Any]] = []

    def worker(envelopes: list[dict[str, Any]]) -> None:
        for envelope in envelopes:
            results.append(run(envelope))

    assert in_threads(worker, work) == []
    assert count(Change, Change.id.like("race-%")) == 41
    assert sum(1 for r in results if r["change_id"] == "race-shared" and not r["duplicate"]) == 1
    s = state([first, second])
    # In time order the last status change (i=38) was "waiting_on_contact" after a close at 36:
    # with two conversations S2 reopens none, so both stay closed. The last conversation owner
    # (i=39) is owners[1], but the ticket owner was set last by the shared change (t=10000).
    assert s["tickets"] == [(ticket, statuses[38 % 4], acct["owner"], "inbox", None)]
    assert [cv[1] for cv in s["conversations"]] == ["closed", "closed"]
    assert s["conversations"][0][2] == owners[39 % 4 // 2]


def test_D_a_restore_after_the_retention_period_is_refused(make_account):
    from datetime import timedelta

    from sqlalchemy import update

    from store.db import transaction
    from store.models import Conversation

    acct = make_account()
    conv = conversation(acct["inbox"], "a")
    run(change("trash", acct["account"], c.TrashConversation(conversation_id=conv), 10))
    days = get_settings().retention_days
    with transaction() as session:
        session.execute(
            update(Conversation)
            .where(Conversation.id == conv)
            .values(removed_at=datetime.now(UTC) - timedelta(days=days, minutes=1))
        )
    late = run(change("restore", acct["account"], c.RestoreConversation(conversation_id=conv), 20))
    assert late["outcome"] == "rejected" and late["code"] == "D:409"
    assert state([conv])["conversations"][0][5] == "trash"
