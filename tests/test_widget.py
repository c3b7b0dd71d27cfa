"""The website widget, in and out: events signed the Standard Webhooks way through the real HTTP
app and the pipeline, replies posted to a site's server on loopback (tests/fake_widget.py) that
checks them with the ``standardwebhooks`` reference library and shows each ``webhook-id`` once;
one of them in worker processes killed mid-send.

Format and contract: schemas/widget.py. Fixtures: tests/fixtures/widget/ (``signed_request.json``
is a request signed with hmac and base64 alone, apart from the package our code signs with).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from handlers import journal, pipeline
from handlers.channels import adapter_for
from handlers.channels.base import SignatureError, WebhookRequest
from handlers.outbound import replies
from handlers.outbound.widget import sign
from settings import get_settings
from store.blobs import blob_store
from store.db import reading
from store.models import Delivery, MessageRevision, Reply
from tests import chathelp
from tests.apihelp import ADMIN
from tests.chathelp import (
    accepted,
    assert_names_the_field,
    assert_unauthorized,
    chat_client,
    cli_ingest,
    first_conversation,
    later,
    messages,
    process_journal,
    reply,
    request,
    worker_killed_mid_send,
)
from tests.fake_widget import SECRET as SITE_SECRET
from tests.fake_widget import FakeSite, fake_site
from tests.storehelp import count, new_account

FIXTURES = Path(__file__).parent / "fixtures" / "widget"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR = json.loads((FIXTURES / "signed_request.json").read_text())


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


@pytest.fixture
def site(db: None) -> Iterator[FakeSite]:
    with fake_site() as server:
        yield server


@pytest.fixture
def client(db: None) -> Iterator[TestClient]:
    with chat_client() as c:
        yield c


def widget_inbox(reply_url: str = "http://127.0.0.1:9/chat/replies") -> int:
    return new_account(
        channel="chat",
        provider="widget",
        secrets={"signing_secret": SECRET},
        outbound={
            "via": "widget",
            "reply_url": reply_url,
            "signing_secret": SITE_SECRET,
            "timeout_s": 1.0,
        },
    )["inbox"]


def signed(body: bytes, webhook_id: str, stamp: int | None = None) -> dict[str, str]:
    stamp = int(time.time()) if stamp is None else stamp
    return {
        "content-type": "application/json",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(stamp),
        "webhook-signature": sign(SECRET, webhook_id, stamp, body),
    }


def post(client: TestClient, inbox: int, body: bytes, webhook_id: str, **kw: Any) -> Any:
    return client.post(f"/webhooks/{inbox}", content=body, headers=signed(body, webhook_id, **kw))


def post_fixture(client: TestClient, inbox: int, name: str, webhook_id: str | None = None) -> Any:
    answer = post(client, inbox, fixture(name), webhook_id or f"evt_{name}")
    assert answer.status_code == 202, answer.text
    return answer


def normalized(name: str) -> Any:
    body = fixture(name)
    return chathelp.normalized("widget", body, signed(body, "evt_1"))


def visitor_chat(site: FakeSite) -> int:
    """A widget inbox replying to ``site`` and a conversation with the visitor's message."""
    inbox = widget_inbox(site.reply_url)
    body = fixture("message.json")
    [payload] = accepted("widget", body, signed(body, "evt_m1"))
    pipeline.ingest_deliveries([journal.delivery(inbox, "widget", payload)], None)
    [stored] = messages()
    return stored.conversation_id


def queue(conversation_id: int, text: str = "Chega amanhã!") -> int:
    return chathelp.queue(conversation_id, text)


# Authenticity -------------------------------------------------------------------------------------


def vector(**headers: str) -> WebhookRequest:
    return request(VECTOR["body"].encode(), {**VECTOR["headers"], **headers})


def test_a_request_signed_as_the_standard_says_passes_among_rotated_signatures():
    adapter = adapter_for("widget")
    secrets = {"signing_secret": VECTOR["secret"]}
    stamp = int(VECTOR["headers"]["webhook-timestamp"])
    adapter.verify(vector(), secrets, stamp)  # the second of two signatures matches
    only_old = VECTOR["headers"]["webhook-signature"].split()[0]
    with pytest.raises(SignatureError, match="no signature matches"):
        adapter.verify(vector(**{"webhook-signature": only_old}), secrets, stamp)
    tampered = request(VECTOR["body"].replace("1001", "1002").encode(), VECTOR["headers"])
    with pytest.raises(SignatureError, match="no signature matches"):
        adapter.verify(tampered, secrets, stamp)
    with pytest.raises(SignatureError, match="no signature matches"):
        adapter.verify(vector(**{"webhook-id": "msg_other"}), secrets, stamp)
    with pytest.raises(SignatureError, match="no signature matches"):
        adapter.verify(vector(), {"signing_secret": SECRET.replace("Mf", "Mg")}, stamp)
    with pytest.raises(SignatureError, match="configured"):
        adapter.verify(vector(), {}, stamp)


def test_the_timestamp_window_is_the_setting_not_five_minutes(monkeypatch):
    adapter = adapter_for("widget")
    secrets = {"signing_secret": VECTOR["secret"]}
    stamp = int(VECTOR["headers"]["webhook-timestamp"])
    for skew in (301, -301):
        with pytest.raises(SignatureError, match="tolerance window"):
            adapter.verify(vector(), secrets, stamp + skew)
    monkeypatch.setattr(get_settings(), "webhook_tolerance_seconds", 900)
    adapter.verify(vector(), secrets, stamp + 899)
    adapter.verify(vector(), secrets, stamp - 899)
    with pytest.raises(SignatureError, match="tolerance window"):
        adapter.verify(vector(), secrets, stamp + 901)


MALFORMED = [
    ({"webhook-id": ""}, "missing"),
    ({"webhook-timestamp": ""}, "missing"),
    ({"webhook-signature": ""}, "missing"),
    ({"webhook-id": "msg 1"}, "printable ASCII"),
    ({"webhook-id": "msg_é"}, "printable ASCII"),
    ({"webhook-id": "m" * 257}, "printable ASCII"),
    ({"webhook-timestamp": "1795600800.5"}, "unix seconds"),
    ({"webhook-timestamp": "-1795600800"}, "unix seconds"),
    ({"webhook-timestamp": "1_795_600_800"}, "unix seconds"),
    ({"webhook-timestamp": "9" * 400}, "unix seconds"),
    ({"webhook-signature": "v1"}, "no signature matches"),
    ({"webhook-signature": "v1,"}, "no signature matches"),
    ({"webhook-signature": "v1,!!not-base64!!"}, "no signature matches"),
    ({"webhook-signature": "v1a,c2lnbmF0dXJl v2,abc ,,, v1"}, "no signature matches"),
]


@pytest.mark.parametrize(("headers", "reason"), MALFORMED)
def test_malformed_headers_are_a_clean_refusal(headers: dict[str, str], reason: str):
    stamp = int(VECTOR["headers"]["webhook-timestamp"])
    with pytest.raises(SignatureError, match=reason):
        adapter_for("widget").verify(vector(**headers), {"signing_secret": VECTOR["secret"]}, stamp)


def test_a_secret_or_body_that_cannot_be_signed_is_a_clean_refusal():
    adapter = adapter_for("widget")
    stamp = int(VECTOR["headers"]["webhook-timestamp"])
    for bad_secret in ("whsec_", "whsec_@@@@", "not*base64"):
        with pytest.raises(SignatureError, match="signing_secret"):
            adapter.verify(vector(), {"signing_secret": bad_secret}, stamp)
    latin1 = request('{"text": "olá"}'.encode("latin-1"), VECTOR["headers"])
    with pytest.raises(SignatureError, match="not UTF-8"):
        adapter.verify(latin1, {"signing_secret": VECTOR["secret"]}, stamp)


def test_over_http_a_bad_signature_or_stale_timestamp_is_a_401_and_nothing_is_journaled(client):
    inbox = widget_inbox()
    body = fixture("message.json")
    bad = signed(body, "evt_1") | {"webhook-signature": "v1," + "A" * 44}
    stale = signed(body, "evt_1", stamp=int(time.time()) - 301)
    garbage = signed(body, "evt_1") | {"webhook-timestamp": "soon"}
    assert_unauthorized(
        client.post(f"/webhooks/{inbox}", content=body, headers=headers)
        for headers in (bad, stale, garbage, {"content-type": "application/json"})
    )
    assert post(client, inbox, body, "evt_1").status_code == 202
    assert post(client, inbox, body, "e" * 256).status_code == 202  # the longest id is a key


# The body -----------------------------------------------------------------------------------------


def test_a_message_threads_by_session_and_comes_from_the_visitors_email():
    [m] = normalized("message.json")
    assert m.external_id == "widget:ses_8f2c41d7:msg_0001"
    assert m.thread_key == "widget:ses_8f2c41d7"
    assert (m.sender, m.contact_name) == ("maria@example.com", "Maria Souza")
    assert m.sent_at == datetime(2026, 11, 25, 12, 59, 58, tzinfo=UTC)
    assert m.headers["chat"] == {
        "provider": "widget",
        "reply_to": {"session_id": "ses_8f2c41d7"},
        "visitor_id": "vis_5531",
    }
    [anonymous] = normalized("message_anonymous.json")
    assert (anonymous.sender, anonymous.contact_name) == ("widget:vis_7781", None)


def test_bodies_outside_the_format_are_a_422_naming_the_field(client):
    inbox = widget_inbox()
    good = json.loads(fixture("message.json"))
    data = good["data"]
    cases = {
        "type": {**good, "type": "message.created"},
        "message.data.extra": {**good, "data": {**data, "extra": 1}},
        "message.data.session_id": {**good, "data": {**data, "session_id": "a:b"}},
        "message.data.sent_at": {**good, "data": {**data, "sent_at": "2026-11-25T10:00:00"}},
        "message.data": {**good, "data": {**data, "text": ""}},
        "message.data.attachments.0.url": {
            **good,
            "data": {**data, "attachments": [{"url": "javascript:alert(1)"}]},
        },
    }
    assert_names_the_field(
        (
            (field, post(client, inbox, json.dumps(body).encode(), f"evt_{field}"))
            for field, body in cases.items()
        ),
        exact=True,
    )


# Retries, edits, deletions, statuses --------------------------------------------------------------


def test_a_retry_with_the_same_webhook_id_is_stored_once(client):
    inbox = widget_inbox()
    first = post_fixture(client, inbox, "message.json", "evt_retry")
    again = post_fixture(client, inbox, "message.json", "evt_retry")  # new timestamp and signature
    assert first.json()["accepted"] == 1
    assert again.json() == {"accepted": 0, "deliveries": [], "replay": True}
    assert count(Delivery) == 1
    assert process_journal()["stored"] == 1
    # Hours later the site retries again: the one-time key is forgotten, the message is not.
    assert journal.forget_tokens(older_than_s=-1) >= 1
    post_fixture(client, inbox, "message.json", "evt_retry")
    assert process_journal() == {"stored": 0, "duplicate": 1, "dead": 0, "gone": 0}
    assert [m.external_id for m in messages()] == ["widget:ses_8f2c41d7:msg_0001"]


def test_edits_apply_in_their_order_and_a_deletion_is_final(client):
    inbox = widget_inbox()
    for name in ("message.json", "message_edited.json", "message_edited_earlier.json"):
        post_fixture(client, inbox, name)
        process_journal()
    [m] = messages()
    assert m.text == "Olá! Onde está o meu pedido 1001? Já passaram 10 dias."
    journal.forget_tokens(older_than_s=-1)
    post_fixture(client, inbox, "message_edited.json")  # a late retry of an applied edit
    process_journal()
    with reading() as session:
        events = session.scalars(select(MessageRevision.event_id)).all()
    assert sorted(events) == [
        "widget:evt_message_edited.json",
        "widget:evt_message_edited_earlier.json",
    ]
    post_fixture(client, inbox, "message_deleted.json")
    newer = json.loads(fixture("message_edited.json"))
    newer["data"] |= {"text": "de volta?", "edited_at": "2026-11-25T11:00:00Z"}
    assert post(client, inbox, json.dumps(newer).encode(), "evt_newer").status_code == 202
    process_journal()
    [m] = messages()
    assert (m.text, m.deleted_at is not None) == ("", True)


def test_reply_statuses_only_move_forward(client, site):
    conv = visitor_chat(site)
    rid = queue(conv)
    assert replies.attempt(rid).outcome == "sent"
    client_id = reply(rid).provider_message_id
    with reading() as session:
        inbox = session.get_one(Reply, rid).inbox_id
    for name in ("reply_read.json", "reply_delivered.json"):  # read arrives first
        event = json.loads(fixture(name))
        event["data"]["client_id"] = client_id
        assert post(client, inbox, json.dumps(event).encode(), f"evt_{name}").status_code == 202
        process_journal()
    shown = client.get(f"/replies/{rid}", headers=ADMIN).json()
    assert (shown["provider_message_id"], shown["provider_status"]) == (client_id, "read")


# Attachments --------------------------------------------------------------------------------------


def test_attachments_are_fetched_from_allowed_hosts_only(client, site, monkeypatch):
    monkeypatch.setattr(get_settings(), "media_hosts", {"widget": [r"127\.0\.0\.1"]})
    site.files["caixa.jpg"] = ("image/jpeg", b"\xff\xd8\xff caixa")
    inbox = widget_inbox()
    event = json.loads(fixture("message_attachments.json"))
    allowed = f"{site.url}/uploads/caixa.jpg"
    elsewhere = allowed.replace("127.0.0.1", "localhost")
    event["data"]["attachments"][0]["url"] = allowed
    event["data"]["attachments"][1]["url"] = elsewhere
    assert post(client, inbox, json.dumps(event).encode(), "evt_files").status_code == 202
    assert process_journal()["stored"] == 1
    [m] = messages()
    kept, refused = m.headers["chat"]["attachments"]
    assert (kept["filename"], kept["stored"], kept["source"]) == ("caixa.jpg", True, allowed)
    assert blob_store().read(kept["sha256"]) == b"\xff\xd8\xff caixa"
    assert (refused["filename"], refused["stored"]) == ("tracker.gif", False)
    assert "not one of the provider's media hosts" in m.headers["chat"]["problems"][0]


def test_without_configured_hosts_no_attachment_is_fetched(client, site):
    site.files["caixa.jpg"] = ("image/jpeg", b"\xff\xd8\xff caixa")
    inbox = widget_inbox()
    event = json.loads(fixture("message_attachments.json"))
    event["data"]["attachments"] = [{"url": f"{site.url}/uploads/caixa.jpg"}]
    assert post(client, inbox, json.dumps(event).encode(), "evt_files").status_code == 202
    process_journal()
    [m] = messages()
    assert [a["stored"] for a in m.headers["chat"]["attachments"]] == [False]


# Replies ------------------------------------------------------------------------------------------


def test_a_reply_is_posted_signed_and_the_reference_library_verifies_it(site):
    conv = visitor_chat(site)
    rid = queue(conv)
    assert replies.attempt(rid).outcome == "sent"
    done = reply(rid)
    [(webhook_id, body)] = site.posts
    assert site.refused == []
    assert webhook_id == done.provider_message_id == done.rfc_message_id  # our client_id
    assert body == {
        "session_id": "ses_8f2c41d7",
        "client_id": webhook_id,
        "text": "Chega amanhã!",
        "sent_at": body["sent_at"],
    }
    assert datetime.fromisoformat(body["sent_at"]) == done.created_at
    assert replies.attempt(rid, now=later()).outcome == "skipped"
    assert len(site.posts) == 1


def test_a_429_is_retried_after_the_sites_retry_after(site):
    conv = visitor_chat(site)
    rid = queue(conv)
    site.retry_after = 90
    site.faults.append("429")
    first = replies.attempt(rid)
    assert first.outcome == "retry" and first.retry_in_s is not None and first.retry_in_s >= 90
    assert replies.attempt(rid).outcome == "skipped"
    assert replies.attempt(rid, now=later()).outcome == "sent"
    assert len(site.shown) == 1


def test_an_unanswered_post_is_posted_again_with_its_webhook_id_and_shown_once(site):
    conv = visitor_chat(site)
    rid = queue(conv)
    site.hang_s = 2.0
    site.faults.append("hang")
    assert replies.attempt(rid).outcome == "retry"
    assert reply(rid).uncertain
    assert replies.attempt(rid, now=later()).outcome == "sent"
    (first_id, first_body), (second_id, second_body) = site.posts
    assert first_id == second_id and first_body == second_body
    assert list(site.shown) == [first_id]
    assert (reply(rid).state, reply(rid).attempts) == ("sent", 2)


def test_a_refusal_fails_the_reply_and_a_bad_secret_is_refused_when_saved(client, site):
    conv = visitor_chat(site)
    rid = queue(conv)
    site.faults.append("400")
    assert replies.attempt(rid).outcome == "failed"
    assert "HTTP 400" in (reply(rid).error or "")
    with reading() as session:
        inbox = session.get_one(Reply, rid).inbox_id
    config = {"via": "widget", "reply_url": site.reply_url, "signing_secret": "plain-password"}
    answer = client.put(f"/inboxes/{inbox}/outbound", json=config, headers=ADMIN)
    assert answer.status_code == 422 and "signing_secret" in answer.text


# The OpenAPI document and the CLI -----------------------------------------------------------------


def test_the_openapi_document_describes_the_widget_body(client):
    doc = client.get("/openapi.json").json()
    body = doc["paths"]["/webhooks/{inbox_id}"]["post"]["requestBody"]
    generic, widget = body["content"]["application/json"]["schema"]["oneOf"]
    assert "external_id" in generic["required"]
    kinds = {
        variant["properties"]["type"]["const"]: variant["properties"]["data"]["required"]
        for variant in widget["oneOf"]
    }
    assert kinds == {
        "message": ["session_id", "message_id", "visitor", "sent_at"],
        "message.edited": ["session_id", "message_id", "text", "edited_at"],
        "message.deleted": ["session_id", "message_id", "deleted_at"],
        "reply.status": ["client_id", "state", "at"],
    }
    assert "#/$defs/" not in json.dumps(body)  # every schema inlined: nothing dangles


def test_cli_ingest_takes_saved_events_and_a_second_run_changes_nothing(db):
    inbox = widget_inbox()
    files = [FIXTURES / n for n in ("message.json", "message_edited.json")]
    for run in range(2):
        printed = cli_ingest(inbox, "widget", files)
        assert "queued 2 deliveries, refused 0 files" in printed
        counts = process_journal()
        assert counts["dead"] == 0
        assert counts["duplicate"] == (1 if run else 0)
    [m] = messages()
    assert m.text.endswith("Já passaram 10 dias.")
    with reading() as session:
        assert len(session.scalars(select(MessageRevision)).all()) == 1


# A worker killed mid-send -------------------------------------------------------------------------


def test_worker_killed_while_the_site_holds_the_request_shows_the_reply_once(
    client: TestClient, site: FakeSite
):
    """The reply is posted again after the kill, with the same ``webhook-id``: the site, which
    deduplicates by it, shows it once."""
    inbox = widget_inbox(site.reply_url)

    def conversation() -> int:
        post_fixture(client, inbox, "message.json")
        return first_conversation()

    # The site shows the reply and holds the answer.
    done = worker_killed_mid_send(
        client,
        site,
        conversation=conversation,
        taken=lambda: site.posts,
        ends="sent",
        queues="ingest,outbound",
    )
    assert done["attempts"] == 2
    assert [webhook_id for webhook_id, _ in site.posts] == [done["provider_message_id"]] * 2
    assert len(site.shown) == 1, "the site showed the reply twice"
