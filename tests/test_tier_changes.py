"""Tier changes (``PATCH /accounts/{id}``, ``inboxsync update-account``, one validated write in
handlers/admin.py): a ticket created after the change is routed by R1/R2 with the new tier; the
tickets that exist stay where they are. At the cutoff instant, in offsets other than UTC."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from click.testing import Result
from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner

from api.app import create_app
from cli.main import app as cli
from handlers import pipeline
from schemas import changes as c
from store.db import reading, transaction
from store.models import AccountRevision, Conversation, Inbox, Ticket
from tests.apihelp import ADMIN
from tests.storehelp import conversation, count

CUTOFF = "2024-04-01T00:00:00Z"  # INBOXSYNC_HELPDESK_CUTOFF's default


@pytest.fixture(scope="module")
def app_client(migrated: None) -> Iterator[TestClient]:
    with TestClient(create_app()) as made:
        yield made


@pytest.fixture
def client(db: None, app_client: TestClient) -> TestClient:
    return app_client


def new_account(client: TestClient, tier: str, created_at: str) -> dict[str, int]:
    made = client.post(
        "/accounts", json={"name": "acme", "tier": tier, "created_at": created_at}, headers=ADMIN
    )
    assert made.status_code == 201, made.text
    account = made.json()["id"]
    with transaction() as session:
        inbox = Inbox(account_id=account, name="s", channel="email", provider="generic")
        session.add(inbox)
        session.flush()
        return {"account": account, "inbox": inbox.id}


def ticket(acct: dict[str, int], thread: str, at: datetime | None = None) -> str:
    """A ticket for a new conversation, created at ``at`` (default now); its location, after
    checking its conversation is there too."""
    conv = conversation(acct["inbox"], thread)
    envelope = c.ChangeEnvelope(
        id=f"create-{thread}",
        account_id=acct["account"],
        occurred_at=at or datetime.now(UTC),
        action=c.CreateTicket(conversation_id=conv),
    ).model_dump(mode="json")
    result = pipeline.run_change(envelope)
    assert result["outcome"] == "applied", result
    return location_of(conv)


def location_of(conv: int) -> str:
    with reading() as session:
        row = session.execute(
            select(Ticket.location, Conversation.location)
            .join(Conversation, Conversation.ticket_id == Ticket.id)
            .where(Conversation.id == conv)
        ).one()
    assert row[0] == row[1]
    return str(row[0])


def patch(client: TestClient, account: int, body: dict[str, Any], **headers: str) -> Any:
    return client.patch(f"/accounts/{account}", json=body, headers={**ADMIN, **headers})


@pytest.mark.parametrize(
    ("created_at", "after"),
    [
        (CUTOFF, "help_desk"),  # exactly at the cutoff: on or after it (R1)
        ("2024-03-31T23:59:59Z", "inbox"),  # one second before (R2)
        ("2024-04-01T00:00:01Z", "help_desk"),  # one second after
        ("2024-04-01T02:00:00+02:00", "help_desk"),  # the cutoff instant, written at +02:00
        ("2024-04-01T01:59:59+02:00", "inbox"),  # a date of April, an instant of March
        ("2024-03-31T19:00:01-05:00", "help_desk"),  # a date of March, an instant of April
        ("2024-03-31T18:59:59-05:00", "inbox"),
        ("2024-04-01T05:30:00+05:30", "help_desk"),
    ],
)
def test_a_tier_change_routes_tickets_created_after_it_at_the_cutoff(
    client: TestClient, created_at: str, after: str
):
    acct = new_account(client, "starter", created_at)
    assert ticket(acct, "before") == "inbox"  # R2: starter
    changed = patch(client, acct["account"], {"tier": "professional"})
    assert changed.status_code == 200, changed.text
    assert changed.json()["tier"] == "professional" and changed.json()["ticket_location"] == after
    assert ticket(acct, "after") == after
    assert location_of_thread(acct, "before") == "inbox"  # existing tickets stay

    assert patch(client, acct["account"], {"tier": "free"}).json()["ticket_location"] == "inbox"
    assert ticket(acct, "later") == "inbox"
    assert location_of_thread(acct, "after") == after


def location_of_thread(acct: dict[str, int], thread: str) -> str:
    with reading() as session:
        conv = session.scalar(
            select(Conversation.id).where(
                Conversation.inbox_id == acct["inbox"], Conversation.thread_key == thread
            )
        )
    assert conv is not None
    return location_of(conv)


def test_a_ticket_takes_the_tier_in_force_when_it_was_created(client: TestClient):
    """A creation accepted before the tier change but applied after it (a queue behind) is
    routed by the tier it was created under; one at the change's very instant by the new one."""
    acct = new_account(client, "free", CUTOFF)
    when = datetime.now(UTC)
    assert patch(client, acct["account"], {"tier": "enterprise"}).status_code == 200
    with reading() as session:
        changed_at = session.scalar(select(AccountRevision.changed_at))
    assert changed_at is not None and changed_at >= when
    assert ticket(acct, "queued-before", at=changed_at - timedelta(microseconds=1)) == "inbox"
    assert ticket(acct, "at-the-instant", at=changed_at) == "help_desk"
    assert ticket(acct, "after") == "help_desk"


def test_patch_account_is_validated_and_admin_only(client: TestClient):
    acct = new_account(client, "free", CUTOFF)
    account = acct["account"]
    for body, says in [
        ({"tier": "gold"}, "tier"),
        ({"tier": None}, "may not be null"),
        ({}, "nothing to change"),
        ({"created_at": "2025-01-01T00:00:00Z"}, "created_at"),  # extra=forbid: not changeable
        ({"name": ""}, "name"),
        ({"name": "x", "color": "red"}, "color"),
    ]:
        answer = patch(client, account, body)
        assert answer.status_code == 422, (body, answer.text)
        assert says in answer.text, (body, answer.text)
    assert patch(client, 999_999, {"tier": "free"}).status_code == 404
    token = client.post(f"/accounts/{account}/tokens", json={}, headers=ADMIN).json()["token"]
    own = client.patch(
        f"/accounts/{account}",
        json={"tier": "enterprise"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert own.status_code == 403
    renamed = patch(client, account, {"name": "Acme Ltd"})
    assert renamed.status_code == 200 and renamed.json()["name"] == "Acme Ltd"
    assert client.get(f"/accounts/{account}", headers=ADMIN).json()["tier"] == "free"
    assert count(AccountRevision) == 1
    # Setting what it already is changes nothing and records nothing.
    assert patch(client, account, {"name": "Acme Ltd", "tier": "free"}).status_code == 200
    assert count(AccountRevision) == 1


def test_patch_account_honours_the_idempotency_key(client: TestClient):
    acct = new_account(client, "free", CUTOFF)
    account = acct["account"]
    first = patch(client, account, {"tier": "professional"}, **{"Idempotency-Key": "k1"})
    assert first.status_code == 200
    patch(client, account, {"tier": "starter"})  # someone else changes it meanwhile
    retry = patch(client, account, {"tier": "professional"}, **{"Idempotency-Key": "k1"})
    assert retry.status_code == 200 and retry.json() == first.json()  # the first answer
    assert client.get(f"/accounts/{account}", headers=ADMIN).json()["tier"] == "starter"
    reused = patch(client, account, {"tier": "free"}, **{"Idempotency-Key": "k1"})
    assert reused.status_code == 422 and "idempotency_key_reused" in reused.text
    assert count(AccountRevision) == 2


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def test_cli_update_account_through_the_same_write(client: TestClient):
    acct = new_account(client, "starter", "2024-04-01T02:00:00+02:00")
    assert ticket(acct, "before") == "inbox"
    done = invoke("update-account", str(acct["account"]), "--tier", "enterprise", "--name", "Big")
    assert done.exit_code == 0, done.output
    assert "tier enterprise, new tickets: help_desk" in done.stdout
    assert ticket(acct, "after") == "help_desk"
    assert location_of_thread(acct, "before") == "inbox"
    for args, says in [
        (["--tier", "gold"], "tier: Input should be"),
        ([], "nothing to change"),
        (["--name", ""], "name: String should have at least 1"),
    ]:
        refused = invoke("update-account", str(acct["account"]), *args)
        assert refused.exit_code == 2 and refused.stdout == "", refused.output
        assert len(refused.stderr.splitlines()) == 1 and says in refused.stderr, refused.stderr
    missing = invoke("update-account", "999999", "--tier", "free")
    assert missing.exit_code == 2 and "account 999999 not found" in missing.stderr
    with reading() as session:
        revision = session.scalars(select(AccountRevision)).one()
    assert revision.before == {"name": "acme", "tier": "starter"}
    assert revision.after == {"name": "Big", "tier": "enterprise"}
