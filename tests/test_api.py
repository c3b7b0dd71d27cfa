"""The HTTP API end to end: a real Celery worker (in a thread) on the configured broker.

On CI that is Redis and PostgreSQL; locally the embedded SQLite broker and store.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from api.app import create_app
from api.batcher import Batcher
from api.webhooks import Ingress
from handlers import journal, pipeline
from store.db import reading
from store.models import DeadLetter, Delivery, Message
from tests.apihelp import ADMIN, eventually, message, post_webhook, setup_account


@pytest.fixture
def client(db: None, worker: None) -> Iterator[TestClient]:
    """The app as ``inboxsync serve`` runs it: the webhook fast path in front of FastAPI."""
    with TestClient(Ingress(create_app())) as c:
        yield c


def conversations(client: TestClient, acct: dict[str, Any], **params: Any) -> list[dict[str, Any]]:
    response = client.get("/conversations", params=params, headers=acct["auth"])
    assert response.status_code == 200, response.text
    return response.json()["items"]


def wait_conversations(client: TestClient, acct: dict[str, Any], n: int) -> list[dict[str, Any]]:
    def enough() -> list[dict[str, Any]] | None:
        found = conversations(client, acct)
        return found if len(found) == n else None

    return eventually(enough)


def one_conversation(client: TestClient, acct: dict[str, Any]) -> dict[str, Any]:
    convs = eventually(lambda: conversations(client, acct))
    assert len(convs) == 1
    return convs[0]


def test_webhook_creates_conversation_and_redelivery_is_deduplicated(client: TestClient) -> None:
    acct = setup_account(client)
    for _ in range(3):
        assert post_webhook(client, acct["inbox"], message("m-1")).status_code == 202
    assert post_webhook(client, acct["inbox"], message("m-2")).status_code == 202
    conv = one_conversation(client, acct)
    full = eventually(
        lambda: (
            (c := client.get(f"/conversations/{conv['id']}", headers=acct["auth"]).json())[
                "messages"
            ]
            and len(c["messages"]) == 2
            and c
        )
    )
    assert [m["external_id"] for m in full["messages"]] == ["m-1", "m-2"]
    assert full["contact"] == "maria@example.com"
    with reading() as session:
        assert session.scalar(select(func.count()).select_from(Message)) == 2


def test_webhook_threads_by_key_and_by_sender(client: TestClient) -> None:
    acct = setup_account(client)
    post_webhook(client, acct["inbox"], message("a", thread="order-1"))
    post_webhook(client, acct["inbox"], message("b", thread="order-2"))
    post_webhook(client, acct["inbox"], message("c", thread=None, sender="Joao@Example.com"))
    post_webhook(client, acct["inbox"], message("d", thread=None, sender="joao@example.com"))
    convs = wait_conversations(client, acct, 3)
    assert sorted(c["thread_key"] for c in convs) == [
        "order-1",
        "order-2",
        "sender:joao@example.com",
    ]


def test_webhook_bad_signature_is_401_and_nothing_is_queued(client: TestClient) -> None:
    acct = setup_account(client)
    response = post_webhook(client, acct["inbox"], message("x"), secret="wrong")
    assert response.status_code == 401
    assert response.json()["error"] == "bad_signature"
    stale = post_webhook(client, acct["inbox"], message("y"), stamp=1_000_000)
    assert stale.status_code == 401
    assert "tolerance" in stale.json()["message"]
    unsigned = client.post(f"/webhooks/{acct['inbox']}", json=message("z"))
    assert unsigned.status_code == 401
    # A good delivery after them is stored, and the refused ones never were.
    post_webhook(client, acct["inbox"], message("ok"))
    conv = one_conversation(client, acct)
    got = client.get(f"/conversations/{conv['id']}", headers=acct["auth"]).json()
    assert [m["external_id"] for m in got["messages"]] == ["ok"]


def test_webhook_bad_payload_is_422_with_the_field(client: TestClient) -> None:
    acct = setup_account(client)
    bad = message("m")
    del bad["sender"]
    bad["sent_at"] = "yesterday"
    response = post_webhook(client, acct["inbox"], bad)
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "invalid_payload"
    assert "sender" in body["message"] and "sent_at" in body["message"]
    not_json = post_webhook(client, acct["inbox"], {})
    assert not_json.status_code == 422


def test_webhook_unknown_inbox_is_404_and_oversized_body_is_413(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert post_webhook(client, 987654, message("m")).status_code == 404
    # The settings object is shared by the whole run: changed for this test only.
    monkeypatch.setattr(client.app.state.settings, "max_body_bytes", 1000)  # type: ignore[attr-defined]
    acct = setup_account(client)
    big = message("m")
    big["text"] = "x" * 2000
    response = post_webhook(client, acct["inbox"], big)
    assert response.status_code == 413
    assert response.json()["error"] == "too_large"


def test_broker_down_answers_503_and_nothing_is_acknowledged(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CELERY_BROKER_URL")  # Celery lets it override any app's broker
    dead = Celery("dead", broker="redis://127.0.0.1:1/0")  # nothing listens on port 1
    dead.conf.broker_connection_timeout = 0.5

    def enqueue(deliveries: list[dict[str, Any]]) -> None:  # api.app.enqueue, to a dead broker
        dead.send_task(
            pipeline.INGEST_TASK,
            args=[journal.journal(deliveries)],
            retry=True,
            retry_policy={"max_retries": 1, "interval_start": 0, "interval_step": 0.1},
        )

    acct = setup_account(client)
    client.app.state.batcher = Batcher(enqueue, max_items=10, window_s=0)  # type: ignore[attr-defined]
    response = post_webhook(client, acct["inbox"], message("m"))
    assert response.status_code == 503
    assert response.json()["error"] == "unavailable"
    assert response.headers["retry-after"]
    with reading() as session:
        assert session.scalar(select(func.count()).select_from(Message)) == 0
        # The journaled copy stays for the sweeper; the provider's retry will be deduplicated.
        assert session.scalar(select(func.count()).select_from(Delivery)) == 1


def test_R1_ticket_of_new_enterprise_account_goes_to_help_desk(client: TestClient) -> None:
    acct = setup_account(client, "enterprise", "2025-01-01T00:00:00Z")
    assert acct["account"]["ticket_location"] == "help_desk"
    post_webhook(client, acct["inbox"], message("m"))
    conv = one_conversation(client, acct)
    response = client.post(f"/conversations/{conv['id']}/ticket", json={}, headers=acct["auth"])
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["status"] == "applied"
    assert body["ticket"]["location"] == "help_desk"
    assert body["conversation"]["location"] == "help_desk"
    assert body["conversation"]["ticket_id"] == body["ticket"]["id"]
    listed = client.get("/tickets", params={"location": "help_desk"}, headers=acct["auth"]).json()[
        "items"
    ]
    assert [t["id"] for t in listed] == [body["ticket"]["id"]]


def test_R2_ticket_of_free_or_old_account_stays_in_inbox(client: TestClient) -> None:
    for tier, created in [("free", "2025-06-01T00:00:00Z"), ("enterprise", "2024-03-31T23:59:59Z")]:
        acct = setup_account(client, tier, created)
        post_webhook(client, acct["inbox"], message(f"m-{tier}"))
        conv = one_conversation(client, acct)
        body = client.post(
            f"/conversations/{conv['id']}/ticket", json={}, headers=acct["auth"]
        ).json()
        assert body["ticket"]["location"] == "inbox"
        assert body["conversation"]["location"] == "inbox"


def test_R1_R2_route_ticket_work_to_its_queue(client: TestClient) -> None:
    from schemas import changes as c
    from settings import get_settings

    new = setup_account(client, "professional", "2024-04-01T00:00:00Z")
    old = setup_account(client, "professional", "2024-03-01T00:00:00Z")
    for acct in (new, old):
        post_webhook(client, acct["inbox"], message("m"))
    new_conv, old_conv = one_conversation(client, new), one_conversation(client, old)
    with reading() as session:
        queue = pipeline.queue_for_action
        settings = get_settings()
        assert (
            queue(session, c.CreateTicket(conversation_id=new_conv["id"]), settings) == "helpdesk"
        )
        assert queue(session, c.CreateTicket(conversation_id=old_conv["id"]), settings) == "inbox"


def test_T1_idempotency_key_returns_first_result(client: TestClient) -> None:
    acct = setup_account(client)
    post_webhook(client, acct["inbox"], message("m"))
    conv = one_conversation(client, acct)
    headers = {**acct["auth"], "Idempotency-Key": "create-1"}
    first = client.post(f"/conversations/{conv['id']}/ticket", json={}, headers=headers)
    again = client.post(f"/conversations/{conv['id']}/ticket", json={}, headers=headers)
    assert first.status_code == again.status_code == 201
    assert first.json()["ticket"]["id"] == again.json()["ticket"]["id"]
    # Without the key, asking again is T1: the existing ticket, no second one.
    other = client.post(f"/conversations/{conv['id']}/ticket", json={}, headers=acct["auth"])
    assert other.json()["ticket"]["id"] == first.json()["ticket"]["id"]
    assert len(client.get("/tickets", headers=acct["auth"]).json()["items"]) == 1
    reused = client.post(
        f"/conversations/{conv['id']}/ticket", json={"priority": "high"}, headers=headers
    )
    assert reused.status_code == 422
    assert reused.json()["error"] == "idempotency_key_reused"


def test_idempotency_key_on_admin_writes(client: TestClient) -> None:
    headers = {**ADMIN, "Idempotency-Key": "acct-1"}
    body = {"name": "x", "tier": "free"}
    first = client.post("/accounts", json=body, headers=headers)
    second = client.post("/accounts", json=body, headers=headers)
    assert first.status_code == second.status_code == 201
    assert first.json() == second.json()
    assert len(client.get("/accounts", headers=ADMIN).json()) == 1


def test_rules_through_the_api(client: TestClient) -> None:
    acct = setup_account(client)
    post_webhook(client, acct["inbox"], message("a", thread="t1"))
    post_webhook(client, acct["inbox"], message("b", thread="t2"))
    a, b = (c["id"] for c in wait_conversations(client, acct, 2))
    auth = acct["auth"]
    tid = client.post(f"/conversations/{a}/ticket", json={}, headers=auth).json()["ticket"]["id"]
    assert client.post(
        f"/tickets/{tid}/conversations", json={"conversation_id": b}, headers=auth
    ).json()["ticket"]["conversation_ids"] == [a, b]
    # O1 / O2
    owner, other = acct["owners"]
    r = client.post(f"/conversations/{a}/owner", json={"owner_id": owner}, headers=auth).json()
    assert r["ticket"]["owner_id"] == owner
    r = client.post(f"/tickets/{tid}/owner", json={"owner_id": other}, headers=auth).json()
    assert r["ticket"]["owner_id"] == other
    assert client.get(f"/conversations/{a}", headers=auth).json()["owner_id"] == owner
    # T2
    refused = client.delete(f"/tickets/{tid}/conversations/{b}", headers=auth)
    assert refused.status_code == 409
    assert refused.json()["rule"] == "T2"
    # S1, then S2 with two conversations reopens none
    client.post(f"/tickets/{tid}/status", json={"status": "closed"}, headers=auth)
    assert {c["status"] for c in conversations(client, acct)} == {"closed"}
    client.post(f"/tickets/{tid}/status", json={"status": "waiting_on_us"}, headers=auth)
    assert {c["status"] for c in conversations(client, acct)} == {"closed"}
    # D1 + D2, then restore brings all back
    client.post(f"/conversations/{b}/trash", headers=auth)
    assert conversations(client, acct) == []
    assert client.get(f"/tickets/{tid}", headers=auth).json()["deleted"] is True
    client.post(f"/conversations/{b}/restore", headers=auth)
    assert len(conversations(client, acct)) == 2
    assert client.get(f"/tickets/{tid}", headers=auth).json()["deleted"] is False


def test_owner_of_another_account_is_rejected_422(client: TestClient) -> None:
    a, b = setup_account(client), setup_account(client)
    post_webhook(client, a["inbox"], message("m"))
    conv = one_conversation(client, a)
    response = client.post(
        f"/conversations/{conv['id']}/owner", json={"owner_id": b["owners"][0]}, headers=a["auth"]
    )
    assert response.status_code == 422
    assert response.json()["status"] == "rejected"


def test_token_of_another_account_gets_404(client: TestClient) -> None:
    a, b = setup_account(client), setup_account(client)
    post_webhook(client, a["inbox"], message("m"))
    conv = one_conversation(client, a)
    assert client.get(f"/conversations/{conv['id']}", headers=b["auth"]).status_code == 404
    assert conversations(client, b) == []
    response = client.post(f"/conversations/{conv['id']}/ticket", json={}, headers=b["auth"])
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"
    assert client.get("/tickets", headers=a["auth"]).json() == {"items": [], "next_after_id": None}
    assert client.get(f"/accounts/{a['account']['id']}", headers=b["auth"]).status_code == 404
    assert (
        client.post("/accounts", json={"name": "x", "tier": "free"}, headers=b["auth"]).status_code
        == 403
    )
    assert client.get("/tickets").status_code == 401
    assert client.get("/tickets", headers={"Authorization": "Bearer nope"}).status_code == 401


def test_bad_input_is_4xx_json_and_nothing_is_written(client: TestClient) -> None:
    acct = setup_account(client)
    post_webhook(client, acct["inbox"], message("m"))
    conv = one_conversation(client, acct)
    bad = client.post(
        f"/conversations/{conv['id']}/status", json={"status": "maybe"}, headers=acct["auth"]
    )
    assert bad.status_code == 422
    assert bad.json()["error"] == "invalid_request"
    assert "status" in bad.json()["message"]
    broken = client.post(
        f"/conversations/{conv['id']}/owner",
        content=b"{not json",
        headers={**acct["auth"], "Content-Type": "application/json"},
    )
    assert broken.status_code == 422
    assert (
        client.post("/accounts", json={"name": "x", "tier": "gold"}, headers=ADMIN).status_code
        == 422
    )
    assert client.get("/conversations/not-a-number", headers=acct["auth"]).status_code == 422
    assert (
        client.get(f"/conversations/{conv['id']}", headers=acct["auth"]).json()["status"] == "open"
    )


def test_poison_change_ends_in_dead_letter_and_worker_lives_on(client: TestClient) -> None:
    from settings import get_settings
    from workers.app import app

    app.send_task(
        pipeline.APPLY_TASK,
        args=[{"id": "poison-1", "nonsense": True}],
        queue=get_settings().queue_name("inbox"),
    )

    def dead_letter() -> DeadLetter | None:
        with reading() as session:
            return session.scalar(select(DeadLetter).where(DeadLetter.key == "poison-1"))

    dead = eventually(dead_letter)
    assert dead.error_type == "ValidationError"
    assert dead.payload["args"][0]["nonsense"] is True
    # The worker goes on working.
    acct = setup_account(client)
    post_webhook(client, acct["inbox"], message("after-poison"))
    one_conversation(client, acct)


def test_webhook_through_the_framework_route_too(db: None, worker: None) -> None:
    # Without the fast path (e.g. the app mounted elsewhere) the FastAPI route does the same.
    with TestClient(create_app()) as plain:
        acct = setup_account(plain)
        assert post_webhook(plain, acct["inbox"], message("m", thread=None)).status_code == 202
        assert post_webhook(plain, acct["inbox"], message("m"), secret="x").status_code == 401
        conv = one_conversation(plain, acct)
        assert conv["thread_key"] == "sender:maria@example.com"


def test_openapi_is_served(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert "/webhooks/{inbox_id}" in spec["paths"]
    assert "/conversations/{conversation_id}/ticket" in spec["paths"]
    # The bearer scheme is declared (the Authorize button of /docs) and used by the API routes.
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert spec["paths"]["/conversations"]["get"]["security"] == [{"bearer": []}]
    assert "security" not in spec["paths"]["/webhooks/{inbox_id}"]["post"]  # signed, not bearer
    for path in ("/conversations", "/tickets", "/contacts", "/dead-letters"):
        page = spec["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]
        ref = page["schema"]["$ref"].rsplit("/", 1)[-1]
        assert set(spec["components"]["schemas"][ref]["properties"]) == {"items", "next_after_id"}


def test_lists_are_pages_that_end_with_a_null_cursor(client: TestClient) -> None:
    acct = setup_account(client)
    for i in range(5):
        post_webhook(client, acct["inbox"], message(f"p{i}", thread=f"p{i}"))
    eventually(lambda: len(conversations(client, acct, limit=500)) == 5)
    seen: list[int] = []
    after, pages = 0, 0
    while after is not None:
        got = client.get(
            "/conversations", params={"limit": 2, "after_id": after}, headers=acct["auth"]
        )
        assert got.status_code == 200, got.text
        body = got.json()
        seen += [c["id"] for c in body["items"]]
        after, pages = body["next_after_id"], pages + 1
        assert after is None or after == body["items"][-1]["id"]
    assert pages == 3 and seen == sorted(seen) and len(seen) == 5
    exact = client.get("/conversations", params={"limit": 5}, headers=acct["auth"]).json()
    assert len(exact["items"]) == 5 and exact["next_after_id"] is None  # no empty last page
