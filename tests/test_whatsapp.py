"""WhatsApp Cloud API, in and out.

In: Meta's subscription handshake and signed JSON posts through the real HTTP app (``Ingress``),
then the worker's path (``pipeline.process_deliveries``). Out: replies sent by the state machine
through a stand-in for Graph API on loopback (tests/fake_whatsapp.py), and by real worker
processes, one of them killed while Meta holds its request: Cloud API cannot be asked whether it
has a message, so that reply ends failed ("outcome unknown") and is never sent twice.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from handlers import journal, pipeline
from handlers.channels.whatsapp import sign
from handlers.outbound import replies
from settings import get_settings
from store.blobs import blob_store
from store.db import reading, transaction
from store.models import (
    Contact,
    Delivery,
    DeliveryOutcome,
    MessageRevision,
    ProviderStatus,
    Thread,
)
from tests import chathelp
from tests.apihelp import ADMIN
from tests.chathelp import (
    chat_client,
    cli_ingest,
    journaled,
    later,
    messages,
    provider_status,
    reply,
    worker_killed_mid_send,
)
from tests.fake_whatsapp import ACCESS_TOKEN, PHONE_NUMBER_ID, FakeWhatsApp, fake_whatsapp
from tests.storehelp import new_account

FIXTURES = Path(__file__).parent / "fixtures" / "whatsapp"
APP_SECRET = "wa-app-secret-0123456789"
VERIFY_TOKEN = "wa-verify-token"  # the handshake fixture's
MARIA = "+351910000000"
TEXT_ID = "wamid.SEJnTU16VXhPVEV3TURBd01EQXdGUUlBRWhnVTNBNEYxQzJCN0Q5RTBBMTE="
FIXTURE_REPLY_ID = "wamid.SEJnTU16VXhPVEV3TURBd01EQXdGUUlBRWhnVU9VVEJPVU5EMDAwMDAwMDAwMQ=="


@pytest.fixture
def fake(db: None) -> Iterator[FakeWhatsApp]:
    with fake_whatsapp() as server:
        yield server


@pytest.fixture
def client(db: None) -> Iterator[TestClient]:
    with chat_client() as c:
        yield c


def wa_inbox(fake: FakeWhatsApp | None = None, timeout_s: float = 1.0, **secrets: Any) -> int:
    config = None
    if fake is not None:
        config = {
            "via": "whatsapp",
            "access_token": ACCESS_TOKEN,
            "phone_number_id": secrets.pop("phone_number_id", PHONE_NUMBER_ID),
            "api_url": fake.url,
            "timeout_s": timeout_s,
        }
    base = {"app_secret": APP_SECRET, "verify_token": VERIFY_TOKEN, "access_token": ACCESS_TOKEN}
    made = new_account(
        provider="whatsapp", channel="chat", secrets={**base, **secrets}, outbound=config
    )
    return made["inbox"]


def body(name: str, *replace: tuple[str, str]) -> bytes:
    """A saved webhook body, with some text replaced (ids, times)."""
    text = (FIXTURES / name).read_text()
    for old, new in replace:
        assert old in text, old
        text = text.replace(old, new)
    return text.encode()


def post(client: TestClient, inbox: int, raw: bytes, secret: str = APP_SECRET) -> Any:
    headers = {"Content-Type": "application/json", "X-Hub-Signature-256": sign(secret, raw)}
    return client.post(f"/webhooks/{inbox}", content=raw, headers=headers)


def process(answer: Any) -> dict[str, int]:
    assert answer.status_code == 200, answer.text
    return pipeline.process_deliveries(answer.json()["deliveries"], None)


# The subscription handshake ---------------------------------------------------------------------


def handshake(client: TestClient, inbox: int, **changes: str) -> Any:
    import json

    params = {**json.loads((FIXTURES / "handshake.json").read_text()), **changes}
    return client.get(f"/webhooks/{inbox}", params=params)


def test_the_subscription_handshake_answers_the_challenge_as_plain_text(client: TestClient):
    inbox = wa_inbox()
    answer = handshake(client, inbox)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    assert answer.text == "1158201444"
    assert journaled() == 0


def test_a_wrong_verify_token_or_mode_is_forbidden(client: TestClient):
    inbox = wa_inbox()
    wrong = handshake(client, inbox, **{"hub.verify_token": "guess"})
    assert wrong.status_code == 403 and "verify_token" in wrong.json()["message"]
    assert handshake(client, inbox, **{"hub.mode": "unsubscribe"}).status_code == 403
    unconfigured = new_account(provider="whatsapp", channel="chat", secrets={})["inbox"]
    assert handshake(client, unconfigured).status_code == 401


def test_other_providers_take_no_get(client: TestClient):
    inbox = new_account(provider="twilio", channel="chat", secrets={"auth_token": "x"})["inbox"]
    assert handshake(client, inbox).status_code == 405


# Authenticity -----------------------------------------------------------------------------------


def test_a_bad_signature_is_refused_and_nothing_is_journaled(client: TestClient):
    inbox = wa_inbox()
    raw = body("text.json")
    assert post(client, inbox, raw, secret="another-app").status_code == 401
    tampered = raw.replace(b"1001", b"9999")
    headers = {"Content-Type": "application/json", "X-Hub-Signature-256": sign(APP_SECRET, raw)}
    assert client.post(f"/webhooks/{inbox}", content=tampered, headers=headers).status_code == 401
    sha1 = {"Content-Type": "application/json", "X-Hub-Signature": "sha1=0000"}
    unsigned = client.post(f"/webhooks/{inbox}", content=raw, headers=sha1)
    assert unsigned.status_code == 401 and "X-Hub-Signature-256" in unsigned.json()["message"]
    no_secret = new_account(provider="whatsapp", channel="chat", secrets={})["inbox"]
    assert post(client, no_secret, raw).status_code == 401
    assert journaled() == 0 and messages(inbox) == []


def test_what_is_not_a_whatsapp_webhook_is_refused_after_its_signature(client: TestClient):
    inbox = wa_inbox()
    assert post(client, inbox, b"not json").status_code == 422
    page = body("text.json", ('"whatsapp_business_account"', '"page"'))
    assert post(client, inbox, page).status_code == 422
    no_number = body("text.json", ('"phone_number_id": "106540352242922"', '"x": "y"'))
    assert post(client, inbox, no_number).status_code == 422
    assert journaled() == 0


# Incoming messages ------------------------------------------------------------------------------


def test_a_text_message_is_stored_by_wamid_with_its_sender_in_e164(client: TestClient):
    inbox = wa_inbox()
    answer = post(client, inbox, body("text.json"))
    assert answer.status_code == 200  # Meta asks for 200
    process(answer)
    [m] = messages(inbox)
    assert (m.external_id, m.sender) == (f"whatsapp:{TEXT_ID}", MARIA)
    assert m.text == "Olá! A encomenda 1001 ainda não chegou."
    assert m.sent_at == datetime(2025, 11, 25, 10, 0, tzinfo=UTC)
    assert m.headers["chat"]["reply_to"] == {
        "phone_number_id": PHONE_NUMBER_ID,
        "to": "351910000000",
        "message_id": TEXT_ID,
    }
    with reading() as session:
        keys = session.scalars(select(Thread.thread_key)).all()
        contacts = session.execute(select(Contact.handle, Contact.name)).all()
    assert f"whatsapp:{PHONE_NUMBER_ID}:351910000000" in keys
    assert [tuple(c) for c in contacts] == [(MARIA, "Maria Souza")]


def test_one_person_on_whatsapp_cloud_and_on_twilio_sms_is_one_contact(client: TestClient):
    from handlers.channels.twilio import sign as twilio_sign
    from store.models import Inbox

    inbox = wa_inbox()
    with transaction() as session:  # a Twilio inbox of the same account
        account = session.get_one(Inbox, inbox).account_id
        sms = Inbox(
            account_id=account,
            name="sms",
            channel="chat",
            provider="twilio",
            secrets={"auth_token": "tw"},
        )
        session.add(sms)
        session.flush()
        sms_inbox = sms.id
    process(post(client, inbox, body("text.json")))
    form = (Path(__file__).parent / "fixtures" / "twilio" / "sms.txt").read_bytes().strip()
    url = f"http://testserver/webhooks/{sms_inbox}"
    signature = twilio_sign("tw", url, parse_qsl(form.decode(), keep_blank_values=True))
    headers = {"Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": signature}
    answer = client.post(f"/webhooks/{sms_inbox}", content=form, headers=headers)
    assert answer.status_code == 200, answer.text  # Twilio gets empty TwiML back
    pipeline.process_deliveries(journal.sweep(older_than_s=-1), None)
    with reading() as session:
        assert session.scalars(select(Contact.handle)).all() == [MARIA]


def test_meta_retrying_a_webhook_stores_its_message_once(client: TestClient):
    inbox = wa_inbox()
    first, again = post(client, inbox, body("text.json")), post(client, inbox, body("text.json"))
    assert process(first)["stored"] == 1
    assert process(again) == {"stored": 0, "duplicate": 1, "dead": 0, "gone": 0}
    assert len(messages(inbox)) == 1


def test_one_webhook_with_several_messages_and_a_status_is_one_delivery_each(
    client: TestClient,
):
    inbox = wa_inbox()
    answer = post(client, inbox, body("batch.json"))
    assert answer.json()["accepted"] == 3
    process(answer)
    location, choice = messages(inbox)
    assert location.text == "[location 38.722300, -9.139300 Entrega Praça do Comércio, Lisboa]"
    assert (choice.sender, choice.text) == ("+5511987650000", "Onde está o meu pedido?")
    assert location.conversation_id != choice.conversation_id  # two customers
    with reading() as session:
        names = sorted(str(n) for n in session.scalars(select(Contact.name)).all())
        status = session.execute(select(ProviderStatus.provider_message_id, ProviderStatus.state))
        assert [tuple(s) for s in status] == [(FIXTURE_REPLY_ID, "delivered")]
    assert names == ["João Lima", "Maria Souza"]


def test_reactions_and_our_own_messages_echoed_store_nothing(client: TestClient):
    inbox = wa_inbox()
    for name in ("echo.json", "reaction.json"):
        answer = post(client, inbox, body(name))
        assert answer.status_code == 200 and answer.json()["accepted"] == 0, answer.text
    assert journaled() == 0 and messages(inbox) == []


def test_saved_webhooks_go_through_inboxsync_ingest(db: None):
    inbox = wa_inbox()
    files = [FIXTURES / name for name in ("text.json", "batch.json", "echo.json")]
    printed = cli_ingest(inbox, "whatsapp", files)
    assert "queued 4 deliveries, refused 0 files" in printed
    with reading() as session:
        ids = list(session.scalars(select(Delivery.id)).all())
    pipeline.process_deliveries(ids, None)
    assert len(messages(inbox)) == 3


# Edits and deletions ----------------------------------------------------------------------------


def text_of(inbox: int) -> tuple[str, bool]:
    [m] = messages(inbox)
    return m.text, m.deleted_at is not None


EDITED = "Olá! A encomenda 1001 ainda não chegou (pedido feito a 20/11)."


def test_an_edit_updates_the_message_and_an_older_edit_after_it_changes_nothing(
    client: TestClient,
):
    inbox = wa_inbox()
    process(post(client, inbox, body("text.json")))
    process(post(client, inbox, body("edit.json")))
    assert text_of(inbox) == (EDITED, False)
    process(post(client, inbox, body("edit_earlier.json")))  # made before, arrived after
    assert text_of(inbox) == (EDITED, False)
    again = post(client, inbox, body("edit.json"))  # Meta retried it
    process(again)
    with reading() as session:
        [delivery] = again.json()["deliveries"]
        assert session.get_one(DeliveryOutcome, delivery).state == "duplicate"
        assert session.scalar(select(func.count()).select_from(MessageRevision)) == 2
    assert text_of(inbox) == (EDITED, False)


def test_an_edit_that_arrives_before_its_message_waits_for_it(client: TestClient):
    inbox = wa_inbox()
    process(post(client, inbox, body("edit.json")))
    process(post(client, inbox, body("text.json")))
    assert text_of(inbox) == (EDITED, False)


def test_a_deletion_is_final(client: TestClient):
    inbox = wa_inbox()
    process(post(client, inbox, body("text.json")))
    process(post(client, inbox, body("revoke.json")))
    assert text_of(inbox) == ("", True)
    # An edit dated after the deletion brings nothing back.
    later_edit = body("edit.json", ('"timestamp": "1764065100"', '"timestamp": "1764065900"'))
    process(post(client, inbox, later_edit))
    assert text_of(inbox) == ("", True)


# Media ------------------------------------------------------------------------------------------


def with_media(fake: FakeWhatsApp) -> None:
    fake.media["1037543291543636"] = (b"\xff\xd8\xff\xe0 a photo", "image/jpeg")
    fake.media["1298765432109876"] = (b"%PDF-1.7 the invoice", "application/pdf")


def test_media_is_fetched_in_two_steps_with_the_token_into_the_blob_store(
    client: TestClient, fake: FakeWhatsApp, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(get_settings(), "media_hosts", {"whatsapp": [r"127\.0\.0\.1"]})
    with_media(fake)
    inbox = wa_inbox(api_url=fake.url)
    process(post(client, inbox, body("media.json")))
    photo, invoice = messages(inbox)
    assert photo.text == "A caixa chegou assim" and invoice.text == ""
    [listed] = invoice.headers["chat"]["attachments"]
    assert (listed["filename"], listed["content_type"], listed["stored"]) == (
        "fatura-1001.pdf",
        "application/pdf",
        True,
    )
    assert listed["source"] == "whatsapp:media:1298765432109876"  # no token, no short-lived URL
    assert blob_store().read(listed["sha256"]) == b"%PDF-1.7 the invoice"
    paths = [path for path, _ in fake.auth_seen]
    assert paths == [
        "/1037543291543636",
        "/lookaside/1037543291543636",
        "/1298765432109876",
        "/lookaside/1298765432109876",
    ]
    assert {auth for _, auth in fake.auth_seen} == {f"Bearer {ACCESS_TOKEN}"}
    served = client.get(f"/messages/{photo.id}/attachments/0", headers=ADMIN)
    assert served.status_code == 200 and served.content == b"\xff\xd8\xff\xe0 a photo"


def test_a_media_url_on_a_host_not_allowed_is_not_fetched(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(get_settings(), "media_hosts", {"whatsapp": [r"127\.0\.0\.1"]})
    with fake_whatsapp(cdn_host="localhost") as fake:  # the lookup names another host
        with_media(fake)
        inbox = wa_inbox(api_url=fake.url)
        process(post(client, inbox, body("media.json")))
        assert [p for p, _ in fake.auth_seen if p.startswith("/lookaside/")] == []
    photo, _ = messages(inbox)
    assert photo.text == "A caixa chegou assim"  # kept, without its photo
    assert photo.headers["chat"]["attachments"][0]["stored"] is False
    assert "not one of the provider's media hosts" in photo.headers["chat"]["problems"][0]


def test_media_is_not_fetched_from_anywhere_but_metas_hosts(client: TestClient, fake: FakeWhatsApp):
    with_media(fake)
    inbox = wa_inbox(api_url=fake.url)  # no INBOXSYNC_MEDIA_HOSTS: graph.facebook.com only
    process(post(client, inbox, body("media.json")))
    assert fake.auth_seen == []
    assert all(not m.headers["chat"]["attachments"][0]["stored"] for m in messages(inbox))


# Replies and their statuses ---------------------------------------------------------------------


def conversation_with(client: TestClient, inbox: int) -> int:
    process(post(client, inbox, body("text.json")))
    return messages(inbox)[-1].conversation_id


def queue(conversation_id: int, text: str = "Já enviámos de novo.") -> int:
    return chathelp.queue(conversation_id, text)


def test_a_reply_goes_to_the_customer_from_the_number_they_wrote_to(
    client: TestClient, fake: FakeWhatsApp
):
    inbox = wa_inbox(fake, phone_number_id="555000111")  # the setting names another number
    rid = queue(conversation_with(client, inbox))
    assert replies.attempt(rid).outcome == "sent"
    [sent] = fake.messages
    assert (sent["phone_number_id"], sent["to"]) == (PHONE_NUMBER_ID, "351910000000")
    assert (sent["type"], sent["text"]) == ("text", "Já enviámos de novo.")
    done = reply(rid)
    assert sent["opaque"] == done.rfc_message_id  # our client_id, echoed in status webhooks
    assert (done.state, done.provider_message_id) == ("sent", sent["id"])


def test_status_webhooks_move_the_replys_provider_status_forward_only(
    client: TestClient, fake: FakeWhatsApp
):
    inbox = wa_inbox(fake)
    rid = queue(conversation_with(client, inbox))
    replies.attempt(rid)
    wamid = reply(rid).provider_message_id
    assert wamid is not None
    ours = (FIXTURE_REPLY_ID, wamid)
    process(post(client, inbox, body("status_delivered.json", ours)))
    assert provider_status(client, rid) == "delivered"
    process(post(client, inbox, body("status_sent.json", ours)))  # late: changes nothing
    assert provider_status(client, rid) == "delivered"
    process(post(client, inbox, body("status_read.json", ours)))
    assert provider_status(client, rid) == "read"
    assert len(messages(inbox)) == 2  # the customer's and our reply: statuses are no messages


def test_a_failed_status_names_metas_error(client: TestClient, fake: FakeWhatsApp):
    inbox = wa_inbox(fake)
    rid = queue(conversation_with(client, inbox))
    replies.attempt(rid)
    wamid = reply(rid).provider_message_id
    assert wamid is not None
    process(post(client, inbox, body("status_failed.json", (FIXTURE_REPLY_ID, wamid))))
    assert provider_status(client, rid) == "failed"
    with reading() as session:
        error = session.scalar(select(ProviderStatus.error))
    assert error == "WhatsApp error 131047: Re-engagement message"


@pytest.mark.parametrize("fault", ["429", "throttled"])
def test_a_rate_limit_is_retried_and_the_reply_goes_out_once(
    client: TestClient, fake: FakeWhatsApp, fault: str
):
    inbox = wa_inbox(fake)
    rid = queue(conversation_with(client, inbox))
    fake.faults.append(fault)
    first = replies.attempt(rid)
    assert first.outcome == "retry" and first.retry_in_s is not None
    if fault == "429":
        assert first.retry_in_s >= 7  # Retry-After honoured
    assert fake.messages == []
    assert replies.attempt(rid, now=later()).outcome == "sent"
    assert len(fake.messages) == 1


def test_a_closed_24_hour_window_fails_the_reply_at_once(client: TestClient, fake: FakeWhatsApp):
    inbox = wa_inbox(fake)
    conv = conversation_with(client, inbox)
    fake.faults.append("400")
    rid = queue(conv)
    assert replies.attempt(rid).outcome == "failed"
    assert "131047" in (reply(rid).error or "")
    too_long = queue(conv, text="x" * 4097)
    assert replies.attempt(too_long).outcome == "failed"
    assert "4096" in (reply(too_long).error or "")
    assert fake.messages == []


@pytest.mark.parametrize("fault", ["hang", "drop"])
def test_an_unanswered_send_ends_failed_outcome_unknown_and_is_not_sent_again(
    client: TestClient, fake: FakeWhatsApp, fault: str
):
    inbox = wa_inbox(fake)
    rid = queue(conversation_with(client, inbox))
    fake.faults.append(fault)  # Meta takes the message; its answer never arrives
    assert replies.attempt(rid).outcome == "retry"
    assert replies.attempt(rid, now=later()).outcome == "failed"
    done = reply(rid)
    assert done.state == "failed" and "outcome unknown" in (done.error or "")
    assert len(fake.messages) == 1
    # An agent who checked with the customer resends it: their decision, one click.
    replies.resend(rid, account_id=None)
    assert replies.attempt(rid).outcome == "sent"
    assert len(fake.messages) == 2


def test_worker_killed_while_meta_holds_the_send_the_reply_ends_failed_not_sent_twice(
    client: TestClient, fake: FakeWhatsApp
):
    inbox = wa_inbox(fake, timeout_s=20)
    conv = conversation_with(client, inbox)
    # Meta takes the message and holds the answer; the sweeper requeues it as uncertain and the
    # next attempt cannot ask Meta: it fails.
    done = worker_killed_mid_send(
        client, fake, conversation=lambda: conv, taken=lambda: fake.messages, ends="failed"
    )
    assert "outcome unknown" in done["error"]
    assert len(fake.messages) == 1, "the reply was sent twice"
    assert [p for m, p in fake.requests if m == "POST"] == [f"/{PHONE_NUMBER_ID}/messages"]
