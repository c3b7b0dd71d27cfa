"""Twilio Messaging (SMS, MMS, WhatsApp through Twilio), in and out.

In: signed form posts through the real HTTP app (``Ingress``), then the worker's path
(``pipeline.process_deliveries``). Out: replies sent by the state machine through a stand-in for
Twilio's API on loopback (tests/fake_twilio.py), and by real worker processes, one of them killed
while Twilio holds its request.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from handlers import journal, pipeline
from handlers.channels.phones import e164
from handlers.channels.twilio import sign
from handlers.outbound import replies
from handlers.outbound.twilio import TwilioSender
from schemas.outbound import OutboundChat, TwilioOutbound
from settings import get_settings
from store.blobs import blob_store
from store.db import reading, transaction
from store.models import (
    Contact,
    Delivery,
    DeliveryOutcome,
    ProviderStatus,
    Reply,
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
from tests.fake_twilio import (
    ACCOUNT_SID,
    API_KEY_SECRET,
    API_KEY_SID,
    AUTH_TOKEN,
    FakeTwilio,
    fake_twilio,
)
from tests.storehelp import new_account

FIXTURES = Path(__file__).parent / "fixtures" / "twilio"
URLENCODED = "application/x-www-form-urlencoded"
FIXTURE_REPLY_SID = "SM689daf599db8f711dd084d4f1ea67276"  # the status fixtures' MessageSid
MARIA = "+351910000000"


@pytest.fixture
def fake(db: None) -> Iterator[FakeTwilio]:
    with fake_twilio() as server:
        yield server


@pytest.fixture
def client(db: None) -> Iterator[TestClient]:
    with chat_client() as c:
        yield c


def outbound(fake: FakeTwilio, **extra: Any) -> dict[str, Any]:
    return {
        "via": "twilio",
        "account_sid": ACCOUNT_SID,
        "auth_token": AUTH_TOKEN,
        "api_url": fake.url,
        "status_callback_url": "https://support.example.com/webhooks/status",
        "timeout_s": 1.0,
        **extra,
    }


def twilio_inbox(fake: FakeTwilio | None = None, timeout_s: float = 1.0, **secrets: Any) -> int:
    config = outbound(fake, timeout_s=timeout_s) if fake is not None else None
    made = new_account(
        provider="twilio",
        channel="chat",
        secrets={"auth_token": AUTH_TOKEN, **secrets},
        outbound=config,
    )
    return made["inbox"]


def form(name: str, **changes: str) -> bytes:
    """A saved Twilio post, with some fields changed (order kept, as Twilio posts them) or
    added at the end."""
    pairs = parse_qsl((FIXTURES / name).read_text().strip(), keep_blank_values=True)
    added = [(k, v) for k, v in changes.items() if k not in dict(pairs)]
    return urlencode([(k, changes.get(k, v)) for k, v in pairs] + added).encode()


def post(
    client: TestClient,
    inbox: int,
    body: bytes,
    *,
    token: str = AUTH_TOKEN,
    signed_url: str | None = None,
    query: str = "",
) -> Any:
    """Post ``body`` as Twilio does: signed over the URL it calls and every parameter."""
    path = f"/webhooks/{inbox}" + (f"?{query}" if query else "")
    params = parse_qsl(body.decode(), keep_blank_values=True)
    signature = sign(token, signed_url or f"http://testserver{path}", params)
    headers = {"Content-Type": URLENCODED, "X-Twilio-Signature": signature}
    return client.post(path, content=body, headers=headers)


TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response/>'


def answered(answer: Any) -> None:
    """Twilio's answer: 200 with empty TwiML (nothing said back to the customer)."""
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/xml") and answer.text == TWIML


def process(answer: Any) -> dict[str, int]:
    """Store what the request journaled (every journaled delivery: the tests post one at a
    time; TwiML answers do not name deliveries)."""
    answered(answer)
    return pipeline.process_deliveries(journal.sweep(older_than_s=-1), None)


# Authenticity -----------------------------------------------------------------------------------


def test_signature_matches_twilios_documented_example():
    # https://www.twilio.com/docs/usage/webhooks/webhooks-security: auth token 12345.
    params = {  # in the order a form may post them: the signature sorts them by name
        "Digits": "1234",
        "To": "+18005551212",
        "From": "+14158675310",
        "Caller": "+14158675310",
        "CallSid": "CA1234567890ABCDE",
    }
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    assert sign("12345", url, params.items()) == "GvWf1cFY/Q7PnoempGyD5oXAezc="


def test_a_bad_signature_is_refused_and_nothing_is_journaled(client: TestClient):
    inbox = twilio_inbox()
    body = form("sms.txt")
    wrong_token = post(client, inbox, body, token="not-the-token")
    assert wrong_token.status_code == 401, wrong_token.text
    assert "signature" in wrong_token.json()["message"]
    # Signed, then changed on the way: the Body is covered by the signature.
    good = dict(parse_qsl(body.decode(), keep_blank_values=True))
    signature = sign(AUTH_TOKEN, f"http://testserver/webhooks/{inbox}", good.items())
    tampered = form("sms.txt", Body="send the refund to another account")
    headers = {"Content-Type": URLENCODED, "X-Twilio-Signature": signature}
    assert client.post(f"/webhooks/{inbox}", content=tampered, headers=headers).status_code == 401
    unsigned = client.post(f"/webhooks/{inbox}", content=body, headers={"Content-Type": URLENCODED})
    assert unsigned.status_code == 401
    # Twilio signs the URL it called: the same form signed for another URL is not this one's.
    elsewhere = post(client, inbox, body, signed_url=f"http://evil.example/webhooks/{inbox}")
    assert elsewhere.status_code == 401
    assert journaled() == 0 and messages(inbox) == []


def test_an_inbox_without_an_auth_token_accepts_nothing(client: TestClient):
    inbox = new_account(provider="twilio", channel="chat", secrets={})["inbox"]
    answer = post(client, inbox, form("sms.txt"))
    assert answer.status_code == 401 and "auth_token" in answer.json()["message"]


def test_behind_a_proxy_the_public_url_is_the_one_signed(client: TestClient):
    public = "https://support.example.com/inboxsync/webhooks/7"
    inbox = twilio_inbox(public_url=public)
    body = form("sms.txt")
    as_seen_here = post(client, inbox, body)
    assert as_seen_here.status_code == 401
    # The query string Twilio called is part of what it signed, after the public URL.
    answer = post(client, inbox, body, signed_url=f"{public}?kind=sms", query="kind=sms")
    answered(answer)


def test_a_form_with_more_fields_than_the_limit_is_refused_before_it_is_parsed(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(get_settings(), "max_form_parts", 30)
    inbox = twilio_inbox()
    flood = form("sms.txt") + b"".join(b"&x%d=1" % n for n in range(40))
    answer = post(client, inbox, flood)
    assert answer.status_code == 413, answer.text
    huge = form("sms.txt", Body="x" * 300_000)  # under the webhook limit, not a Twilio post
    assert post(client, inbox, huge).status_code == 413
    assert journaled() == 0


def test_a_field_given_twice_is_refused(client: TestClient):
    inbox = twilio_inbox()
    doubled = form("sms.txt") + b"&Body=something+else"
    answer = post(client, inbox, doubled)  # signed: Twilio's algorithm covers both values
    assert answer.status_code == 422 and "twice" in answer.json()["message"]
    assert journaled() == 0


# Incoming messages ------------------------------------------------------------------------------


def test_an_sms_is_stored_by_its_numbers_in_e164(client: TestClient):
    inbox = twilio_inbox()
    process(post(client, inbox, form("sms.txt")))
    [m] = messages(inbox)
    assert m.external_id == "twilio:SMe69cb7d2a5a055da80708bac36c369bf"
    assert (m.sender, m.text) == (MARIA, "Olá! A minha encomenda 1001 ainda não chegou.")
    chat = m.headers["chat"]
    assert chat["reply_to"] == {"to": MARIA, "from": "+14155550100"}
    assert chat["channel"] == "sms"
    with reading() as session:
        keys = session.scalars(select(Thread.thread_key).where(Thread.inbox_id == inbox)).all()
        handles = session.scalars(select(Contact.handle)).all()
    assert f"twilio:+14155550100:{MARIA}" in keys
    assert handles == [MARIA]


def test_phone_numbers_are_written_in_e164():
    assert e164("+1 (415) 555-0100") == e164("14155550100") == "+14155550100"
    assert e164("351 910 000 000") == MARIA
    for not_a_number in ("32665", "ACME", "", "+0"):
        with pytest.raises(ValueError):
            e164(not_a_number)


def test_a_short_code_sender_is_kept_as_twilio_wrote_it(client: TestClient):
    inbox = twilio_inbox()
    sid = "SM0c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f"
    process(post(client, inbox, form("sms.txt", From="32665", MessageSid=sid, SmsSid=sid)))
    [m] = messages(inbox)
    assert m.sender == "32665"


def test_twilio_retrying_a_message_stores_it_once(client: TestClient):
    inbox = twilio_inbox()
    assert process(post(client, inbox, form("sms.txt")))["stored"] == 1
    again = post(client, inbox, form("sms.txt"))  # no 2xx reached Twilio: it posts again
    assert process(again) == {"stored": 0, "duplicate": 1, "dead": 0, "gone": 0}
    assert len(messages(inbox)) == 1
    with reading() as session:
        states = session.scalars(select(DeliveryOutcome.state).order_by(DeliveryOutcome.id)).all()
    assert states == ["stored", "duplicate"]


def test_whatsapp_through_twilio_is_another_conversation_with_the_same_contact(
    client: TestClient,
):
    inbox = twilio_inbox()
    process(post(client, inbox, form("sms.txt")))
    process(post(client, inbox, form("whatsapp.txt")))
    sms, whatsapp = messages(inbox)
    assert sms.sender == whatsapp.sender == MARIA
    assert sms.conversation_id != whatsapp.conversation_id
    assert whatsapp.headers["chat"]["reply_to"] == {
        "to": f"whatsapp:{MARIA}",
        "from": "whatsapp:+14155550100",
    }
    with reading() as session:
        keys = set(session.scalars(select(Thread.thread_key)).all())
        contacts = session.execute(select(Contact.handle, Contact.name)).all()
    assert f"twilio:whatsapp:+14155550100:{MARIA}" in keys
    # First seen by SMS, which carries no name; WhatsApp's ProfileName does not rename it.
    assert [tuple(c) for c in contacts] == [(MARIA, None)]


def test_a_whatsapp_profile_name_names_a_new_contact(client: TestClient):
    inbox = twilio_inbox()
    process(post(client, inbox, form("whatsapp.txt")))
    with reading() as session:
        assert session.scalars(select(Contact.name)).all() == ["Maria Souza"]


def test_a_whatsapp_location_is_said_in_words(client: TestClient):
    inbox = twilio_inbox()
    process(post(client, inbox, form("whatsapp_location.txt")))
    [m] = messages(inbox)
    assert m.text == "[location 38.722300, -9.139300 Entrega Praça do Comércio, Lisboa]"


def test_saved_forms_go_through_inboxsync_ingest(db: None, tmp_path: Path):
    inbox = twilio_inbox()
    files = [FIXTURES / name for name in ("sms.txt", "whatsapp.txt", "status_queued.txt")]
    printed = cli_ingest(inbox, "twilio", files)
    assert "queued 2 deliveries, refused 0 files" in printed  # "queued" changes nothing
    with reading() as session:
        ids = list(session.scalars(select(Delivery.id)).all())
    pipeline.process_deliveries(ids, None)
    assert [m.sender for m in messages(inbox)] == [MARIA, MARIA]


# Media ------------------------------------------------------------------------------------------


PHOTO, INVOICE = "ME" + "a1" * 16, "ME" + "b2" * 16


def mms_with_media_on(fake: FakeTwilio, host: str = "127.0.0.1") -> bytes:
    sid = "MM2e5e9a0e6a5a3a1b6b4c0d9f8e7a6b5c"
    fake.media[PHOTO] = (b"\xff\xd8\xff\xe0 a jpeg", "image/jpeg")
    fake.media[INVOICE] = (b"%PDF-1.7 an invoice", "application/pdf")
    return form(
        "mms.txt",
        MessageSid=sid,
        SmsMessageSid=sid,
        SmsSid=sid,
        MediaUrl0=fake.media_url(sid, PHOTO, host),
        MediaUrl1=fake.media_url(sid, INVOICE, host),
    )


def test_mms_media_is_fetched_with_basic_auth_and_kept_in_the_blob_store(
    client: TestClient, fake: FakeTwilio, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(get_settings(), "media_hosts", {"twilio": [r"127\.0\.0\.1"]})
    inbox = twilio_inbox()
    process(post(client, inbox, mms_with_media_on(fake)))
    [m] = messages(inbox)
    listed = m.headers["chat"]["attachments"]
    assert [(a["content_type"], a["stored"]) for a in listed] == [
        ("image/jpeg", True),
        ("application/pdf", True),
    ]
    assert blob_store().read(listed[1]["sha256"]) == b"%PDF-1.7 an invoice"
    expected = "Basic " + base64.b64encode(f"{ACCOUNT_SID}:{AUTH_TOKEN}".encode()).decode()
    assert fake.media_auth == [expected, expected]
    assert fake.cdn_auth == [None, None]  # the credentials stay with api.twilio.com
    served = client.get(f"/messages/{m.id}/attachments/0", headers=ADMIN)
    assert served.status_code == 200 and served.content == b"\xff\xd8\xff\xe0 a jpeg"


def test_an_api_key_in_the_secrets_is_used_for_media_instead_of_the_auth_token(
    client: TestClient, fake: FakeTwilio, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(get_settings(), "media_hosts", {"twilio": [r"127\.0\.0\.1"]})
    inbox = twilio_inbox(api_key_sid=API_KEY_SID, api_key_secret=API_KEY_SECRET)
    process(post(client, inbox, mms_with_media_on(fake)))
    [m] = messages(inbox)
    assert [a["stored"] for a in m.headers["chat"]["attachments"]] == [True, True]
    key = "Basic " + base64.b64encode(f"{API_KEY_SID}:{API_KEY_SECRET}".encode()).decode()
    assert fake.media_auth == [key, key]


def test_credentials_go_only_to_twilios_media_resources(
    client: TestClient, fake: FakeTwilio, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(get_settings(), "media_hosts", {"twilio": [r"127\.0\.0\.1"]})
    inbox = twilio_inbox()
    fake.media[PHOTO] = (b"public bytes", "image/png")
    sid = "MM" + "c3" * 16
    body = form(
        "sms.txt", MessageSid=sid, SmsSid=sid, NumMedia="1", MediaUrl0=f"{fake.url}/cdn/{PHOTO}"
    )
    process(post(client, inbox, body))
    [m] = messages(inbox)
    assert m.headers["chat"]["attachments"][0]["stored"] is True
    assert fake.cdn_auth == [None]  # an allowed host, but not a Media resource: no credentials


def test_media_redirected_to_a_host_not_allowed_is_not_fetched(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(get_settings(), "media_hosts", {"twilio": [r"127\.0\.0\.1"]})
    with fake_twilio(cdn_host="localhost") as fake:  # its CDN answers under another name
        inbox = twilio_inbox()
        process(post(client, inbox, mms_with_media_on(fake)))
        assert fake.cdn_auth == []  # never asked
    [m] = messages(inbox)  # the message is kept: its text matters more than its photo
    assert m.text == "Foto da caixa danificada"
    assert [a["stored"] for a in m.headers["chat"]["attachments"]] == [False, False]
    assert "not one of the provider's media hosts" in m.headers["chat"]["problems"][0]


def test_media_on_a_host_not_allowed_is_not_fetched(client: TestClient, fake: FakeTwilio):
    inbox = twilio_inbox()  # Twilio's own hosts only: the fake on loopback is none of them
    process(post(client, inbox, mms_with_media_on(fake)))
    [m] = messages(inbox)
    assert [a["stored"] for a in m.headers["chat"]["attachments"]] == [False, False]
    assert fake.media_auth == []


# Replies and their statuses ---------------------------------------------------------------------


def conversation_with(client: TestClient, inbox: int, fixture: str) -> int:
    process(post(client, inbox, form(fixture)))
    conv = messages(inbox)[-1].conversation_id
    return conv


def queue(conversation_id: int, text: str = "Já enviámos de novo.") -> int:
    return chathelp.queue(conversation_id, text)


def test_a_reply_goes_back_through_the_app_and_numbers_the_customer_wrote_from(
    client: TestClient, fake: FakeTwilio
):
    inbox = twilio_inbox(fake)
    rid = queue(conversation_with(client, inbox, "whatsapp.txt"))
    assert replies.attempt(rid).outcome == "sent"
    [sent] = fake.messages
    assert (sent["to"], sent["from"]) == (f"whatsapp:{MARIA}", "whatsapp:+14155550100")
    assert sent["body"] == "Já enviámos de novo."
    assert sent["status_callback"] == "https://support.example.com/webhooks/status"
    done = reply(rid)
    assert (done.state, done.attempts, done.provider_message_id) == ("sent", 1, sent["sid"])


def status_form(name: str, sid: str) -> bytes:
    return form(name, MessageSid=sid, SmsSid=sid)


def test_status_callbacks_move_the_replys_provider_status_forward_only(
    client: TestClient, fake: FakeTwilio
):
    inbox = twilio_inbox(fake)
    rid = queue(conversation_with(client, inbox, "sms.txt"))
    replies.attempt(rid)
    sid = reply(rid).provider_message_id
    assert sid is not None and provider_status(client, rid) is None
    queued = post(client, inbox, status_form("status_queued.txt", sid))
    answered(queued)  # says nothing new
    assert journal.sweep(older_than_s=-1) == []
    process(post(client, inbox, status_form("status_delivered.txt", sid)))
    assert provider_status(client, rid) == "delivered"
    process(post(client, inbox, status_form("status_sent.txt", sid)))  # late: changes nothing
    assert provider_status(client, rid) == "delivered"
    process(post(client, inbox, status_form("status_read.txt", sid)))
    assert provider_status(client, rid) == "read"
    assert len(messages(inbox)) == 2  # the customer's and our reply: a status is no message


def test_an_undelivered_reply_shows_twilios_error_code(client: TestClient, fake: FakeTwilio):
    inbox = twilio_inbox(fake)
    rid = queue(conversation_with(client, inbox, "sms.txt"))
    replies.attempt(rid)
    sid = reply(rid).provider_message_id
    assert sid is not None
    process(post(client, inbox, status_form("status_undelivered.txt", sid)))
    assert provider_status(client, rid) == "failed"
    with reading() as session:
        error = session.scalar(select(ProviderStatus.error))
    assert error == "Twilio undelivered, error 30003"


def test_a_status_callback_of_our_own_message_stores_no_message(client: TestClient):
    inbox = twilio_inbox()
    for name in ("status_sent.txt", "status_delivered.txt", "status_read.txt"):
        process(post(client, inbox, form(name)))
    assert messages(inbox) == []
    with reading() as session:
        kept = session.execute(select(ProviderStatus.provider_message_id, ProviderStatus.state))
        assert [tuple(r) for r in kept] == [(FIXTURE_REPLY_SID, "read")]


def test_a_429_waits_as_long_as_twilio_says_and_the_reply_goes_out_once(
    client: TestClient, fake: FakeTwilio
):
    inbox = twilio_inbox(fake)
    rid = queue(conversation_with(client, inbox, "sms.txt"))
    fake.faults.append("429")  # Retry-After: 7
    first = replies.attempt(rid)
    assert first.outcome == "retry" and first.retry_in_s is not None and first.retry_in_s >= 7
    assert fake.messages == []
    assert replies.attempt(rid).outcome == "skipped"  # not due yet
    assert replies.attempt(rid, now=later()).outcome == "sent"
    assert len(fake.messages) == 1


@pytest.mark.parametrize("fault", ["hang", "drop"])
def test_an_unanswered_send_is_found_by_asking_twilio_not_sent_again(
    client: TestClient, fake: FakeTwilio, fault: str
):
    inbox = twilio_inbox(fake)
    rid = queue(conversation_with(client, inbox, "sms.txt"))
    fake.faults.append(fault)  # Twilio takes the message; its answer never arrives
    assert replies.attempt(rid).outcome == "retry"
    assert reply(rid).uncertain is True
    assert replies.attempt(rid, now=later()).outcome == "sent"
    [kept] = fake.messages
    assert reply(rid).provider_message_id == kept["sid"]
    assert ("GET", f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json") in fake.requests


def test_a_lookup_that_finds_nothing_sends_the_reply(client: TestClient, fake: FakeTwilio):
    inbox = twilio_inbox(fake)
    rid = queue(conversation_with(client, inbox, "sms.txt"))
    with transaction() as session:  # an earlier attempt whose outcome nobody learned
        session.execute(update(Reply).where(Reply.id == rid).values(uncertain=True))
    assert replies.attempt(rid).outcome == "sent"
    assert len(fake.messages) == 1
    assert [m for m, _ in fake.requests] == ["GET", "POST"]  # asked first, then sent


def test_the_lookup_does_not_take_an_older_message_with_the_same_text_for_this_reply(
    fake: FakeTwilio,
):
    config = TwilioOutbound.model_validate(outbound(fake))
    chat = OutboundChat(
        reply_key="k",
        client_id="isx-1",
        text="Obrigado!",
        target={"to": MARIA, "from": "+14155550100"},
        date=datetime.now(UTC),
    )
    sender = TwilioSender()
    sid = sender.send(chat, config)
    assert sender.find(chat, config) == sid
    yesterday = chat.model_copy(update={"date": chat.date + timedelta(days=1)})
    assert sender.find(yesterday, config) is None  # sent a day before this reply was queued
    elsewhere = chat.model_copy(update={"target": {"to": "+351910000001", "from": "+14155550100"}})
    assert sender.find(elsewhere, config) is None


def test_a_refused_reply_fails_at_once_with_twilios_reason(client: TestClient, fake: FakeTwilio):
    inbox = twilio_inbox(fake)
    conv = conversation_with(client, inbox, "sms.txt")
    fake.faults.append("400")
    rid = queue(conv)
    assert replies.attempt(rid).outcome == "failed"
    assert "21211" in (reply(rid).error or "")
    too_long = queue(conv, text="x" * 1601)
    assert replies.attempt(too_long).outcome == "failed"
    assert "1600" in (reply(too_long).error or "")
    assert fake.messages == []


def test_worker_killed_while_twilio_holds_the_send_the_next_one_finds_it(
    client: TestClient, fake: FakeTwilio
):
    inbox = twilio_inbox(fake, timeout_s=20)
    conv = conversation_with(client, inbox, "sms.txt")
    # Twilio takes the message and holds the answer.
    done = worker_killed_mid_send(
        client, fake, conversation=lambda: conv, taken=lambda: fake.messages, ends="sent"
    )
    assert len(fake.messages) == 1, "the reply was sent twice"
    assert done["attempts"] >= 2 and done["provider_message_id"] == fake.messages[0]["sid"]
    assert ("GET", f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json") in fake.requests
