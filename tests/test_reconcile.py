"""Reconciliation (handlers/reconcile.py): drift made directly in the store, bypassing the rules,
is found and repaired once, each repair a recorded change with its cause; a dry run changes
nothing; two reconcilers repair once; the periodic rounds run it once per
INBOXSYNC_RECONCILE_INTERVAL_S under the lease ``reconcile``; the API and the CLI run it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from typer.testing import CliRunner

from api.app import create_app
from cli.main import app as cli
from handlers import reconcile
from schemas import changes as c
from settings import Settings, get_settings
from store import lease
from store.db import reading, transaction
from store.models import Change, Conversation, Delivery, Effect, Lease, PendingChange, Ticket
from tests.apihelp import ADMIN
from tests.storehelp import change, conversation, count, new_ticket, run, state, ticket_of_two
from workers.periodic import RECONCILE_LEASE, Scheduler


def sql(model: Any, row_id: int, **values: Any) -> None:
    """A write that bypasses the rules: the drift under test."""
    with transaction() as session:
        session.execute(update(model).where(model.id == row_id).values(**values))


def repairs() -> list[Change]:
    with reading() as session:
        return list(
            session.scalars(select(Change).where(Change.kind == "repair").order_by(Change.id))
        )


def drifted(acct: dict[str, int]) -> tuple[dict[str, int], list[int]]:
    """One case of each drift, one case of a legitimate state that looks like one, and a
    healthy case; their ids."""
    a1, b1, t1 = ticket_of_two(acct)  # S1: closed, then a1 reopened behind the rules' back
    account = acct["account"]
    run(change("close-t1", account, c.SetTicketStatus(ticket_id=t1, status="closed"), 30))
    # b1 reopened by an agent after the close (S3): legitimate, not drift.
    run(
        change("reopen-b1", account, c.SetConversationStatus(conversation_id=b1, status="open"), 40)
    )
    sql(Conversation, a1, status="open")

    a2 = conversation(acct["inbox"], "d2")  # D2: ticket deleted, a2 brought back by hand
    t2 = new_ticket(acct, a2, "create-t2")
    run(change("delete-t2", account, c.DeleteTicket(ticket_id=t2), 30))
    sql(Conversation, a2, removed_by=None, removed_at=None)

    a3 = conversation(acct["inbox"], "d1")  # D1: a3 trashed by hand, its ticket left alive
    t3 = new_ticket(acct, a3, "create-t3")
    sql(Conversation, a3, removed_by="manual-trash")

    a4 = conversation(acct["inbox"], "r")  # R2: a4 moved to the help desk by hand
    t4 = new_ticket(acct, a4, "create-t4")
    sql(Conversation, a4, location="help_desk")

    a5 = conversation(acct["inbox"], "ok")  # healthy
    t5 = new_ticket(acct, a5, "create-t5")
    assert t4 and t5
    ids = {"a1": a1, "b1": b1, "t1": t1, "a2": a2, "t2": t2, "a3": a3, "t3": t3}
    return ids, [a1, b1, a2, a3, a4, a5]


def test_drift_is_repaired_once_with_its_cause_and_a_dry_run_changes_nothing(make_account):
    acct = make_account()
    ids, convs = drifted(acct)
    before = state(convs)
    changes_before = count(Change)

    dry = reconcile.run(dry_run=True)
    assert dry.dry_run and dry.counts == {"S1": 1, "D2": 1, "D1": 1, "R2": 1}
    assert {r.outcome for r in dry.repairs} == {"found"}
    assert state(convs) == before and count(Change) == changes_before  # nothing changed

    done = reconcile.run()
    assert done.counts == dry.counts
    assert {r.outcome for r in done.repairs} == {"repaired"}
    # The dry run named the very changes the real run applied.
    assert sorted(r.change_id for r in done.repairs) == sorted(r.change_id for r in dry.repairs)
    by_rule = {r.rule: r for r in done.repairs}
    assert by_rule["S1"].conversation_ids == [ids["a1"]]  # b1 was reopened by a rule: kept

    after_state = state(convs)
    after = {cv[0]: cv for cv in after_state["conversations"]}
    assert after[ids["a1"]][1] == "closed" and after[ids["b1"]][1] == "open"
    with reading() as session:
        t2_cause = session.scalar(select(Ticket.removed_by).where(Ticket.id == ids["t2"]))
        t3_cause = session.scalar(select(Ticket.removed_by).where(Ticket.id == ids["t3"]))
    assert t2_cause == "delete-t2" and after[ids["a2"]][5] == "delete-t2"  # D2: its cascade
    assert t3_cause == "manual-trash"  # D1: the ticket goes with the trash's cause
    assert all(cv[3] == "inbox" for cv in after.values())  # R2

    # Each repair is a recorded change: its cause in the payload, its effects tagged.
    recorded = repairs()
    assert len(recorded) == 4
    for row in recorded:
        assert row.id.startswith(f"reconcile:{row.payload['rule']}:ticket:{row.ticket_id}:")
        assert row.outcome == "applied" and row.payload["cause"]
    with reading() as session:
        rules = set(
            session.scalars(select(Effect.rule).where(Effect.change_id.like("reconcile:%")))
        )
    assert rules == {"S1", "D2", "D1", "R2"}

    # Once: a second run finds nothing and records nothing.
    again = reconcile.run()
    assert again.repairs == [] and again.counts == {}
    assert len(repairs()) == 4

    # A late change replays the case's history: the repairs hold there too (D1 records the
    # trash it found, which history did not have).
    late = c.SetTicketOwner(ticket_id=ids["t3"], owner_id=acct["owner"])
    assert run(change("late", acct["account"], late, 50))["replayed"]
    replayed = state(convs)
    assert replayed["conversations"] == after_state["conversations"]
    assert [t[4] for t in replayed["tickets"]] == [t[4] for t in after_state["tickets"]]
    assert reconcile.run().repairs == []
    # The D1 repair kept the case one cascade: restoring the conversation restores it all.
    restore = c.RestoreConversation(conversation_id=ids["a3"])
    envelope = c.ChangeEnvelope(
        id="restore-a3", account_id=acct["account"], occurred_at=datetime.now(UTC), action=restore
    )
    assert run(envelope.model_dump(mode="json"))["outcome"] == "applied"
    assert state([ids["a3"]])["conversations"][0][5] is None
    assert state([ids["a3"]])["tickets"][0][4] is None


def test_two_reconcilers_at_once_repair_once(make_account):
    from tests.storehelp import in_threads

    acct = make_account()
    drifted(acct)
    reports: list[Any] = []
    errors = in_threads(lambda _: reports.append(reconcile.run()), [1, 2])
    assert errors == []
    applied = [r for report in reports for r in report.repairs if r.outcome == "repaired"]
    assert len(applied) == 4 and len(repairs()) == 4
    assert reconcile.run().repairs == []


def test_a_later_drift_of_a_repaired_case_is_a_new_repair(make_account):
    acct = make_account()
    conv = conversation(acct["inbox"], "again")
    ticket = new_ticket(acct, conv, "create")
    run(change("close", acct["account"], c.SetTicketStatus(ticket_id=ticket, status="closed"), 30))
    sql(Conversation, conv, status="open")
    first = reconcile.run().repairs
    sql(Conversation, conv, status="open")
    second = reconcile.run().repairs
    assert [r.outcome for r in first + second] == ["repaired", "repaired"]
    assert first[0].change_id != second[0].change_id  # the ticket's clock moved with the repair
    assert len(repairs()) == 2


def test_stuck_work_is_counted_and_what_the_sweep_would_not_see_published(
    make_account, monkeypatch
):
    from workers import publish

    published: list[tuple[str, Any]] = []
    monkeypatch.setattr(publish, "ingest", lambda ids: published.append(("ingest", ids)))
    monkeypatch.setattr(publish, "change", lambda env, queue: published.append(("change", queue)))
    monkeypatch.setattr(
        publish, "reply", lambda rid, countdown_s=None: published.append(("reply", rid))
    )
    inbox = make_account()["inbox"]
    now = datetime.now(UTC)
    rows = {"overdue": now - timedelta(hours=1), "ahead": now + timedelta(days=1)}
    with transaction() as session:
        for name, when in rows.items():
            session.add(
                Delivery(
                    inbox_id=inbox,
                    provider="generic",
                    received_at=now,
                    enqueued_at=when,
                    payload={"n": name},
                )
            )
            session.add(
                PendingChange(
                    id=f"pending-{name}", account_id=1, queue="inbox", envelope={}, enqueued_at=when
                )
            )
    dry = reconcile.run(dry_run=True)
    assert (dry.deliveries.overdue, dry.deliveries.unswept, dry.deliveries.republished) == (1, 1, 0)
    assert (dry.changes.overdue, dry.changes.unswept) == (1, 1)
    assert published == []
    done = reconcile.run()
    assert done.deliveries.republished == 1 and done.changes.republished == 1
    assert sorted(kind for kind, _ in published) == ["change", "ingest"]
    with reading() as session:
        assert all(
            e <= datetime.now(UTC) for e in session.scalars(select(Delivery.enqueued_at))
        )  # now the sweep sees it too
    assert reconcile.run().deliveries.unswept == 0


# ---- periodic, API, CLI ----------------------------------------------------------------------


def one_drift(acct: dict[str, int], thread: str) -> int:
    conv = conversation(acct["inbox"], thread)
    new_ticket(acct, conv, f"create-{thread}")
    sql(Conversation, conv, location="help_desk")
    return conv


def test_the_interval_setting_reaches_the_periodic_rounds(make_account, monkeypatch):
    monkeypatch.setenv("INBOXSYNC_RECONCILE_INTERVAL_S", "3600")
    settings = Settings()
    assert settings.reconcile_interval_s == 3600
    acct = make_account()
    first, second = Scheduler(settings, holder="one"), Scheduler(settings, holder="two")
    one_drift(acct, "p1")
    assert first.tick() and len(repairs()) == 1  # its turn: reconciled
    expires = lease.expires_at(RECONCILE_LEASE)
    assert expires is not None
    assert timedelta(seconds=3590) < expires - datetime.now(UTC) <= timedelta(seconds=3600)
    one_drift(acct, "p2")
    second.tick()
    first.tick()
    assert len(repairs()) == 1  # neither process: the interval is not over
    with transaction() as session:  # ... until it is
        session.execute(
            update(Lease)
            .where(Lease.name == RECONCILE_LEASE)
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    assert second.reconcile_turn() and len(repairs()) == 2
    assert lease.holder_of(RECONCILE_LEASE) == ("two", 2)

    monkeypatch.setenv("INBOXSYNC_RECONCILE_INTERVAL_S", "0")
    off = Scheduler(Settings(), holder="three")
    assert off.settings.reconcile_interval_s == 0 and not off.reconcile_turn()


@pytest.fixture(scope="module")
def app_client(migrated: None) -> Iterator[TestClient]:
    with TestClient(create_app(get_settings())) as made:
        yield made


@pytest.fixture
def client(db: None, app_client: TestClient) -> TestClient:
    return app_client


def test_post_reconcile_admin_only_dry_run_then_repair(make_account, client):
    acct = make_account()
    conv = one_drift(acct, "api")
    token = client.post(f"/accounts/{acct['account']}/tokens", json={}, headers=ADMIN).json()
    refused = client.post("/reconcile", headers={"Authorization": f"Bearer {token['token']}"})
    assert refused.status_code == 403
    dry = client.post("/reconcile?dry_run=true", headers=ADMIN)
    assert dry.status_code == 200, dry.text
    assert dry.json()["counts"] == {"R2": 1} and dry.json()["repairs"][0]["outcome"] == "found"
    assert state([conv])["conversations"][0][3] == "help_desk"
    done = client.post("/reconcile", headers=ADMIN).json()
    assert done["repairs"][0]["outcome"] == "repaired"
    assert state([conv])["conversations"][0][3] == "inbox"
    assert client.post("/reconcile", headers=ADMIN).json()["repairs"] == []


def test_cli_reconcile_dry_run_json_and_lines(make_account):
    acct = make_account()
    conv = one_drift(acct, "cli")
    dry = CliRunner().invoke(cli, ["reconcile", "--dry-run", "--json"])
    assert dry.exit_code == 0, dry.output
    report = json.loads(dry.stdout)
    assert report["dry_run"] and report["counts"] == {"R2": 1}
    assert state([conv])["conversations"][0][3] == "help_desk"
    done = CliRunner().invoke(cli, ["reconcile"])
    assert done.exit_code == 0, done.output
    assert "R2 ticket" in done.stdout and "repaired" in done.stdout
    assert state([conv])["conversations"][0][3] == "inbox"
    quiet = CliRunner().invoke(cli, ["reconcile"])
    assert "drift: none" in quiet.stdout
