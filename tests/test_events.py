"""Outbound events, in one process: the outbox written with its change, signed deliveries to a
real loopback receiver that verifies them with ``standardwebhooks``, order under failure,
auto-disable and re-enable, replay, rotation, tenancy and the SSRF guard. ``pump`` is one
periodic round and the tasks it publishes; tests/test_event_workers.py runs real workers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from api.app import create_app
from handlers import apply
from handlers.outbound import event_delivery
from schemas import changes as c
from schemas.events import EVENT_TYPES
from settings import get_settings
from store.db import reading, transaction
from store.models import EventAttempt, EventDelivery, OutboundEvent, Subscriber
from tests.apihelp import ADMIN, eventually, setup_account
from tests.fake_receiver import Receiver, receiver
from tests.storehelp import at, change, conversation, count, run

ALL = list(EVENT_TYPES)


@pytest.fixture
def client(db: None) -> Iterator[TestClient]:
    # No periodic round in the background: the tests pump by hand.
    with TestClient(create_app(get_settings().model_copy(update={"scheduler": False}))) as c:
        yield c


@pytest.fixture
def rx() -> Iterator[Receiver]:
    with receiver() as r:
        yield r


@pytest.fixture
def setting(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``setting(NAME, value)``: an environment variable the settings object reads from now."""

    def put(name: str, value: str) -> None:
        monkeypatch.setenv(name, value)
        get_settings.cache_clear()

    yield put
    monkeypatch.undo()
    get_settings.cache_clear()


def subscribe(
    client: TestClient, acct: dict[str, Any], rx: Receiver, types: list[str] | None = None
) -> dict[str, Any]:
    made = client.post(
        "/subscribers", json={"url": rx.url + "/hooks", "types": types or ALL}, headers=acct["auth"]
    )
    assert made.status_code == 201, made.text
    rx.secrets = [made.json()["secret"]]
    return made.json()


def pump() -> None:
    """One periodic round's event work and the tasks it would publish, run here."""
    event_delivery.fan_out()
    for subscriber_id in event_delivery.due():
        event_delivery.send(subscriber_id)


def pump_until(check: Any, timeout: float = 20.0) -> Any:
    def once() -> Any:
        pump()
        return check()

    return eventually(once, timeout=timeout)


def types_written() -> list[str]:
    with reading() as session:
        return list(session.scalars(select(OutboundEvent.type).order_by(OutboundEvent.id)))


def close(conv: int, acct: dict[str, Any], change_id: str, status: str = "closed") -> None:
    action = c.SetConversationStatus(conversation_id=conv, status=status)  # type: ignore[arg-type]
    assert run(change(change_id, acct["account"]["id"], action))["outcome"] == "applied"


def test_an_account_without_subscribers_gets_no_outbox_rows(client: TestClient):
    acct = setup_account(client)
    conversation(acct["inbox"], "t1")
    assert count(OutboundEvent) == 0


def test_ingest_writes_conversation_created_then_message_received(client, rx):
    acct = setup_account(client)
    subscribe(client, acct, rx)
    conv = conversation(acct["inbox"], "t1")
    assert types_written() == ["conversation.created", "message.received"]
    pump_until(lambda: len(rx.accepted) == 2)
    created, received = rx.accepted
    assert created.body["data"] == {"conversation_id": conv, "inbox_id": acct["inbox"]}
    assert received.body["data"]["conversation_id"] == conv
    assert received.body["account_id"] == acct["account"]["id"]
    assert [r.webhook_id for r in rx.accepted] == [created.body["id"], received.body["id"]]


def test_an_ingested_batch_costs_one_subscriber_query_and_one_insert(client, rx):
    from sqlalchemy import event

    from store.db import engine
    from tests.storehelp import inbound, store

    acct = setup_account(client)
    subscribe(client, acct, rx)
    seen: list[str] = []

    def statement(conn: Any, cursor: Any, sql: str, *rest: Any) -> None:
        if "subscribers" in sql or "outbound_events" in sql:
            seen.append(sql.split("(")[0].strip().split("\n")[0])

    event.listen(engine(), "before_cursor_execute", statement)
    try:
        store(*(inbound(acct["inbox"], f"m{i}", thread=f"t{i % 2}", sent=i) for i in range(4)))
    finally:
        event.remove(engine(), "before_cursor_execute", statement)
    assert len(seen) == 2, seen  # which accounts have subscribers; their events
    assert types_written().count("message.received") == 4


def test_a_rolled_back_change_writes_no_event_and_a_duplicate_one_event(client, rx):
    acct = setup_account(client)
    subscribe(client, acct, rx)
    conv = conversation(acct["inbox"], "t1")
    before = count(OutboundEvent)
    action = c.SetConversationStatus(conversation_id=conv, status="closed")
    env = c.ChangeEnvelope(
        id="close-1", account_id=acct["account"]["id"], occurred_at=at(100), action=action
    )
    with pytest.raises(RuntimeError), transaction() as session:
        apply.apply_change(session, env, get_settings())
        assert session.scalar(select(OutboundEvent.type).order_by(OutboundEvent.id.desc()))
        raise RuntimeError("the transaction fails after the change")
    assert count(OutboundEvent) == before
    close(conv, acct, "close-1")
    close(conv, acct, "close-1")  # the same change again: a no-op
    assert types_written()[before:] == ["status.changed"]
    pump_until(lambda: len(rx.accepted) == 3)
    assert rx.accepted[-1].body["data"] == {
        "entity": "conversation",
        "id": conv,
        "field": "status",
        "value": "closed",
        "rule": "S3",
        "change_id": "close-1",
    }


def test_rules_effects_are_announced_one_event_each(client, rx):
    acct = setup_account(client, tier="professional", created_at="2025-01-01T00:00:00Z")
    subscribe(client, acct, rx)
    conv = conversation(acct["inbox"], "t1")
    made = run(change("t", acct["account"]["id"], c.CreateTicket(conversation_id=conv), 50))
    owner = c.SetConversationOwner(conversation_id=conv, owner_id=acct["owners"][0])
    run(change("own", acct["account"]["id"], owner, 60))
    run(change("trash", acct["account"]["id"], c.TrashConversation(conversation_id=conv), 70))
    run(change("back", acct["account"]["id"], c.RestoreConversation(conversation_id=conv), 80))
    assert types_written()[2:] == [
        "ticket.created",
        "ticket.moved",  # R1: to the help desk
        "owner.changed",
        "owner.changed",  # the conversation's, and O1 the ticket's
        "deleted",
        "deleted",  # D1
        "restored",
        "restored",
    ]
    pump_until(lambda: len(rx.accepted) == 10)
    moved = rx.accepted[3].body["data"]
    assert (moved["entity"], moved["value"], moved["rule"]) == ("conversation", "help_desk", "R1")
    assert rx.accepted[2].body["data"]["id"] == made["ticket_id"]


def test_subscribers_get_only_the_types_they_want(client, rx):
    acct = setup_account(client)
    subscribe(client, acct, rx, types=["status.changed"])
    conv = conversation(acct["inbox"], "t1")
    close(conv, acct, "close")
    pump_until(lambda: rx.accepted)
    pump()
    assert [r.type for r in rx.accepted] == ["status.changed"]


def test_a_receiver_down_for_a_while_gets_every_event_once_in_order(client, rx):
    acct = setup_account(client)
    sub = subscribe(client, acct, rx)
    rx.faults.extend(["503", "drop", "503"])
    conv = conversation(acct["inbox"], "t1")
    for i, status in enumerate(["closed", "open", "closed"]):
        close(conv, acct, f"c{i}", status)
    pump_until(lambda: len(rx.accepted) == 5)
    pump()
    ids = [r.webhook_id for r in rx.accepted]
    assert ids == sorted(ids, key=lambda w: int(w[4:])) and len(set(ids)) == 5
    log = client.get(f"/subscribers/{sub['id']}/deliveries", headers=acct["auth"]).json()
    answers = [(a["status_code"], a["error"] is None) for a in log["items"]]
    assert answers[:3] == [(503, False), (None, False), (503, False)]
    assert answers[3:] == [(200, True)] * 5
    assert {a["webhook_id"] for a in log["items"][:4]} == {ids[0]}  # nothing passed the first


def test_secret_rotation_signs_with_both_during_the_overlap(client, rx):
    acct = setup_account(client)
    sub = subscribe(client, acct, rx)
    old = sub["secret"]
    rotated = client.post(f"/subscribers/{sub['id']}/rotate-secret", headers=acct["auth"]).json()
    new = rotated["secret"]
    assert new != old and new.startswith("whsec_") and rotated["previous_secret_until"]
    rx.secrets = [old, new]
    conversation(acct["inbox"], "t1")
    pump_until(lambda: len(rx.accepted) == 2)
    assert all(r.verified_by == {old, new} for r in rx.accepted)
    assert all(len(r.signature.split(" ")) == 2 for r in rx.accepted)
    shown = client.get(f"/subscribers/{sub['id']}", headers=acct["auth"]).json()
    assert shown["secret"] is None  # shown when made and rotated only


def test_auto_disable_then_re_enable_resumes_in_order(client, rx, setting):
    setting("INBOXSYNC_EVENTS_DISABLE_AFTER_S", "0")
    acct = setup_account(client)
    sub = subscribe(client, acct, rx)
    rx.faults.append("503")
    conv = conversation(acct["inbox"], "t1")
    pump()
    shown = client.get(f"/subscribers/{sub['id']}", headers=acct["auth"]).json()
    assert shown["enabled"] is False and "503" in shown["disabled_reason"]
    close(conv, acct, "while-disabled")
    for _ in range(3):
        pump()
    assert rx.accepted == []
    again = client.patch(f"/subscribers/{sub['id']}", json={"enabled": True}, headers=acct["auth"])
    assert again.json()["enabled"] is True and again.json()["pending"] == 3
    pump_until(lambda: len(rx.accepted) == 3)
    assert [r.type for r in rx.accepted] == [
        "conversation.created",
        "message.received",
        "status.changed",
    ]


def test_replay_resends_with_the_same_webhook_id(client, rx):
    acct = setup_account(client)
    sub = subscribe(client, acct, rx)
    conversation(acct["inbox"], "t1")
    pump_until(lambda: len(rx.accepted) == 2)
    first = rx.accepted[0]
    event_id = int(first.webhook_id.removeprefix("evt_"))
    url = f"/subscribers/{sub['id']}/replay"
    one = client.post(url, json={"event_id": event_id}, headers=acct["auth"])
    assert one.json() == {"replayed": 1}
    pump_until(lambda: len(rx.accepted) == 3)
    assert rx.accepted[2].webhook_id == first.webhook_id
    assert rx.accepted[2].body == first.body
    span = client.post(url, json={"from": "2000-01-01T00:00:00Z"}, headers=acct["auth"])
    assert span.json() == {"replayed": 2}
    pump_until(lambda: len(rx.accepted) == 5)
    assert client.post(url, json={}, headers=acct["auth"]).status_code == 422
    assert client.post(url, json={"event_id": 10**9}, headers=acct["auth"]).status_code == 404


def test_an_account_token_cannot_see_another_accounts_subscribers(client, rx):
    mine, theirs = setup_account(client), setup_account(client)
    sub = subscribe(client, mine, rx)
    path = f"/subscribers/{sub['id']}"
    for answer in (
        client.get(path, headers=theirs["auth"]),
        client.patch(path, json={"enabled": False}, headers=theirs["auth"]),
        client.post(f"{path}/rotate-secret", headers=theirs["auth"]),
        client.get(f"{path}/deliveries", headers=theirs["auth"]),
        client.post(f"{path}/replay", json={"event_id": 1}, headers=theirs["auth"]),
        client.delete(path, headers=theirs["auth"]),
    ):
        assert answer.status_code == 404 and answer.json()["error"] == "not_found"
    assert client.get("/subscribers", headers=theirs["auth"]).json()["items"] == []
    assert [s["id"] for s in client.get("/subscribers", headers=ADMIN).json()["items"]] == [
        sub["id"]
    ]
    assert client.delete(path, headers=mine["auth"]).status_code == 204
    assert client.get(path, headers=mine["auth"]).status_code == 404


def test_loopback_is_refused_without_the_operator_setting(client, rx, setting):
    acct = setup_account(client)
    sub = subscribe(client, acct, rx)  # allowed: the tests' operator setting is on
    conversation(acct["inbox"], "t1")
    setting("INBOXSYNC_OUTBOUND_ALLOW_PRIVATE", "false")
    for url in (rx.url, f"https://127.0.0.1:{rx.port}/x", "https://[::1]/x", "ftp://example.com"):
        answer = client.post("/subscribers", json={"url": url, "types": ALL}, headers=acct["auth"])
        assert answer.status_code == 422, url
        assert answer.json()["error"] == "invalid_request"
    # Saved before, refused when a worker connects: logged, nothing sent.
    pump()
    log = client.get(f"/subscribers/{sub['id']}/deliveries", headers=acct["auth"]).json()
    assert "loopback" in log["items"][0]["error"] and rx.accepted == []


def test_a_duplicate_task_sends_nothing_while_another_holds_the_subscriber(client, rx):
    acct = setup_account(client)
    sub = subscribe(client, acct, rx)
    conversation(acct["inbox"], "t1")
    event_delivery.fan_out()
    assert event_delivery._claim(sub["id"], "someone-else", get_settings())
    assert event_delivery.send(sub["id"]) == "skipped"
    assert rx.accepted == [] and rx.refused == 0


def test_emit_is_what_other_parts_call_in_their_transaction(client, rx):
    from handlers import events

    acct = setup_account(client)
    subscribe(client, acct, rx, types=["bulk_job.finished"])
    with transaction() as session:
        events.emit(session, acct["account"]["id"], "bulk_job.finished", {"job_id": 7})
    with pytest.raises(events.UnknownEventType), transaction() as session:
        events.emit(session, acct["account"]["id"], "bulk.nope", {})
    pump_until(lambda: rx.accepted)
    assert rx.accepted[0].body["data"] == {"job_id": 7}


def test_a_bulk_job_announces_each_items_effects_and_its_end(client, rx):
    """Bulk items go through their own batch path (handlers/apply_batch.py): its changes write
    their events as apply._record does, and the job's end writes ``bulk_job.finished`` in the
    transaction that ends it."""
    from handlers import bulk
    from schemas.bulk import BulkJobIn
    from tests.bulkhelp import Published, seed_tickets

    acct = setup_account(client)
    subscribe(client, acct, rx, types=["status.changed", "bulk_job.finished"])
    owner = {"account": acct["account"]["id"], "inbox": acct["inbox"]}
    tickets = seed_tickets(owner, 3)
    out = Published()
    spec = BulkJobIn.model_validate({"action": "close_tickets", "ids": tickets})
    job = bulk.create(spec, owner["account"], {"via": "test"}, get_settings(), out)
    out.drain()
    pump_until(lambda: len(rx.accepted) >= 7 or None)  # 3 tickets + 3 conversations (S1) + end
    bodies = [r.body for r in rx.accepted]
    closed = [b["data"] for b in bodies if b["type"] == "status.changed"]
    assert sorted((d["entity"], d["value"]) for d in closed) == sorted(
        [("ticket", "closed")] * 3 + [("conversation", "closed")] * 3
    )
    assert all(d["change_id"].startswith(f"bulk:{job.id}:") for d in closed)
    assert bodies[-1]["type"] == "bulk_job.finished"
    assert bodies[-1]["data"] == {
        "job_id": job.id,
        "action": "close_tickets",
        "state": "completed",
        "total": 3,
        "done": 3,
        "failed": 0,
    }


# ---- each setting reaches its code ------------------------------------------------------------


def failed_once(client: TestClient, rx: Receiver) -> Subscriber:
    acct = setup_account(client)
    sub = subscribe(client, acct, rx)
    conversation(acct["inbox"], "t1")
    pump()
    with reading() as session:
        return session.get_one(Subscriber, sub["id"])


def test_retry_base_and_max_settings_space_the_attempts(client, rx, setting):
    setting("INBOXSYNC_EVENTS_RETRY_BASE_S", "100")
    setting("INBOXSYNC_EVENTS_RETRY_MAX_S", "150")
    rx.faults.append("503")
    started = datetime.now(UTC)
    sub = failed_once(client, rx)
    assert sub.next_attempt_at is not None
    wait = (sub.next_attempt_at - started).total_seconds()
    assert 50 <= wait <= 101  # base: first step is 100 s, half of it random
    assert event_delivery.backoff(get_settings(), 10) <= 150  # max: the cap


def test_timeout_setting_bounds_an_attempt(client, rx, setting):
    setting("INBOXSYNC_EVENTS_TIMEOUT_S", "0.3")
    rx.hang_s = 1.0
    rx.faults.append("hang")
    sub = failed_once(client, rx)
    assert sub.failures == 1 and rx.accepted == []
    with reading() as session:
        error = session.scalar(select(EventAttempt.error))
    assert error is not None and "Timeout" in error


def test_secret_overlap_setting_sets_how_long_the_previous_secret_signs(client, rx, setting):
    setting("INBOXSYNC_EVENTS_SECRET_OVERLAP_S", "0")
    acct = setup_account(client)
    sub = subscribe(client, acct, rx)
    rotated = client.post(f"/subscribers/{sub['id']}/rotate-secret", headers=acct["auth"]).json()
    assert rotated["previous_secret_until"] is None  # over already
    rx.secrets = [rotated["secret"], sub["secret"]]
    conversation(acct["inbox"], "t1")
    pump_until(lambda: len(rx.accepted) == 2)
    assert all(r.verified_by == {rotated["secret"]} for r in rx.accepted)


def test_lease_setting_is_how_long_a_worker_holds_a_subscriber(client, rx, setting):
    setting("INBOXSYNC_EVENTS_LEASE_S", "1234")
    acct = setup_account(client)
    sub = subscribe(client, acct, rx)
    assert event_delivery._claim(sub["id"], "me", get_settings())
    with reading() as session:
        until = session.get_one(Subscriber, sub["id"]).lease_until
    assert until is not None
    assert timedelta(seconds=1200) < until - datetime.now(UTC) <= timedelta(seconds=1234)
    with transaction() as session:  # a lease that ran out is taken over
        session.execute(
            update(Subscriber).values(lease_until=datetime.now(UTC) - timedelta(seconds=1))
        )
    assert event_delivery._claim(sub["id"], "next", get_settings())


def test_retention_setting_forgets_old_events_and_their_log_but_not_pending_ones(
    client, rx, setting
):
    from workers.periodic import Scheduler

    setting("INBOXSYNC_EVENTS_RETENTION_DAYS", "1")
    acct = setup_account(client)
    subscribe(client, acct, rx)
    conversation(acct["inbox"], "t1")
    pump_until(lambda: len(rx.accepted) == 2)
    rx.faults.append("503")
    conversation(acct["inbox"], "t2")
    pump()  # its two events wait behind a failure
    old = datetime.now(UTC) - timedelta(days=2)
    with transaction() as session:
        session.execute(update(OutboundEvent).values(created_at=old))
        session.execute(update(EventAttempt).values(at=old))
        session.execute(
            update(EventDelivery)
            .where(EventDelivery.delivered_at.is_not(None))
            .values(delivered_at=old)
        )
    assert Scheduler(get_settings(), holder="pruner").prune_turn()
    assert (count(OutboundEvent), count(EventDelivery), count(EventAttempt)) == (2, 2, 0)
    pump_until(lambda: len(rx.accepted) == 4)


# ---- the CLI ----------------------------------------------------------------------------------


def cli(*args: str) -> Any:
    from typer.testing import CliRunner

    from cli.main import app

    return CliRunner().invoke(app, list(args))


def test_cli_creates_lists_shows_replays_and_enables(client, rx, setting):
    acct = setup_account(client)
    account = str(acct["account"]["id"])
    made = cli(
        "subscribers",
        "create",
        "--account",
        account,
        "--url",
        rx.url,
        "--type",
        "conversation.created",
        "--json",
    )
    assert made.exit_code == 0, made.output
    sub = json.loads(made.output)
    rx.secrets = [sub["secret"]]
    conversation(acct["inbox"], "t1")
    pump_until(lambda: rx.accepted)
    listed = json.loads(cli("subscribers", "list", "--json").output)
    assert [s["id"] for s in listed] == [sub["id"]]
    shown = json.loads(cli("subscribers", "show", str(sub["id"]), "--json").output)
    assert shown["pending"] == 0 and shown["secret"] is None
    log = json.loads(cli("subscribers", "deliveries", str(sub["id"]), "--json").output)
    assert [a["status_code"] for a in log] == [200]
    again = cli("subscribers", "replay", str(sub["id"]), "--from", "2000-01-01T00:00:00Z")
    assert again.exit_code == 0 and "1 events queued again" in again.output
    pump_until(lambda: len(rx.accepted) == 2)
    with transaction() as session:
        session.execute(update(Subscriber).values(enabled=False, disabled_reason="x"))
    enabled = cli("subscribers", "enable", str(sub["id"]))
    assert enabled.exit_code == 0 and "enabled" in enabled.output
    missing = cli("subscribers", "show", "999999")
    assert missing.exit_code == 2 and "not found" in missing.output
    both = cli("subscribers", "replay", str(sub["id"]))
    assert both.exit_code == 2 and len(both.output.strip().splitlines()) == 1
    setting("INBOXSYNC_OUTBOUND_ALLOW_PRIVATE", "false")
    refused = cli(
        "subscribers", "create", "--account", account, "--url", rx.url, "--type", "deleted"
    )
    assert refused.exit_code == 2 and "url" in refused.output


def test_events_interval_setting_is_the_clock_events_go_out_on(client, rx, setting, monkeypatch):
    """Events do not wait for a sweep round: a scheduler fans them out and publishes their
    subscriber every ``INBOXSYNC_EVENTS_INTERVAL_S``, under the lease ``events``."""
    import time

    from store import lease
    from workers import periodic

    published: list[int] = []
    monkeypatch.setattr(periodic.publish, "events", published.append)
    acct = setup_account(client)
    made = subscribe(client, acct, rx)
    conversation(acct["inbox"], "t1")
    for interval, expect in ((600.0, False), (0.2, True)):
        setting("INBOXSYNC_EVENTS_INTERVAL_S", str(interval))
        setting("INBOXSYNC_SWEEP_INTERVAL_S", "600")
        scheduler = periodic.Scheduler(get_settings()).start()
        try:
            if expect:
                eventually(lambda: made["id"] in published, timeout=10)
                assert lease.holder_of(periodic.EVENTS_LEASE)[0] == scheduler.holder
            else:
                time.sleep(1.0)
                assert published == []
        finally:
            scheduler.stop()
