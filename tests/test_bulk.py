"""Bulk jobs (handlers/bulk.py): the promises, on the store the suite runs on. Chunks are run by
hand here (tests/bulkhelp.py ``Published``), in the order a worker would take them; the real
worker processes are in tests/test_bulk_workers.py."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from api.app import create_app
from handlers import bulk, bulk_run, pipeline, rules
from schemas import changes as c
from schemas.bulk import BulkJobIn
from settings import Settings, get_settings
from store.db import reading, transaction
from store.models import BulkChunk, BulkItem, BulkJob, Change, Conversation, Ticket
from tests.apihelp import ADMIN, setup_account
from tests.bulkhelp import Published, changes_per_target, item_states, seed_tickets
from tests.storehelp import conversation, new_account

CAUSE = {"via": "test"}


@pytest.fixture
def client(db: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[TestClient, Published]]:
    from api import bulk as api_bulk

    out = Published()
    monkeypatch.setattr(api_bulk.publish, "bulk_chunk", out)
    with TestClient(create_app(get_settings().model_copy(update={"scheduler": False}))) as made:
        yield made, out


def tuned(**values: float) -> Settings:
    return get_settings().model_copy(update={f"bulk_{k}": v for k, v in values.items()})


def make_job(acct: dict[str, int], settings: Settings, out: Published, **spec: object):  # noqa: ANN201
    return bulk.create(BulkJobIn.model_validate(spec), acct["account"], CAUSE, settings, out)


def now_change(change_id: str, account: int, action: c.Action) -> dict[str, Any]:
    """Apply a change happening now (after the seeded tickets' clocks)."""
    env = c.ChangeEnvelope(
        id=change_id, account_id=account, occurred_at=datetime.now(UTC), action=action
    )
    result = pipeline.run_change(env.model_dump(mode="json"))
    assert result["outcome"] == "applied", result
    return result


def ticket_rows(ids: list[int]) -> dict[int, tuple[str, str, str | None]]:
    with reading() as session:
        rows = session.execute(
            select(Ticket.id, Ticket.status, Ticket.location, Ticket.removed_by).where(
                Ticket.id.in_(ids)
            )
        )
        return {r.id: (r.status, r.location, r.removed_by) for r in rows}


def conversation_rows(ticket_ids: list[int]) -> list[tuple[str, str]]:
    with reading() as session:
        rows = session.execute(
            select(Conversation.status, Conversation.location).where(
                Conversation.ticket_id.in_(ticket_ids)
            )
        )
        return [(r.status, r.location) for r in rows]


def test_the_target_set_is_frozen_when_the_job_is_made(db: None) -> None:
    acct = new_account()
    before = seed_tickets(acct, 5)
    out = Published()
    job = make_job(acct, tuned(chunk_size=2), out, action="close_tickets", filter={})
    later = seed_tickets(acct, 1)  # after the job started: not one of its targets
    out.drain()
    found = bulk.get(job.id, acct["account"])
    assert (found.state, found.total, found.done, found.failed) == ("completed", 5, 5, 0)
    assert {v[0] for v in ticket_rows(before).values()} == {"closed"}
    assert conversation_rows(before) == [("closed", "inbox")] * 5  # S1 through each change
    assert ticket_rows(later)[later[0]][0] == "new"


def test_a_chunk_run_again_changes_nothing_twice(db: None) -> None:
    acct = new_account()
    ids = seed_tickets(acct, 4)
    out = Published()
    job = make_job(acct, tuned(chunk_size=4), out, action="close_tickets", ids=ids)
    out.drain()
    # As if the chunk's own bookkeeping had not been seen: its items pending, it queued again.
    with transaction() as session:
        session.execute(update(BulkItem).where(BulkItem.job_id == job.id).values(state="pending"))
        session.execute(update(BulkChunk).where(BulkChunk.job_id == job.id).values(state="queued"))
        session.execute(update(BulkJob).where(BulkJob.id == job.id).values(state="running", done=0))
    bulk_run.run_chunk(job.id, 0, get_settings(), out)
    bulk_run.run_chunk(job.id, 0, get_settings(), out)  # and a copy
    assert changes_per_target(job.id) == dict.fromkeys(ids, 1)
    assert {s for s, _ in item_states(job.id).values()} == {"done"}
    assert bulk.get(job.id, None).model_dump(include={"state", "done"}) == {
        "state": "completed",
        "done": 4,
    }


def test_a_refused_item_fails_alone_with_its_reason_and_retry_takes_only_it(db: None) -> None:
    acct, other = new_account(), new_account()
    ids = seed_tickets(acct, 4)
    foreign = seed_tickets(other, 1)[0]
    now_change("del", acct["account"], c.DeleteTicket(ticket_id=ids[1]))
    out = Published()
    job = make_job(acct, tuned(chunk_size=10), out, action="close_tickets", ids=[*ids, foreign])
    out.drain()
    found = bulk.get(job.id, acct["account"])
    assert (found.state, found.done, found.failed) == ("completed_with_failures", 3, 2)
    reasons = {f.target_id: f.reason for f in found.failures}
    assert set(reasons) == {ids[1], foreign}
    assert "deleted" in reasons[ids[1]] and "not found" in reasons[foreign]
    assert ticket_rows(ids)[ids[1]][0] == "new"
    # Restored, the deleted one goes through on retry; the foreign one fails again; the done
    # ones are not applied again.
    now_change("restore", acct["account"], c.RestoreTicket(ticket_id=ids[1]))
    retried = bulk.retry_failed(job.id, acct["account"], get_settings(), out)
    assert (retried.state, retried.generation, retried.failed) == ("running", 1, 0)
    out.drain()
    found = bulk.get(job.id, acct["account"])
    assert (found.state, found.done, found.failed) == ("completed_with_failures", 4, 1)
    assert [f.target_id for f in found.failures] == [foreign]
    assert changes_per_target(job.id) == {i: 1 for i in ids if i != ids[1]} | {ids[1]: 2}
    assert {v[0] for v in ticket_rows(ids).values()} == {"closed"}


def test_pause_stops_after_the_chunk_resume_goes_on_cancel_keeps_what_is_done(db: None) -> None:
    acct = new_account()
    ids = seed_tickets(acct, 6)
    settings = tuned(chunk_size=2, parallel_chunks=1)
    out = Published()
    job = make_job(acct, settings, out, action="close_tickets", ids=ids)
    assert out.chunks == [(job.id, 0)]
    out.run_next(settings)
    bulk.pause(job.id, acct["account"])
    out.drain(settings)  # the chunk published before the pause: given back, not run
    assert bulk.get(job.id, None).model_dump(include={"state", "done"}) == {
        "state": "paused",
        "done": 2,
    }
    resumed = bulk.resume(job.id, acct["account"], settings, out)
    assert resumed.state == "running" and out.chunks == [(job.id, 1)]
    out.run_next(settings)
    cancelled = bulk.cancel(job.id, acct["account"])
    out.drain(settings)
    assert (cancelled.state, cancelled.done, cancelled.pending) == ("cancelled", 4, 2)
    assert bulk.get(job.id, None).done == 4
    statuses = [ticket_rows(ids)[i][0] for i in ids]
    assert statuses == ["closed"] * 4 + ["new"] * 2
    with pytest.raises(bulk.Refused):
        bulk.resume(job.id, acct["account"], settings, out)


def test_reroute_after_a_tier_change_moves_existing_tickets_and_conversations(
    client: tuple[TestClient, Published],
) -> None:
    http, out = client
    acct = setup_account(http, tier="free", created_at="2025-01-01T00:00:00Z")
    account = acct["account"]["id"]
    ids = seed_tickets({"account": account, "inbox": acct["inbox"]}, 3)
    patched = http.patch(f"/accounts/{account}", json={"tier": "enterprise"}, headers=ADMIN)
    assert patched.status_code == 200, patched.text
    assert {v[1] for v in ticket_rows(ids).values()} == {"inbox"}  # a tier change moves none
    # A ticket created after the change already routes by the new tier (R1).
    conv = conversation(acct["inbox"], "after-the-change")
    made_after = now_change("create", account, c.CreateTicket(conversation_id=conv))
    assert made_after["effects"][0]["value"] == "help_desk"
    made = http.post(
        "/bulk-jobs", json={"action": "reroute_tickets", "filter": {}}, headers=acct["auth"]
    )
    assert made.status_code == 201, made.text
    out.drain()
    job = http.get(f"/bulk-jobs/{made.json()['id']}", headers=acct["auth"]).json()
    assert (job["state"], job["total"], job["done"]) == ("completed", 4, 4)
    assert {v[1] for v in ticket_rows(ids).values()} == {"help_desk"}
    assert conversation_rows(ids) == [("open", "help_desk")] * 3


def test_reroute_rule_moves_the_ticket_and_every_conversation() -> None:
    case = rules.Case(
        conversations={
            1: rules.ConversationState(id=1, ticket_id=9),
            2: rules.ConversationState(id=2, ticket_id=9, removed_by="x"),
        },
        tickets={9: rules.TicketState(id=9)},
    )
    effects = rules.apply(case, "r", c.RerouteTicket(ticket_id=9, location="help_desk"))
    assert {(e.entity, e.entity_id, e.value, e.rule) for e in effects} == {
        ("ticket", 9, "help_desk", "R1"),
        ("conversation", 1, "help_desk", "R1"),
        ("conversation", 2, "help_desk", "R1"),
    }
    assert rules.apply(case, "r2", c.RerouteTicket(ticket_id=9, location="help_desk")) == []


def test_a_job_is_its_accounts_only(client: tuple[TestClient, Published]) -> None:
    http, out = client
    a, b = setup_account(http), setup_account(http)
    ids = seed_tickets({"account": a["account"]["id"], "inbox": a["inbox"]}, 2)
    made = http.post("/bulk-jobs", json={"action": "close_tickets", "ids": ids}, headers=a["auth"])
    assert made.status_code == 201, made.text
    job = made.json()["id"]
    for path in ("", "/pause", "/resume", "/cancel", "/retry-failed"):
        call = http.get if not path else http.post
        answer = call(f"/bulk-jobs/{job}{path}", headers=b["auth"])
        assert answer.status_code == 404 and answer.json()["error"] == "not_found", path
    assert http.get("/bulk-jobs", headers=b["auth"]).json()["items"] == []
    assert [j["id"] for j in http.get("/bulk-jobs", headers=ADMIN).json()["items"]] == [job]
    # B's job on A's tickets: each item is "not found", nothing of A's changes.
    theirs = http.post(
        "/bulk-jobs", json={"action": "close_tickets", "ids": ids}, headers=b["auth"]
    ).json()
    out.drain()
    seen = http.get(f"/bulk-jobs/{theirs['id']}", headers=b["auth"]).json()
    assert (seen["state"], seen["failed"]) == ("completed_with_failures", 2)
    assert {v[0] for v in ticket_rows(ids).values()} == {"closed"}  # by A's job, not B's
    conflict = http.post(f"/bulk-jobs/{job}/resume", headers=a["auth"])
    assert conflict.status_code == 409 and conflict.json()["error"] == "job_state"


@pytest.fixture
def bulk_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Published]:
    """The four bulk settings from the environment, as a deployment sets them; chunks kept."""
    from workers import publish

    for name, value in {
        "INBOXSYNC_BULK_CHUNK_SIZE": "3",
        "INBOXSYNC_BULK_PARALLEL_CHUNKS": "2",
        "INBOXSYNC_BULK_CHUNK_LEASE_S": "77",
        "INBOXSYNC_BULK_RATE_PER_S": "10",
    }.items():
        monkeypatch.setenv(name, value)
    out = Published()
    monkeypatch.setattr(publish, "bulk_chunk", out)
    get_settings.cache_clear()
    yield out
    get_settings.cache_clear()


def test_bulk_settings_reach_the_code(db: None, bulk_env: Published) -> None:
    """INBOXSYNC_BULK_CHUNK_SIZE: items per chunk; _PARALLEL_CHUNKS: chunks published at once;
    _CHUNK_LEASE_S: how long a published chunk is held; _RATE_PER_S: how long after a chunk
    the next one starts. Through the CLI and the task's entry, which read the environment."""
    from typer.testing import CliRunner

    from cli.main import app as cli

    acct = new_account()
    ids = ",".join(str(i) for i in seed_tickets(acct, 7))
    started = datetime.now(UTC)
    made = CliRunner().invoke(
        cli,
        ["bulk", "create", "--account", str(acct["account"]), "--action", "close_tickets",
         "--ids", ids, "--no-follow"],
    )  # fmt: skip
    assert made.exit_code == 0, made.output
    job = int(made.output.split()[2].rstrip(":"))
    assert bulk_env.chunks == [(job, 0), (job, 1)]
    with reading() as session:
        chunks = session.execute(select(BulkChunk.chunk, BulkChunk.lease_until)).all()
    assert sorted(ch.chunk for ch in chunks) == [0, 1, 2]
    leased = [ch.lease_until for ch in chunks if ch.lease_until is not None]
    assert len(leased) == 2
    assert all(76 <= (at - started).total_seconds() <= 90 for at in leased)
    bulk_env.run_next()  # with get_settings(), as the task runs it
    # 3 items, 2 chains, 10 items/s: each chain's chunk of 3 takes at least 0.6 s; the next
    # chunk is published to start after what is left of that.
    assert bulk_env.chunks[-1] == (job, 2) and 0 < bulk_env.delays[-1] <= 0.6


def test_a_lost_chunk_is_published_again_by_the_sweep(db: None) -> None:
    acct = new_account()
    ids = seed_tickets(acct, 4)
    settings = tuned(chunk_size=2, parallel_chunks=1)
    lost = Published()
    job = make_job(acct, settings, lost, action="close_tickets", ids=ids)
    assert bulk.sweep(settings, Published()) == 0  # held: its lease has not run out
    with transaction() as session:
        session.execute(update(BulkChunk).values(lease_until=datetime(2020, 1, 1, tzinfo=UTC)))
    again = Published()
    assert bulk.sweep(settings, again) == 1
    # Published a second time: it is held twice as long before the next (journal-like backoff).
    with reading() as session:
        lease_until, published = session.execute(
            select(BulkChunk.lease_until, BulkChunk.published).where(
                BulkChunk.job_id == job.id, BulkChunk.chunk == again.chunks[0][1]
            )
        ).one()
    assert published == 2
    left = (lease_until - datetime.now(UTC)).total_seconds()
    assert 1.5 * settings.bulk_chunk_lease_s < left <= 2 * settings.bulk_chunk_lease_s
    again.drain(settings)
    assert bulk.get(job.id, None).state == "completed"


def test_cli_makes_a_job_and_follows_it_in_plain_lines(
    db: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from cli.main import app as cli
    from workers import publish

    out = Published()
    monkeypatch.setattr(publish, "bulk_chunk", out)
    acct = new_account()
    ids = ",".join(str(i) for i in seed_tickets(acct, 3))
    account = str(acct["account"])
    made = CliRunner().invoke(
        cli,
        ["bulk", "create", "--account", account, "--action", "close_tickets", "--ids", ids,
         "--no-follow"],
    )  # fmt: skip
    assert made.exit_code == 0, made.output
    job = made.output.split()[2].rstrip(":")
    out.drain()
    shown = CliRunner().invoke(cli, ["bulk", "show", job, "--follow"])  # not a terminal: lines
    assert shown.exit_code == 0, shown.output
    assert "completed, 3 done, 0 failed, 0 pending of 3" in shown.output
    assert CliRunner().invoke(cli, ["bulk", "pause", job]).exit_code == 2  # not running
    wrong = ["bulk", "create", "--account", account, "--action", "close_tickets"]
    assert CliRunner().invoke(cli, [*wrong, "--status", "open"]).exit_code == 2


@pytest.mark.parametrize(
    "kind", ["close_tickets", "reroute_tickets", "trash_conversations", "set_conversation_owner"]
)
def test_the_batch_does_what_one_change_at_a_time_does(db: None, kind: str) -> None:
    """handlers/apply_batch.py against apply_change, on two like sets of cases (one deleted
    ticket in each): the same outcomes, effects, recorded changes and end states."""
    from handlers import apply, apply_batch

    acct = new_account(tier="enterprise", created_at=datetime(2025, 1, 1, tzinfo=UTC))
    spec = {"action": kind, "owner_id": acct["owner"], "status": "waiting_on_us"}
    groups = [seed_tickets(acct, 3), seed_tickets(acct, 3)]
    for n, ids in enumerate(groups):
        now_change(f"del-{n}", acct["account"], c.DeleteTicket(ticket_id=ids[1]))
    at = datetime.now(UTC)

    def envs(n: int) -> list[c.ChangeEnvelope]:
        targets = groups[n]
        if kind.endswith("conversations") or kind == "set_conversation_owner":
            with reading() as session:
                targets = list(
                    session.scalars(
                        select(Conversation.id)
                        .where(Conversation.ticket_id.in_(groups[n]))
                        .order_by(Conversation.ticket_id)
                    )
                )
        return [
            c.ChangeEnvelope(
                id=f"{n}:{i}",
                account_id=acct["account"],
                occurred_at=at,
                action=bulk_run.action_for(spec, t),
            )
            for i, t in enumerate(targets)
        ]

    with transaction() as session:
        batched = apply_batch.apply_many(session, envs(0), get_settings())
    assert batched.left == []
    with transaction() as session:
        single = {e.id: apply.apply_change(session, e, get_settings()) for e in envs(1)}

    def seen(result: c.ChangeResult) -> tuple[object, ...]:
        effects = [(e["entity"], e["field"], e["rule"]) for e in result.effects]
        return (result.outcome, result.code, result.error is None, effects)

    assert [seen(batched.results[f"0:{i}"]) for i in range(3)] == [
        seen(single[f"1:{i}"]) for i in range(3)
    ]
    with reading() as session:
        recorded = {
            n: sorted(
                (ch.id[2:], ch.kind, ch.outcome, ch.occurred_at, ch.ticket_id in groups[0])
                for ch in session.scalars(select(Change).where(Change.id.like(f"{n}:%")))
            )
            for n in "01"
        }
    assert [r[:4] for r in recorded["0"]] == [r[:4] for r in recorded["1"]]

    def states(ids: list[int]) -> list[tuple[object, ...]]:
        rows = ticket_rows(ids)
        return [(rows[i][0], rows[i][1], rows[i][2] is not None) for i in ids]

    assert states(groups[0]) == states(groups[1])
    assert sorted(conversation_rows(groups[0])) == sorted(conversation_rows(groups[1]))
