"""The whole message through the API: what the mail said (addresses, subject, sanitized HTML,
attachments with their URLs, problems, automatic), found by id, Message-ID or provider id;
contacts and their conversations; conversation lists with counts; ``trashed=any``; one copy of
a mail per inbox (README: "Duplicates across inboxes")."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.webhooks import Ingress
from tests.apihelp import ADMIN, eventually, message, post_webhook, setup_account

FIXTURES = Path(__file__).parent / "fixtures" / "email"
BEARER = "raw-s3cret"
RAW_INBOX = {
    "name": "mail",
    "channel": "email",
    "provider": "rfc822",
    "secrets": {"bearer_secret": BEARER},
}


@pytest.fixture
def client(db: None, worker: None) -> Iterator[TestClient]:
    with TestClient(Ingress(create_app())) as c:
        yield c


def post_raw(client: TestClient, inbox: int, raw: bytes) -> None:
    answer = client.post(
        f"/webhooks/{inbox}",
        content=raw,
        headers={"Content-Type": "message/rfc822", "Authorization": f"Bearer {BEARER}"},
    )
    assert answer.status_code == 202, answer.text


def listed(client: TestClient, acct: dict[str, Any], n: int, **params: Any) -> list[Any]:
    def enough() -> list[Any] | None:
        found = client.get("/conversations", params=params, headers=acct["auth"]).json()["items"]
        return found if len(found) == n and all(c["message_count"] for c in found) else None

    return eventually(enough)


def test_a_mail_is_shown_whole_with_its_attachments(client):
    acct = setup_account(client, inbox=RAW_INBOX)
    post_raw(client, acct["inbox"], (FIXTURES / "attachments.eml").read_bytes())
    [conv] = listed(client, acct, 1)
    [m] = client.get(f"/conversations/{conv['id']}", headers=acct["auth"]).json()["messages"]
    assert m["subject"] == "Invoice and photo" and m["message_id"] == "att-1@example.com"
    assert m["from"] == {"name": "Bruno", "email": "bruno@example.com"}
    assert m["to"] == [{"name": "", "email": "support@acme.test"}]
    assert "cid:photo1@example.com" in m["html"]
    names = [(a["filename"], a["inline"], a["stored"]) for a in m["attachments"]]
    assert names == [("photo.png", True, True), ("fatura nº 42.pdf", False, True)]
    pdf = client.get(m["attachments"][1]["url"], headers=acct["auth"])
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")
    assert len(m["attachments"][1]["sha256"]) == 64 and m["attachments"][1]["size"] == len(
        pdf.content
    )
    assert m["automatic"] is False and m["problems"] == []
    assert m["direction"] == "inbound" and m["stored_at"].endswith("Z")


def test_a_message_is_found_by_id_by_message_id_and_by_provider_id(client):
    acct = setup_account(client, inbox=RAW_INBOX)
    post_raw(client, acct["inbox"], (FIXTURES / "plain_utf8.eml").read_bytes())
    [conv] = listed(client, acct, 1)
    [m] = client.get(f"/conversations/{conv['id']}", headers=acct["auth"]).json()["messages"]
    by_id = client.get(f"/messages/{m['id']}", headers=acct["auth"]).json()
    assert by_id == m
    found = client.get(
        "/messages", params={"message_id": f"<{m['message_id']}>"}, headers=acct["auth"]
    ).json()
    assert [x["id"] for x in found] == [m["id"]]
    generic = setup_account(client)
    post_webhook(client, generic["inbox"], message("prov-77"))
    listed(client, generic, 1)
    by_provider = client.get(
        "/messages", params={"provider_id": "prov-77"}, headers=generic["auth"]
    ).json()
    assert [x["external_id"] for x in by_provider] == ["prov-77"]
    # Another account sees none of it.
    assert client.get(f"/messages/{m['id']}", headers=generic["auth"]).status_code == 404
    none = client.get("/messages", params={"message_id": m["message_id"]}, headers=generic["auth"])
    assert none.json() == []
    assert client.get("/messages", headers=acct["auth"]).status_code == 422


def test_contacts_list_their_conversations_and_lists_count_messages(client):
    acct = setup_account(client)
    for i, (sender, thread) in enumerate(
        [("Ana@Example.com", "a1"), ("ana@example.com", "a2"), ("bo@example.com", "b1")]
    ):
        post_webhook(client, acct["inbox"], message(f"m{i}", thread=thread, sender=sender))
    post_webhook(client, acct["inbox"], message("m9", thread="a1", sender="ana@example.com"))
    convs = eventually(
        lambda: (
            (found := client.get("/conversations", headers=acct["auth"]).json()["items"])
            and sum(c["message_count"] for c in found) == 4
            and found
        )
    )
    counts = {c["thread_key"]: c["message_count"] for c in convs}
    assert counts == {"a1": 2, "a2": 1, "b1": 1}
    [ana] = client.get(
        "/contacts", params={"handle": "ANA@example.com"}, headers=acct["auth"]
    ).json()["items"]
    assert ana["conversation_count"] == 2
    hers = client.get(
        "/conversations", params={"contact_id": ana["id"]}, headers=acct["auth"]
    ).json()["items"]
    assert sorted(c["thread_key"] for c in hers) == ["a1", "a2"]
    assert client.get(f"/contacts/{ana['id']}", headers=acct["auth"]).json() == ana


def test_trashed_any_lists_live_and_trashed(client):
    acct = setup_account(client)
    post_webhook(client, acct["inbox"], message("m1", thread="t1"))
    post_webhook(client, acct["inbox"], message("m2", thread="t2"))
    first, _ = listed(client, acct, 2)
    trashed = client.post(f"/conversations/{first['id']}/trash", headers=acct["auth"])
    assert trashed.status_code == 200, trashed.text
    ids = {
        flag: [
            c["id"]
            for c in client.get(
                "/conversations", params={"trashed": flag}, headers=acct["auth"]
            ).json()["items"]
        ]
        for flag in ("false", "true", "any")
    }
    assert ids["true"] == [first["id"]] and first["id"] not in ids["false"]
    assert sorted(ids["any"]) == sorted(ids["true"] + ids["false"])


def test_one_mail_to_two_inboxes_of_an_account_is_kept_once_in_each(client):
    """Per inbox: each inbox is its own queue with its own team; an account-wide dedupe would
    put the mail in whichever inbox won the race, a different one on each run."""
    acct = setup_account(client, inbox=RAW_INBOX)
    second = client.post(
        "/inboxes", json={**RAW_INBOX, "name": "sales"}, headers=acct["auth"]
    ).json()["id"]
    raw = (FIXTURES / "plain_utf8.eml").read_bytes()
    for inbox in (acct["inbox"], second, acct["inbox"], second):
        post_raw(client, inbox, raw)
    convs = listed(client, acct, 2)
    assert sorted(c["inbox_id"] for c in convs) == sorted([acct["inbox"], second])
    assert [c["message_count"] for c in convs] == [1, 1]
    mid = client.get(f"/conversations/{convs[0]['id']}", headers=acct["auth"]).json()["messages"][
        0
    ]["message_id"]
    copies = client.get("/messages", params={"message_id": mid}, headers=acct["auth"]).json()
    assert len(copies) == 2
    admin_view = client.get(
        "/messages", params={"message_id": mid, "inbox_id": second}, headers=ADMIN
    ).json()
    assert [m["inbox_id"] for m in admin_view] == [second]
