"""Replies end to end: the HTTP API queues, real ``inboxsync worker`` processes send.

The second test kills the worker with SIGKILL while the provider holds its request (the mail
is taken, the answer never comes back) and checks that the worker taking over asks the provider
instead of sending the mail a second time.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from handlers.outbound import replies
from tests.apihelp import eventually, setup_account
from tests.chathelp import chat_client, worker_killed_mid_send
from tests.fakeproviders import POSTMARK_TOKEN, FakeProviders, fake_providers
from tests.workerhelp import start_worker, stop

MAIL = (Path(__file__).parent / "fixtures" / "email" / "plain_utf8.eml").read_bytes()


@pytest.fixture
def fake(db: None) -> Iterator[FakeProviders]:
    with fake_providers() as providers:
        yield providers


@pytest.fixture
def client(db: None) -> Iterator[TestClient]:
    with chat_client() as c:
        yield c


def mail_inbox(client: TestClient, fake: FakeProviders) -> dict[str, Any]:
    """An account whose inbox takes raw mail and replies through the fake Postmark."""
    outbound = {
        "via": "postmark",
        "from": "Acme Support <support@acme.test>",
        "server_token": POSTMARK_TOKEN,
        "api_url": fake.url,
        "timeout_s": 20,
    }
    inbox = {
        "name": "support",
        "channel": "email",
        "provider": "rfc822",
        "secrets": {"bearer_secret": "raw-s3cret"},
        "outbound": outbound,
    }
    setup = setup_account(client, inbox=inbox)
    listed = client.get("/inboxes", headers=setup["auth"]).json()
    assert listed[0]["replies_via"] == "postmark"
    return setup


def customer_writes(client: TestClient, inbox: int, auth: dict[str, str]) -> int:
    """The customer's mail through the webhook; the id of the conversation a worker made."""
    answer = client.post(
        f"/webhooks/{inbox}",
        content=MAIL,
        headers={"Content-Type": "message/rfc822", "Authorization": "Bearer raw-s3cret"},
    )
    assert answer.status_code == 202, answer.text
    convs = eventually(
        lambda: client.get("/conversations", headers=auth).json()["items"], timeout=60
    )
    return int(convs[0]["id"])


def customer_wrote(client: TestClient, setup: dict[str, Any]) -> int:
    """As ``customer_writes``, with an ingest worker of its own for the while."""
    worker = start_worker("-Q", "ingest", "-c", "1")
    try:
        return customer_writes(client, setup["inbox"], setup["auth"])
    finally:
        stop(worker)


def test_reply_through_the_api_is_sent_once_by_a_worker(client: TestClient, fake: FakeProviders):
    setup = mail_inbox(client, fake)
    worker = start_worker("-Q", "ingest,outbound", "-c", "2")
    try:
        conv = customer_writes(client, setup["inbox"], setup["auth"])
        body = {"text": "Já enviámos de novo."}
        headers = {**setup["auth"], "Idempotency-Key": "reply-1"}
        first = client.post(f"/conversations/{conv}/replies", json=body, headers=headers)
        again = client.post(f"/conversations/{conv}/replies", json=body, headers=headers)
        assert first.status_code == again.status_code == 202, first.text
        assert first.json()["id"] == again.json()["id"]
        location = first.headers["location"]
        eventually(
            lambda: client.get(location, headers=setup["auth"]).json()["state"] == "sent",
            timeout=60,
        )
    finally:
        stop(worker)
    assert len(fake.sends("postmark")) == 1
    view = client.get(f"/conversations/{conv}", headers=setup["auth"]).json()
    [ours] = [m for m in view["messages"] if m["direction"] == "outbound"]
    assert (ours["delivery"], ours["reply_id"]) == ("sent", first.json()["id"])
    other = client.post(
        f"/conversations/{conv}/replies", json=body, headers={**headers, "Authorization": "x"}
    )
    assert other.status_code == 401


def test_api_refusals_say_what_is_wrong(client: TestClient, fake: FakeProviders):
    setup = mail_inbox(client, fake)
    conv = customer_wrote(client, setup)
    auth = setup["auth"]
    bad_to = client.post(
        f"/conversations/{conv}/replies", json={"text": "x", "to": ["nope"]}, headers=auth
    )
    assert bad_to.status_code == 422 and "to" in bad_to.json()["message"]
    empty = client.post(f"/conversations/{conv}/replies", json={"text": ""}, headers=auth)
    assert empty.status_code == 422
    missing = client.post("/conversations/999999/replies", json={"text": "x"}, headers=auth)
    assert missing.status_code == 404
    assert client.post("/replies/999999/resend", headers=auth).status_code == 404
    bad_config = client.put(
        f"/inboxes/{setup['inbox']}/outbound", json={"via": "pigeon"}, headers=auth
    )
    assert bad_config.status_code == 422
    sent = client.post(f"/conversations/{conv}/replies", json={"text": "x"}, headers=auth).json()
    not_failed = client.post(f"/replies/{sent['id']}/resend", headers=auth)
    assert not_failed.status_code == 409 and not_failed.json()["error"] == "not_failed"


def test_worker_killed_mid_send_the_next_one_asks_instead_of_sending_again(
    client: TestClient, fake: FakeProviders
):
    setup = mail_inbox(client, fake)
    conv = customer_wrote(client, setup)
    # Postmark takes the mail and holds the answer.
    done = worker_killed_mid_send(
        client,
        fake,
        conversation=lambda: conv,
        taken=lambda: fake.sends("postmark"),
        ends="sent",
        headers=setup["auth"],
    )
    assert len(fake.sends("postmark")) == 1, "the reply was sent twice"
    assert ("GET", "/messages/outbound") in fake.requests
    assert done["attempts"] >= 2
    assert replies.sweep() == []
