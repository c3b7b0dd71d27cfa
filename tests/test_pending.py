"""What the API answers while no worker runs: a delivery is ``journaled``; a write's
``Location`` answers ``pending`` (never 404) and a retry with the same Idempotency-Key publishes
nothing more; a pending write whose broker message was lost is published again by the sweeper.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.webhooks import Ingress
from settings import get_settings
from tests.apihelp import message, post_webhook, setup_account
from tests.storehelp import conversation


def queued(queue: str) -> int:
    """Messages waiting on the broker's queue (Redis or the embedded one)."""
    from workers.app import app
    from workers.status import depth

    with app.connection_for_write() as conn:
        return depth(conn.default_channel, queue)


@pytest.fixture
def idle_client(db: None) -> Iterator[TestClient]:
    """No worker consumes: writes stay pending. The API waits 0.2 s, not 20."""
    settings = get_settings().model_copy(update={"api_wait_timeout_s": 0.2})
    with TestClient(Ingress(create_app(settings))) as c:
        yield c


def delivery(client: TestClient, acct: dict[str, Any], did: int) -> dict[str, Any]:
    got = client.get(f"/deliveries/{did}", headers=acct["auth"])
    assert got.status_code == 200, got.text
    return got.json()


def test_a_delivery_not_processed_yet_is_journaled_and_hidden_from_other_accounts(idle_client):
    acct = setup_account(idle_client)
    other = setup_account(idle_client)
    did = post_webhook(idle_client, acct["inbox"], message("m1")).json()["deliveries"][0]
    assert delivery(idle_client, acct, did)["state"] == "journaled"
    assert idle_client.get(f"/deliveries/{did}", headers=other["auth"]).status_code == 404
    assert idle_client.get("/deliveries/999999", headers=acct["auth"]).status_code == 404


def test_a_pending_write_answers_pending_at_its_location_and_a_retry_publishes_nothing(
    idle_client,
):
    acct = setup_account(idle_client)
    conv = conversation(acct["inbox"], "t1")
    headers = {**acct["auth"], "Idempotency-Key": "close-1"}
    before = queued("inbox")
    first = idle_client.post(f"/conversations/{conv}/close", headers=headers)
    assert first.status_code == 202 and first.json()["status"] == "pending"
    location = first.headers["Location"]
    assert queued("inbox") == before + 1
    polled = idle_client.get(location, headers=acct["auth"])
    assert polled.status_code == 202 and polled.json()["status"] == "pending"  # not 404
    retry = idle_client.post(f"/conversations/{conv}/close", headers=headers)
    assert retry.status_code == 202 and retry.headers["Location"] == location
    assert queued("inbox") == before + 1  # nothing more on the broker
    other = idle_client.post(
        f"/conversations/{conv}/status", json={"status": "open"}, headers=headers
    )
    assert other.status_code == 422 and other.json()["error"] == "idempotency_key_reused"


def test_a_pending_write_whose_broker_message_was_lost_is_published_again(idle_client):
    """The API journals a write before it publishes (handlers/journal.py): the sweeper
    publishes it again, and once a worker runs it is applied once."""
    from workers.app import app
    from workers.periodic import round_once

    acct = setup_account(idle_client)
    conv = conversation(acct["inbox"], "t1")
    headers = {**acct["auth"], "Idempotency-Key": "close-2"}
    before = queued("inbox")
    idle_client.post(f"/conversations/{conv}/close", headers=headers)
    with app.connection_for_write() as conn:  # the broker loses it (a restart, say)
        conn.default_channel.queue_purge("inbox")
    settings = get_settings().model_copy(update={"sweep_after_s": -1})
    round_once(settings)
    assert queued("inbox") == 1 and before >= 0


def test_a_copy_pended_again_after_its_change_was_recorded_does_not_stay_pending(idle_client):
    """A retried request that looked between a worker's commit and its own read saw neither the
    change nor its pending entry and pended it again: the worker's duplicate run drops it, or
    the periodic round would publish it for ever (seen in the chaos run)."""
    from sqlalchemy import func, select

    from handlers import journal, pipeline
    from store.db import reading
    from store.models import PendingChange

    acct = setup_account(idle_client)
    conv = conversation(acct["inbox"], "t1")
    headers = {**acct["auth"], "Idempotency-Key": "close-3"}
    idle_client.post(f"/conversations/{conv}/close", headers=headers)
    with reading() as session:
        account_id = acct["account"]["id"]
        pending = session.scalars(
            select(PendingChange).where(PendingChange.account_id == account_id)
        ).one()
        change_id, queue, envelope = pending.id, pending.queue, dict(pending.envelope)
    assert pipeline.run_change(envelope)["outcome"] == "applied"
    assert journal.pend(change_id, account_id, queue, envelope)  # the late retry's entry
    assert pipeline.run_change(envelope)["duplicate"] is True
    with reading() as session:
        left = session.scalar(
            select(func.count()).select_from(PendingChange).where(PendingChange.id == change_id)
        )
    assert left == 0
