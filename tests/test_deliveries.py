"""Knowing where a delivery went: a webhook's 202 names its deliveries and ``GET
/deliveries/{id}`` follows each (journaled → stored / duplicate / dead). With a worker running;
tests/test_pending.py has what is seen while no worker runs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.webhooks import Ingress
from tests.apihelp import eventually, message, post_webhook, setup_account


@pytest.fixture
def client(db: None, worker: None) -> Iterator[TestClient]:
    with TestClient(Ingress(create_app())) as c:
        yield c


def delivery(client: TestClient, acct: dict[str, Any], did: int) -> dict[str, Any]:
    got = client.get(f"/deliveries/{did}", headers=acct["auth"])
    assert got.status_code == 200, got.text
    return got.json()


def test_a_webhook_202_names_its_deliveries_and_each_can_be_followed(client):
    acct = setup_account(client)
    first = post_webhook(client, acct["inbox"], message("m1")).json()
    assert first["accepted"] == 1 and len(first["deliveries"]) == 1
    stored = eventually(
        lambda: (d := delivery(client, acct, first["deliveries"][0]))["state"] == "stored" and d
    )
    [msg] = stored["messages"]
    assert msg["duplicate"] is False and stored["processed_at"].endswith("Z")
    conv = client.get(f"/conversations/{msg['conversation_id']}", headers=acct["auth"]).json()
    assert [m["id"] for m in conv["messages"]] == [msg["message_id"]]
    again = post_webhook(client, acct["inbox"], message("m1")).json()["deliveries"][0]
    twice = eventually(lambda: (d := delivery(client, acct, again))["state"] != "journaled" and d)
    assert twice["state"] == "duplicate" and twice["messages"][0]["message_id"] == msg["message_id"]


def test_a_delivery_the_worker_cannot_read_is_dead_with_its_reason(client):
    acct = setup_account(client)
    # The generic adapter checks the shape at the edge; a journaled payload that no longer
    # normalizes (an inbox since deleted, a provider's format changed) is dead-lettered.
    from handlers import journal

    [did] = journal.journal([journal.delivery(acct["inbox"], "generic", {"text": "no sender"})])
    assert did is not None
    from workers import publish

    publish.ingest([did])
    dead = eventually(lambda: (d := delivery(client, acct, did))["state"] == "dead" and d)
    assert "sender" in dead["error"]


def test_a_delivery_is_never_404_while_a_worker_stores_it(client):
    """A worker deletes the journal row and writes the outcome in one commit; a reader that
    looked for the outcome first and the row second, with that commit between, saw neither and
    answered 404 for an accepted delivery (seen once in CI). Polled while they are stored."""
    acct = setup_account(client)
    ids = [
        post_webhook(client, acct["inbox"], message(f"r{i}", thread=f"r{i}")).json()["deliveries"][
            0
        ]
        for i in range(40)
    ]
    waiting = set(ids)
    while waiting:
        for did in sorted(waiting):
            if delivery(client, acct, did)["state"] != "journaled":  # 200, every time
                waiting.discard(did)
