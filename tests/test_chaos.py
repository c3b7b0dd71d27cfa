"""The chaos run, short (bench/chaos.py; ``make chaos`` is the long one): its own PostgreSQL and
Redis, the ingress and two workers as real processes, a few thousand events sent up to three
times, and one fault of each kind (a worker, Redis, PostgreSQL and the ingress killed under the
traffic). Nothing acknowledged may be lost, nothing stored or applied twice, and every
conversation and ticket must be what docs/rules.md makes of the history the store recorded.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import chaos
from bench.chaosrules import Conv, World, apply
from bench.chaostraffic import make_plan


def test_the_same_seed_sends_the_same_events() -> None:
    assert make_plan(5, 1500).digest() == make_plan(5, 1500).digest()
    assert make_plan(5, 1500).digest() != make_plan(6, 1500).digest()
    plan = make_plan(5, 1500)
    assert plan.events >= 1500
    assert len(plan.sends) > plan.events  # duplicates are sent


def _world_with_ticket(*conversations: int) -> World:
    """Conversations 1.. of account 1; a ticket 10 made for the first, the others associated."""
    w = World({c: Conv(account=1) for c in conversations}, locations={1: "inbox"})
    first, *others = conversations
    apply(w, "t", "create_ticket", {"conversation_id": first, "ticket_id": 10, "location": "inbox"})
    for c in others:
        apply(w, f"a{c}", "associate_conversation", {"conversation_id": c, "ticket_id": 10})
    return w


def test_the_model_M1_reopens_and_a_closed_ticket_holding_only_it_waits_on_us() -> None:
    w = _world_with_ticket(1)
    apply(w, "close", "set_ticket_status", {"ticket_id": 10, "status": "closed"})
    apply(w, "message:1", "message", {"conversation_id": 1})
    assert (w.conversations[1].status, w.tickets[10].status) == ("open", "waiting_on_us")


def test_the_model_M1_leaves_a_ticket_with_several_conversations_closed() -> None:
    w = _world_with_ticket(1, 2)
    apply(w, "close", "set_ticket_status", {"ticket_id": 10, "status": "closed"})  # S1
    apply(w, "message:1", "message", {"conversation_id": 2})
    assert [w.conversations[c].status for c in (1, 2)] == ["closed", "open"]
    assert w.tickets[10].status == "closed"


def test_the_model_M1_a_message_on_an_open_conversation_changes_nothing() -> None:
    """docs/rules.md M1 is about a message "stored on a closed conversation": an agent reopened
    the only conversation of a closed ticket (S3: only it), and a message leaves the ticket
    closed."""
    w = _world_with_ticket(1)
    apply(w, "close", "set_ticket_status", {"ticket_id": 10, "status": "closed"})  # S1
    apply(w, "reopen", "set_conversation_status", {"conversation_id": 1, "status": "open"})
    apply(w, "message:1", "message", {"conversation_id": 1})
    assert (w.conversations[1].status, w.tickets[10].status) == ("open", "closed")


def test_the_model_D1_D2_trash_removes_the_case_and_restore_brings_back_that_cascade() -> None:
    w = _world_with_ticket(1, 2)
    apply(w, "trash", "trash_conversation", {"conversation_id": 2})
    assert {w.conversations[1].removed_by, w.conversations[2].removed_by} == {"trash"}
    assert w.tickets[10].removed_by == "trash"
    apply(w, "back", "restore_ticket", {"ticket_id": 10})
    assert [w.conversations[1].removed_by, w.tickets[10].removed_by] == [None, None]


@pytest.mark.timeout(600)  # bounded, not timed: the run takes a minute or two on two cores
def test_nothing_acknowledged_is_lost_doubled_or_off_the_rules_under_kills(
    tmp_path: Path,
) -> None:
    config = chaos.Config(
        seed=14,
        events=2500,
        kill_every_s=(10.0, 20.0),
        drain_timeout_s=300.0,
        report=tmp_path / "chaos.md",
    )
    result = chaos.run(config)
    report = (tmp_path / "chaos.md").read_text()
    found = result.findings

    assert {"worker kill -9", *chaos.BIG_FAULTS} <= {f.kind for f in result.faults}, report
    assert result.drained, report
    assert found.lost == [], report
    assert found.duplicated == [], report
    assert found.mismatches == [], report
    assert found.threads > 0 and found.threads_split == [], report
    assert found.stuck == [], report
    assert not (result.tally.client_errors or result.tally.gave_up or result.tally.refused), report
    assert result.ok
