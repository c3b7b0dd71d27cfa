"""Dead letters you can see and replay (``/dead-letters``, ``inboxsync dead-letters``).

A replay goes through the normal, idempotent path: a delivery is journaled again and stored
once (a duplicate if it was stored meanwhile), a change is applied once by its id, a reply is
queued again unless sent. Replaying twice changes nothing the second time. With a real worker
(in a thread) on the run's broker; the reply test adds an ``outbound`` worker process.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update
from typer.testing import CliRunner

from api.app import create_app
from api.webhooks import Ingress
from cli.main import app as cli
from handlers import deadletters, journal, pipeline
from handlers.channels.generic import GenericAdapter
from handlers.outbound.replies import SEND_TASK
from schemas import changes as c
from store.db import reading, transaction
from store.models import Change, Conversation, DeadLetter, Message, PendingChange, Reply
from tests.apihelp import ADMIN, eventually, message, post_webhook, setup_account
from tests.storehelp import change, conversation


@pytest.fixture
def client(db: None, worker: None) -> Iterator[TestClient]:
    with TestClient(Ingress(create_app())) as c:
        yield c


def get(client: TestClient, path: str, auth: dict[str, str], **params: Any) -> Any:
    got = client.get(path, headers=auth, params=params)
    assert got.status_code == 200, got.text
    body = got.json()
    return body["items"] if path == "/dead-letters" else body  # a page: its items


def replay(client: TestClient, letter_id: int, auth: dict[str, str]) -> dict[str, Any]:
    done = client.post(f"/dead-letters/{letter_id}/replay", headers=auth)
    assert done.status_code == 200, done.text
    return done.json()


def letter(client: TestClient, letter_id: int, auth: dict[str, str]) -> dict[str, Any]:
    return get(client, f"/dead-letters/{letter_id}", auth)  # type: ignore[no-any-return]


def messages_of(inbox: int, external_id: str) -> int:
    with reading() as session:
        return session.scalar(
            select(func.count())
            .select_from(Message)
            .where(Message.inbox_id == inbox, Message.external_id == external_id)
        )


# ---- a poison payload, fixed by a code change, then replayed ---------------------------------


def test_a_poison_delivery_fixed_by_a_code_change_is_replayed_and_stored_once(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    acct = setup_account(client)
    auth = acct["auth"]
    normalize = GenericAdapter.normalize

    def buggy(self: GenericAdapter, inbox_id: int, received_at: datetime, payload: Any) -> Any:
        if "poison" in str(payload.get("text")):  # the "bug": one text the code cannot read
            raise RuntimeError("bug: cannot read this text")
        return normalize(self, inbox_id, received_at, payload)

    monkeypatch.setattr(GenericAdapter, "normalize", buggy)
    [did] = post_webhook(client, acct["inbox"], message("poison-1")).json()["deliveries"]
    post_webhook(client, acct["inbox"], message("fine-1"))
    dead = eventually(
        lambda: (d := get(client, f"/deliveries/{did}", auth))["state"] == "dead" and d
    )
    assert "bug: cannot read" in dead["error"]
    [listed] = get(client, "/dead-letters", auth)
    assert (listed["task"], listed["inbox_id"], listed["state"]) == (
        pipeline.INGEST_TASK,
        acct["inbox"],
        "waiting",
    )
    shown = letter(client, listed["id"], auth)
    assert shown["payload"]["payload"]["external_id"] == "poison-1"  # as stored: the delivery
    assert shown["error_type"] == "RuntimeError" and shown["attempts"] == 1
    assert listed.get("payload") is None  # the list leaves payloads out

    # Replayed while the bug is still there: it fails again and is waiting again.
    first = replay(client, listed["id"], auth)
    assert first["replayed"] == 1 and first["ids"] == [listed["id"]]
    again = eventually(
        lambda: (x := letter(client, listed["id"], auth))["state"] == "waiting" and x
    )
    assert again["replays"] == 1 and again["attempts"] == 2
    assert len(get(client, "/dead-letters", auth)) == 1  # the same letter, not a second one

    monkeypatch.undo()  # the "fix" is deployed
    replay(client, listed["id"], auth)
    fixed = letter(client, listed["id"], auth)
    assert fixed["state"] == "replayed" and fixed["replays"] == 2 and fixed["replayed_at"]
    new_delivery = int(fixed["replayed_as"].removeprefix("delivery "))
    stored = eventually(
        lambda: (
            (d := get(client, f"/deliveries/{new_delivery}", auth))["state"] != "journaled" and d
        )
    )
    assert stored["state"] == "stored" and messages_of(acct["inbox"], "poison-1") == 1

    # Replayed again: a duplicate, nothing stored twice.
    replay(client, listed["id"], auth)
    twice = letter(client, listed["id"], auth)
    assert twice["replays"] == 3 and twice["state"] == "replayed"
    dup = int(twice["replayed_as"].removeprefix("delivery "))
    done = eventually(
        lambda: (d := get(client, f"/deliveries/{dup}", auth))["state"] != "journaled" and d
    )
    assert done["state"] == "duplicate" and messages_of(acct["inbox"], "poison-1") == 1
    assert get(client, "/dead-letters", auth, state="waiting") == []


# ---- changes ---------------------------------------------------------------------------------


def test_a_dead_lettered_change_is_applied_once_by_its_id(client: TestClient) -> None:
    """A change whose worker gave up (as ``on_failure`` records it after the last retry): the
    replay applies it; a second replay finds it applied and publishes nothing."""
    acct = setup_account(client)
    conv = conversation(acct["inbox"], "t-close")
    change_id = f"api:{acct['account']['id']}:close-1"
    envelope = change(
        change_id,
        acct["account"]["id"],
        c.SetConversationStatus(conversation_id=conv, status="closed"),
    )
    assert journal.pend(change_id, acct["account"]["id"], "inbox", envelope)
    deadletters.record(
        pipeline.APPLY_TASK,
        "task-1",
        [({"args": [envelope], "kwargs": {}}, RuntimeError("the store went away"))],
        attempts=9,
        key=change_id,
    )
    with reading() as session:  # dead, not pending: the periodic round leaves it alone
        assert session.get(PendingChange, change_id) is None
    failed = client.get(f"/changes/{change_id}", headers=acct["auth"])
    assert failed.status_code == 422 and failed.json()["status"] == "failed"
    [listed] = get(client, "/dead-letters", acct["auth"], task="apply_change")
    assert listed["key"] == change_id and listed["account_id"] == acct["account"]["id"]

    assert replay(client, listed["id"], acct["auth"])["replayed"] == 1
    applied = eventually(
        lambda: (
            (r := client.get(f"/changes/{change_id}", headers=acct["auth"])).status_code == 200
            and r.json()
        )
    )
    assert applied["status"] == "applied" and applied["conversation"]["status"] == "closed"
    second = replay(client, listed["id"], acct["auth"])
    assert second["replayed"] == 1
    shown = letter(client, listed["id"], acct["auth"])
    assert "applied already" in shown["replayed_as"] and shown["replays"] == 2
    with reading() as session:
        assert session.scalar(select(func.count()).where(Change.id == change_id)) == 1
        assert session.get(PendingChange, change_id) is None


def test_a_change_no_worker_can_read_fails_again_when_replayed(client: TestClient) -> None:
    from settings import get_settings
    from workers.app import app

    acct = setup_account(client)
    account = acct["account"]["id"]
    poison = {"id": "poison-9", "account_id": account, "nonsense": True}
    app.send_task(pipeline.APPLY_TASK, args=[poison], queue=get_settings().queue_name("inbox"))
    listed = eventually(lambda: get(client, "/dead-letters", acct["auth"], reason="VALIDATION"))
    assert listed[0]["error_type"] == "ValidationError"  # ``reason``: any case
    replay(client, listed[0]["id"], acct["auth"])
    back = eventually(
        lambda: (x := letter(client, listed[0]["id"], acct["auth"]))["state"] == "waiting" and x
    )
    assert back["replays"] == 1 and back["attempts"] == 2


# ---- replies ---------------------------------------------------------------------------------


def test_a_dead_lettered_reply_is_queued_again_and_sent_once(client: TestClient) -> None:
    from handlers.outbound import replies
    from schemas.outbound import ReplyIn
    from store.models import Inbox
    from tests.fakeproviders import POSTMARK_TOKEN, FakeProviders
    from tests.workerhelp import start_worker, stop

    fake = FakeProviders()
    acct = setup_account(client)
    with transaction() as session:
        session.get_one(Inbox, acct["inbox"]).outbound = {
            "via": "postmark",
            "from": "S <s@acme.example>",
            "server_token": POSTMARK_TOKEN,
            "api_url": fake.url,
        }
    conv = conversation(acct["inbox"], "t-reply")
    body = ReplyIn(text="hello", to=["maria@example.com"])
    reply_id, _ = replies.queue_reply(account_id=None, conversation_id=conv, body=body, key=None)
    with transaction() as session:  # it failed, and its task was dead-lettered
        session.execute(
            update(Reply).where(Reply.id == reply_id).values(state="failed", attempts_left=0)
        )
    deadletters.record(
        SEND_TASK, "task-r", [({"args": [reply_id], "kwargs": {}}, RuntimeError("gone"))]
    )
    [listed] = get(client, "/dead-letters", acct["auth"], task="send_reply")
    assert listed["inbox_id"] == acct["inbox"]
    worker = start_worker("-Q", "outbound", "--pool", "solo")
    try:
        assert replay(client, listed["id"], acct["auth"])["replayed"] == 1
        eventually(lambda: fake.sends("postmark"), timeout=60)
        eventually(lambda: get(client, f"/replies/{reply_id}", acct["auth"])["state"] == "sent")
        replay(client, listed["id"], acct["auth"])
        assert "is sent, nothing to do" in letter(client, listed["id"], acct["auth"])["replayed_as"]
    finally:
        stop(worker)
        fake.close()
    assert len(fake.sends("postmark")) == 1


# ---- seeing them: filters, pages, tenancy ----------------------------------------------------


def seed(inbox: int, text: str, error: str) -> None:
    delivery = journal.delivery(inbox, "generic", {**message(text, thread=text), "text": text})
    deadletters.record(pipeline.INGEST_TASK, "t", [(delivery, ValueError(error))])


def ids(found: list[dict[str, Any]]) -> list[int]:
    return [x["id"] for x in found]


def test_filters_pages_and_tenancy(client: TestClient) -> None:
    mine, theirs = setup_account(client), setup_account(client)
    seed(mine["inbox"], "a", "Timeout talking to X")
    seed(mine["inbox"], "b", "bad shape")
    seed(theirs["inbox"], "c", "timeout again")
    everything = get(client, "/dead-letters", ADMIN)
    assert len(everything) == 3
    a, b, other = ids(everything)
    assert ids(get(client, "/dead-letters", mine["auth"])) == [a, b]
    assert ids(get(client, "/dead-letters", ADMIN, reason="timeout")) == [a, other]
    assert ids(get(client, "/dead-letters", ADMIN, inbox_id=theirs["inbox"])) == [other]
    assert ids(get(client, "/dead-letters", ADMIN, task="ingest_batch", limit=1)) == [a]
    assert ids(get(client, "/dead-letters", ADMIN, after_id=a, limit=1)) == [b]
    later = (datetime.now(UTC) + timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert len(get(client, "/dead-letters", ADMIN, older_than=later)) == 3
    assert get(client, "/dead-letters", ADMIN, newer_than=later) == []
    assert get(client, "/dead-letters", ADMIN, task="apply_change") == []
    for method, path in (
        ("GET", f"/dead-letters/{other}"),
        ("POST", f"/dead-letters/{other}/replay"),
        ("DELETE", f"/dead-letters/{other}"),
    ):
        assert client.request(method, path, headers=mine["auth"]).status_code == 404
    # A bulk replay by an account replays only its own letters.
    done = client.post("/dead-letters/replay", json={"reason": "TIMEOUT"}, headers=mine["auth"])
    assert done.status_code == 200 and done.json()["ids"] == [a]
    assert letter(client, other, ADMIN)["state"] == "waiting"
    eventually(lambda: messages_of(mine["inbox"], "a") == 1)


def test_a_bulk_replay_counts_and_a_second_one_finds_nothing_waiting(client: TestClient) -> None:
    acct = setup_account(client)
    for n in range(3):
        seed(acct["inbox"], f"bulk-{n}", "worker crashed")
    first = client.post("/dead-letters/replay", json={"task": "ingest_batch"}, headers=ADMIN)
    assert first.status_code == 200 and first.json()["replayed"] == 3
    for n in range(3):
        eventually(lambda n=n: messages_of(acct["inbox"], f"bulk-{n}") == 1)  # type: ignore[misc]
    second = client.post("/dead-letters/replay", json={"task": "ingest_batch"}, headers=ADMIN)
    assert second.json()["replayed"] == 0
    with reading() as session:
        assert session.scalar(select(func.count()).select_from(Conversation)) == 3


def test_a_discarded_letter_is_kept_and_never_replayed(client: TestClient) -> None:
    acct = setup_account(client)
    seed(acct["inbox"], "drop-me", "unwanted")
    [listed] = get(client, "/dead-letters", acct["auth"])
    gone = client.delete(f"/dead-letters/{listed['id']}", headers=acct["auth"])
    assert gone.status_code == 200 and gone.json()["state"] == "discarded"
    assert letter(client, listed["id"], acct["auth"])["discarded_at"]
    refused = client.post(f"/dead-letters/{listed['id']}/replay", headers=acct["auth"])
    assert refused.status_code == 409 and refused.json()["error"] == "not_replayable"
    bulk = client.post("/dead-letters/replay", json={}, headers=acct["auth"])
    assert bulk.json()["replayed"] == 0
    assert ids(get(client, "/dead-letters", acct["auth"], state="discarded")) == [listed["id"]]
    with reading() as session:
        assert session.scalar(select(func.count()).select_from(DeadLetter)) == 1


# ---- the CLI ---------------------------------------------------------------------------------


def run(*args: str) -> Any:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return result


def test_the_cli_lists_shows_replays_and_discards(client: TestClient) -> None:
    import json

    acct = setup_account(client)
    seed(acct["inbox"], "cli-1", "Broken Thing")
    seed(acct["inbox"], "cli-2", "other")
    listed = json.loads(run("dead-letters", "list", "--reason", "broken", "--json").stdout)
    assert [x["error"] for x in listed] == ["Broken Thing"]
    table = run("dead-letters", "list").stdout
    assert "Broken Thing" in table and "ingest_batch" in table
    shown = json.loads(run("dead-letters", "show", str(listed[0]["id"]), "--json").stdout)
    assert shown["payload"]["payload"]["text"] == "cli-1"
    assert "cli-1" in run("dead-letters", "show", str(listed[0]["id"])).stdout
    refused = CliRunner().invoke(cli, ["dead-letters", "replay"])
    assert refused.exit_code == 2 and "--all" in refused.stderr
    replayed = run("dead-letters", "replay", "--reason", "broken").stdout
    assert "replayed 1, skipped 0" in replayed
    eventually(lambda: messages_of(acct["inbox"], "cli-1") == 1)
    other = get(client, "/dead-letters", ADMIN, state="waiting")[0]["id"]
    assert "discarded" in run("dead-letters", "discard", str(other)).stdout
    assert letter(client, other, ADMIN)["state"] == "discarded"
    missing = CliRunner().invoke(cli, ["dead-letters", "show", "999999"])
    assert missing.exit_code == 2 and "not found" in missing.stderr


def test_a_task_stopped_by_broker_trouble_is_no_dead_letter_and_its_work_waits_for_the_sweep(
    make_account: Any,
) -> None:
    """A chaos run's one dead letter: an ingest task whose retry could not be published while
    Redis restarted (redis-py's ConnectionError, not Python's). The deliveries were stored later
    by the sweep; the dead letter was a false alarm an operator would chase."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    from workers.tasks import ingest_batch

    acct = make_account()
    payload = {"external_id": "m1", "thread_key": "t", "sender": "a@x.test", "text": "hi"}
    ids = journal.journal([journal.delivery(acct["inbox"], "generic", payload)])
    ingest_batch.on_failure(RedisConnectionError("Error 111 connecting"), "t-1", (ids,), {}, None)
    with reading() as session:
        assert session.scalar(select(func.count()).select_from(DeadLetter)) == 0
    assert journal.sweep(older_than_s=-1) == ids  # still journaled: published again
    ingest_batch.on_failure(ValueError("poison"), "t-2", (ids,), {}, None)
    with reading() as session:
        assert session.scalar(select(func.count()).select_from(DeadLetter)) == 1
