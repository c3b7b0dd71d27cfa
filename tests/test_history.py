"""``GET /tickets/{id}/history`` and ``GET /conversations/{id}/history``: every change and message
of the case in the rules' order, each with its cause and what it set, and for each field the event
that set it last ("why is this ticket closed?"). Through the API with a real worker."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.webhooks import Ingress
from tests.apihelp import ADMIN, eventually, message, post_webhook, setup_account


@pytest.fixture
def client(db: None, worker: None) -> Iterator[TestClient]:
    with TestClient(Ingress(create_app())) as c:
        yield c


def _conversations(client: TestClient, acct: dict[str, Any], n: int) -> list[int]:
    def found() -> list[int] | None:
        items = client.get("/conversations", headers=acct["auth"]).json()["items"]
        return [c["id"] for c in items] if len(items) == n else None

    return sorted(eventually(found))


def test_a_tickets_history_says_who_closed_it_by_which_rule_and_what_reopened_it(
    client: TestClient,
) -> None:
    acct = setup_account(client)
    auth = acct["auth"]
    post_webhook(client, acct["inbox"], message("a", thread="t1"))
    post_webhook(client, acct["inbox"], message("b", thread="t2"))
    a, b = _conversations(client, acct, 2)
    tid = client.post(f"/conversations/{a}/ticket", json={}, headers=auth).json()["ticket"]["id"]
    client.post(f"/tickets/{tid}/conversations", json={"conversation_id": b}, headers=auth)
    assert client.delete(f"/tickets/{tid}/conversations/{b}", headers=auth).status_code == 409
    closed = client.post(f"/tickets/{tid}/status", json={"status": "closed"}, headers=ADMIN)
    assert closed.json()["status"] == "applied"

    history = client.get(f"/tickets/{tid}/history", headers=auth)
    assert history.status_code == 200, history.text
    found = history.json()
    kinds = [e["kind"] for e in found["entries"]]
    assert kinds == [
        "message_received",
        "message_received",
        "create_ticket",
        "associate_conversation",
        "dissociate_conversation",
        "set_ticket_status",
    ], kinds
    by_kind = {e["kind"]: e for e in found["entries"]}
    create = by_kind["create_ticket"]
    assert create["cause"]["via"] == "api" and create["cause"]["token_id"] > 0
    assert create["cause"]["token_name"]
    refused = by_kind["dissociate_conversation"]
    assert refused["outcome"] == "rejected" and refused["rule"] == "T2" and refused["error"]
    close = by_kind["set_ticket_status"]
    assert close["cause"] == {"via": "api", "token": "admin"}
    s1 = {(e["id"], e["field"], e["value"], e["rule"]) for e in close["effects"]}
    assert {(a, "status", "closed", "S1"), (b, "status", "closed", "S1")} <= s1
    assert found["last_set_by"]["status"]["event_id"] == close["event_id"]

    # A message on a closed conversation reopens it (M1): the conversation's history says so.
    post_webhook(client, acct["inbox"], message("a2", thread="t1"))

    def reopened() -> dict[str, Any] | None:
        got = client.get(f"/conversations/{a}/history", headers=auth).json()
        return got if got["last_set_by"].get("status", {}).get("rule") == "M1" else None

    conv = eventually(reopened)
    last = conv["entries"][-1]
    assert last["kind"] == "message_received" and last["cause"]["via"] == "webhook"
    assert any(e["rule"] == "M1" and e["value"] == "open" for e in last["effects"])
    assert conv["last_set_by"]["status"]["event_id"] == last["event_id"]


def test_history_is_the_callers_own(client: TestClient) -> None:
    acct, other = setup_account(client), setup_account(client)
    post_webhook(client, acct["inbox"], message("a", thread="t1"))
    (a,) = _conversations(client, acct, 1)
    tid = client.post(f"/conversations/{a}/ticket", json={}, headers=acct["auth"]).json()["ticket"][
        "id"
    ]
    for path in (f"/tickets/{tid}/history", f"/conversations/{a}/history"):
        assert client.get(path, headers=other["auth"]).status_code == 404
        assert client.get(path, headers=ADMIN).status_code == 200
    missing = client.get("/tickets/999999999/history", headers=acct["auth"])
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
