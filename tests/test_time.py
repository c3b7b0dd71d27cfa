"""One clock for order, and time zones that survive both stores.

A sender's Date decides nothing: a message takes its place in its case when it is stored
(``stored_at``), a change when the API accepts it (an earlier ``occurred_at`` may be given,
never a later one). Every timestamp is stored in UTC and answered with ``Z``.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.app import create_app
from api.webhooks import Ingress
from store.db import make_engine, reading
from store.models import Account, Conversation
from tests.apihelp import eventually, message, post_webhook, setup_account


@pytest.fixture
def client(db: None, worker: None) -> Iterator[TestClient]:
    with TestClient(Ingress(create_app())) as c:
        yield c


def conversation_of(client: TestClient, acct: dict[str, Any], n: int = 1) -> dict[str, Any]:
    def stored() -> dict[str, Any] | None:
        found = client.get("/conversations", headers=acct["auth"]).json()["items"]
        if len(found) != 1:
            return None
        full = client.get(f"/conversations/{found[0]['id']}", headers=acct["auth"]).json()
        return full if len(full["messages"]) == n else None

    return eventually(stored)


def test_a_mail_dated_in_the_future_cannot_pin_its_case_open(client):
    """The issue's third case: a message with a Date of 2035, then the agent closes."""
    acct = setup_account(client)
    post_webhook(client, acct["inbox"], message("m1", sent_at="2035-01-01T00:00:00Z"))
    conv = conversation_of(client, acct)
    closed = client.post(f"/conversations/{conv['id']}/close", headers=acct["auth"])
    assert closed.status_code == 200, closed.text
    assert closed.json()["status"] == "applied"
    assert closed.json()["conversation"]["status"] == "closed"  # in that same answer
    got = client.get(f"/conversations/{conv['id']}", headers=acct["auth"]).json()
    assert got["status"] == "closed"
    assert got["messages"][0]["sent_at"] == "2035-01-01T00:00:00Z"  # kept, for display
    # Its ticket, closed, stays closed (it used to bounce back to waiting_on_us).
    ticket = client.post(f"/conversations/{conv['id']}/ticket", headers=acct["auth"]).json()
    tid = ticket["ticket"]["id"]
    done = client.post(f"/tickets/{tid}/status", json={"status": "closed"}, headers=acct["auth"])
    assert done.json()["status"] == "applied"
    assert client.get(f"/tickets/{tid}", headers=acct["auth"]).json()["status"] == "closed"


def test_a_mail_delayed_in_transit_reopens_what_was_closed_before_it_arrived(client):
    """The mirror case: dated before the close (the sender's clock), delivered after it."""
    acct = setup_account(client)
    post_webhook(client, acct["inbox"], message("m1", sent_at="2026-01-01T10:00:00Z"))
    conv = conversation_of(client, acct)
    client.post(f"/conversations/{conv['id']}/close", headers=acct["auth"])
    post_webhook(client, acct["inbox"], message("m2", sent_at="2026-01-01T10:05:00Z"))
    reopened = conversation_of(client, acct, n=2)
    assert reopened["status"] == "open"
    assert [m["external_id"] for m in reopened["messages"]] == ["m1", "m2"]  # stored order


def test_an_account_created_before_the_cutoff_in_utc_stays_in_the_inbox_on_both_stores(client):
    """2024-04-01T01:00:00+02:00 is 2024-03-31T23:00:00Z: before the R1 cutoff."""
    acct = setup_account(client, tier="professional", created_at="2024-04-01T01:00:00+02:00")
    assert acct["account"]["created_at"] == "2024-03-31T23:00:00Z"
    assert acct["account"]["ticket_location"] == "inbox"
    got = client.get(f"/accounts/{acct['account']['id']}", headers=acct["auth"]).json()
    assert got["created_at"] == "2024-03-31T23:00:00Z" and got["ticket_location"] == "inbox"
    after = setup_account(client, tier="professional", created_at="2024-03-31T20:00:00-04:00")
    assert after["account"]["ticket_location"] == "help_desk"  # 2024-04-01T00:00:00Z: on it
    post_webhook(client, acct["inbox"], message("m1"))
    conv = conversation_of(client, acct)
    made = client.post(f"/conversations/{conv['id']}/ticket", headers=acct["auth"]).json()
    assert made["ticket"]["location"] == "inbox"


def test_changes_written_with_offsets_are_ordered_by_the_instant(client):
    """15:00Z given as 10:00-05:00 is later than 14:00Z, whatever the digits say."""
    acct = setup_account(client)
    post_webhook(client, acct["inbox"], message("m1", sent_at="2026-01-01T09:00:00Z"))
    conv = conversation_of(client, acct)
    ana, bo = acct["owners"]

    def owner(key: str, who: int, at: str) -> dict[str, Any]:
        action = {"kind": "set_conversation_owner", "conversation_id": conv["id"], "owner_id": who}
        body = {"id": key, "occurred_at": at, "action": action}
        return client.post("/changes", json=body, headers=acct["auth"]).json()

    assert owner("late-digits", ana, "2026-01-01T10:00:00-05:00")["status"] == "applied"
    earlier = owner("early-instant", bo, "2026-01-01T14:00:00Z")
    assert earlier["status"] == "superseded" and earlier["superseded"][0]["by"].endswith(
        "late-digits"
    )
    assert earlier["occurred_at"] == "2026-01-01T14:00:00Z"
    got = client.get(f"/conversations/{conv['id']}", headers=acct["auth"]).json()
    assert got["owner_id"] == ana


def test_a_change_dated_in_the_future_is_placed_at_its_arrival_and_says_so(client):
    acct = setup_account(client)
    post_webhook(client, acct["inbox"], message("m1"))
    conv = conversation_of(client, acct)
    action = {"kind": "set_conversation_status", "conversation_id": conv["id"], "status": "closed"}
    answer = client.post(
        "/changes",
        json={"id": "from-the-future", "occurred_at": "2099-01-01T00:00:00Z", "action": action},
        headers=acct["auth"],
    ).json()
    assert answer["status"] == "applied"
    assert answer["occurred_at"] < "2099" and "placed at its arrival" in answer["notes"][0]
    # A message stored afterwards is later than the close, as it really is: it reopens.
    post_webhook(client, acct["inbox"], message("m2"))
    assert conversation_of(client, acct, n=2)["status"] == "open"


def test_every_timestamp_the_api_answers_is_utc_with_z(client):
    acct = setup_account(client, created_at="2025-06-01T12:00:00+09:30")
    post_webhook(client, acct["inbox"], message("m1", sent_at="2026-01-01T10:00:00-03:00"))
    conv = conversation_of(client, acct)
    stamps = [
        acct["account"]["created_at"],
        conv["created_at"],
        conv["last_message_at"],
        *(conv["messages"][0][k] for k in ("sent_at", "received_at", "stored_at")),
    ]
    assert all(s.endswith("Z") for s in stamps), stamps
    assert conv["messages"][0]["sent_at"] == "2026-01-01T13:00:00Z"


def test_the_store_returns_utc_whatever_the_session_time_zone(db):
    """PostgreSQL answers timestamptz in the session's zone; the column type turns it to UTC.
    (On SQLite the same test checks that the offset given was not dropped.)"""
    import os

    from store.db import transaction

    with transaction() as session:
        account = Account(
            name="tz",
            tier="free",
            created_at=datetime.fromisoformat("2024-04-01T01:00:00+02:00"),
        )
        session.add(account)
        session.flush()
        account_id = account.id
    url = os.environ["DATABASE_URL"]
    kwargs: dict[str, Any] = {}
    if url.startswith("postgresql"):
        kwargs["connect_args"] = {"options": _with_zone(url)}
    engine = make_engine(url, **kwargs)
    try:
        with engine.connect() as conn:
            created = conn.execute(
                select(Account.created_at).where(Account.id == account_id)
            ).scalar_one()
            later = conn.execute(
                select(Account.id).where(
                    Account.id == account_id,
                    Account.created_at < datetime(2024, 4, 1, tzinfo=UTC),
                )
            ).scalar_one_or_none()
    finally:
        engine.dispose()
    assert created == datetime(2024, 3, 31, 23, 0, tzinfo=UTC) and created.tzinfo is UTC
    assert later == account_id  # compared as instants in SQL too


def _with_zone(url: str) -> str:
    from sqlalchemy import make_url

    options = make_url(url).query.get("options") or ""
    return f"{options} -ctimezone=Asia/Kolkata".strip()


def test_conversation_clock_columns_come_back_aware(client):
    acct = setup_account(client)
    post_webhook(client, acct["inbox"], message("m1"))
    conversation_of(client, acct)
    with reading() as session:
        conv = session.scalars(select(Conversation)).one()
    assert conv.last_message_at.tzinfo is UTC and conv.created_at.tzinfo is UTC


def test_one_read_sees_one_moment_whatever_commits_meanwhile(make_account: Any) -> None:
    """``GET /conversations/{id}`` reads the conversation, then its messages. Under PostgreSQL's
    READ COMMITTED a worker's commit in between gave a closed conversation with the message
    that had reopened it (seen under load in the test above). A read is one snapshot."""
    from sqlalchemy import func, update

    from store.db import transaction
    from store.models import Message
    from tests.storehelp import conversation

    acct = make_account()
    conv = conversation(acct["inbox"], "t1")
    with reading() as session:
        before = session.scalar(select(Conversation.status).where(Conversation.id == conv))
        count = session.scalar(select(func.count()).select_from(Message))
        with transaction() as writer:  # a worker commits meanwhile
            writer.execute(
                update(Conversation).where(Conversation.id == conv).values(status="closed")
            )
        assert session.scalar(select(Conversation.status).where(Conversation.id == conv)) == before
        assert session.scalar(select(func.count()).select_from(Message)) == count
    with reading() as session:
        assert (
            session.scalar(select(Conversation.status).where(Conversation.id == conv)) == "closed"
        )
