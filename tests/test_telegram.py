"""Telegram, in and out: updates through the real HTTP app and the pipeline, replies through a
stand-in Bot API on loopback (tests/fake_telegram.py), one of them in worker processes killed
mid-send.

Fixtures (tests/fixtures/telegram/) follow the Bot API's Update and Message objects
(https://core.telegram.org/bots/api#update).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from handlers.channels import adapter_for
from handlers.channels.base import SignatureError, WebhookRequest
from handlers.outbound import replies
from settings import get_settings
from store.blobs import blob_store
from store.db import reading
from store.models import Conversation, Delivery, MessageRevision
from tests import chathelp
from tests.chathelp import (
    assert_names_the_field,
    assert_unauthorized,
    chat_client,
    cli_ingest,
    first_conversation,
    later,
    messages,
    process_journal,
    reply,
    worker_killed_mid_send,
)
from tests.fake_telegram import BOT_TOKEN, FakeTelegram, fake_telegram
from tests.storehelp import at, count, new_account

FIXTURES = Path(__file__).parent / "fixtures" / "telegram"
SECRET_TOKEN = "tg-hook_s3cret-7Hq2"
MARIA = 5120384411
GROUP = -1002233445566


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


@pytest.fixture
def fake(db: None) -> Iterator[FakeTelegram]:
    with fake_telegram() as bot_api:
        yield bot_api


@pytest.fixture
def client(db: None) -> Iterator[TestClient]:
    with chat_client() as c:
        yield c


def telegram_inbox(api_url: str = "http://127.0.0.1:9", **secrets: str) -> int:
    """A chat inbox on Telegram, replying and fetching files through ``api_url``."""
    return new_account(
        channel="chat",
        provider="telegram",
        secrets={
            "secret_token": SECRET_TOKEN,
            "bot_token": BOT_TOKEN,
            "api_url": api_url,
            **secrets,
        },
        outbound={"via": "telegram", "bot_token": BOT_TOKEN, "api_url": api_url, "timeout_s": 1.0},
    )["inbox"]


def post(client: TestClient, inbox: int, name: str, token: str | None = SECRET_TOKEN) -> Any:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["X-Telegram-Bot-Api-Secret-Token"] = token
    return client.post(f"/webhooks/{inbox}", content=fixture(name), headers=headers)


def deliver(inbox: int, *names: str) -> dict[str, int]:
    """The fixtures as the edge accepts them, stored as a worker stores them (one batch)."""
    return chathelp.deliver("telegram", inbox, [fixture(n) for n in names])


def request(body: bytes, **headers: str) -> WebhookRequest:
    return chathelp.request(body, headers)


def normalized(name: str) -> Any:
    return chathelp.normalized("telegram", fixture(name))


def queue(conversation_id: int, text: str = "Já reenviámos o pedido.") -> int:
    return chathelp.queue(conversation_id, text)


def customer_chat(fake: FakeTelegram, name: str = "message.json") -> int:
    """A Telegram inbox replying through ``fake`` and a conversation with the fixture; its id."""
    inbox = telegram_inbox(fake.url)
    deliver(inbox, name)
    [stored] = messages()
    return stored.conversation_id


# Authenticity ------------------------------------------------------------------------------------


def test_the_secret_token_header_is_checked_before_the_body_is_read():
    adapter = adapter_for("telegram")
    secrets = {"secret_token": SECRET_TOKEN}
    good = request(b"not even json", **{"x-telegram-bot-api-secret-token": SECRET_TOKEN})
    adapter.verify(good, secrets, 0.0)
    for given in (SECRET_TOKEN[:-1], SECRET_TOKEN + "x", "", SECRET_TOKEN.upper()):
        bad = request(b"{}", **{"x-telegram-bot-api-secret-token": given})
        with pytest.raises(SignatureError):
            adapter.verify(bad, secrets, 0.0)
    with pytest.raises(SignatureError, match="header"):
        adapter.verify(request(b"{}"), secrets, 0.0)
    with pytest.raises(SignatureError, match="configured"):
        adapter.verify(good, {}, 0.0)


def test_a_wrong_or_missing_secret_token_is_a_401_and_nothing_is_journaled(client):
    inbox = telegram_inbox()
    assert_unauthorized(post(client, inbox, "message.json", token=t) for t in ("wrong", None))
    assert post(client, inbox, "message.json").status_code == 202
    assert count(Delivery) == 1


def test_bodies_that_are_not_updates_are_a_422_naming_the_field(client):
    inbox = telegram_inbox()
    headers = {"X-Telegram-Bot-Api-Secret-Token": SECRET_TOKEN}
    message = json.loads(fixture("message.json"))
    too_big = {**message, "update_id": 2**70}
    no_date = {
        "update_id": 1,
        "message": {k: v for k, v in message["message"].items() if k != "date"},
    }
    cases = [(b"{not json", "json"), (json.dumps(too_big).encode(), "update_id")]
    cases.append((json.dumps(no_date).encode(), "message.date"))
    assert_names_the_field(
        (field, client.post(f"/webhooks/{inbox}", content=body, headers=headers))
        for body, field in cases
    )


# Normalization -----------------------------------------------------------------------------------


def test_a_private_message_is_keyed_by_chat_and_message_id_and_threads_by_chat():
    [m] = normalized("message.json")
    assert m.external_id == f"telegram:{MARIA}:1207"
    assert m.thread_key == f"telegram:{MARIA}"
    assert (m.sender, m.contact_name) == (f"telegram:{MARIA}", "Maria Souza")
    assert m.text == "Olá! O pedido 1001 ainda não chegou."
    assert m.sent_at == datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
    assert m.headers["chat"] == {
        "provider": "telegram",
        "reply_to": {"chat_id": MARIA, "chat_type": "private", "message_id": 1207},
        "username": "mariasouza",
    }
    assert m.media == []


def test_a_group_topic_message_keeps_the_topic_to_answer_in():
    [m] = normalized("message_group_topic.json")
    assert (m.thread_key, m.sender) == (f"telegram:{GROUP}", "telegram:6011223344")
    assert m.headers["chat"]["reply_to"] == {
        "chat_id": GROUP,
        "chat_type": "supergroup",
        "message_id": 88,
        "message_thread_id": 12,
    }
    assert m.headers["chat"]["chat_title"] == "Acme clientes"


def test_files_are_named_by_id_never_by_a_url_with_the_token():
    [photo] = normalized("message_photo.json")
    assert photo.text == "A caixa chegou assim, amassada."  # the caption
    [largest] = photo.media
    assert largest.provider_ref == "AgACAgQAAxkBAAIEsGdPhoto1280large"
    assert (largest.content_type, largest.filename) == ("image/jpeg", "photo-1208.jpg")
    [document] = normalized("message_document.json")[0].media
    assert (document.content_type, document.filename) == ("application/pdf", "nota-fiscal-1001.pdf")
    assert BOT_TOKEN not in largest.url + document.url


# Through the HTTP app and the pipeline -----------------------------------------------------------


def test_a_redelivered_update_is_stored_once(client):
    inbox = telegram_inbox()
    assert post(client, inbox, "message.json").status_code == 202
    assert process_journal()["stored"] == 1
    # Telegram got no 2xx in time and sends the same update again, twice at once.
    assert post(client, inbox, "message.json").status_code == 202
    assert post(client, inbox, "message.json").status_code == 202
    assert process_journal() == {"stored": 0, "duplicate": 2, "dead": 0, "gone": 0}
    assert [m.external_id for m in messages()] == [f"telegram:{MARIA}:1207"]


def test_a_chats_messages_share_one_conversation(client):
    inbox = telegram_inbox()
    for name in ("message.json", "message_document.json", "message_group_topic.json"):
        assert post(client, inbox, name).status_code == 202
    process_journal()
    by_thread = {m.external_id: m.conversation_id for m in messages()}
    private = {by_thread[f"telegram:{MARIA}:1207"], by_thread[f"telegram:{MARIA}:1209"]}
    assert len(private) == 1
    assert by_thread[f"telegram:{GROUP}:88"] not in private
    with reading() as session:
        conv = session.get_one(Conversation, private.pop())
        assert conv.inbox_id == inbox


def test_an_edit_updates_the_message_and_an_older_edit_after_it_changes_nothing(client):
    inbox = telegram_inbox()
    for name in ("message.json", "edited_message.json", "edited_message_earlier.json"):
        assert post(client, inbox, name).status_code == 202
        process_journal()
    [m] = messages()
    assert m.text == "Olá! O pedido 1001 ainda não chegou (já passaram 10 dias)."
    assert m.edited_at == datetime.fromtimestamp(1795600990, UTC)
    post(client, inbox, "edited_message.json")  # redelivered: its update_id was seen
    process_journal()
    with reading() as session:
        revisions = session.scalars(select(MessageRevision.event_id)).all()
    assert sorted(revisions) == ["telegram:update:804112304", "telegram:update:804112305"]


def test_what_is_not_a_customers_message_is_acknowledged_and_stores_nothing(client):
    """Telegram redelivers what it gets no 2xx for: a 2xx, nothing journaled. Bots' messages
    (ours, others', a group's anonymous admin) and a business account's own are not customers'."""
    inbox = telegram_inbox()
    for name in (
        "bot_message.json",
        "callback_query.json",
        "service_message.json",
        "business_message_from_owner.json",
        "business_message_from_bot.json",
    ):
        answer = post(client, inbox, name)
        assert answer.status_code == 202, name
        assert answer.json()["accepted"] == 0, name
    assert count(Delivery) == 0
    # The same updates fed from saved files, where no edge filtered them: nothing stored either.
    adapter = adapter_for("telegram")
    for name in ("bot_message.json", "business_message_from_owner.json", "callback_query.json"):
        assert adapter.normalize(inbox, at(0), json.loads(fixture(name))) == []


def test_a_business_chat_is_its_own_conversation_and_its_deletion_is_final(client):
    inbox = telegram_inbox()
    post(client, inbox, "message.json")
    post(client, inbox, "business_message.json")
    process_journal()
    bot_chat, business = messages()
    assert business.external_id == f"telegram:biz:AbCdEfGhIjKlMnOp_biz1:{MARIA}:5501"
    assert business.headers["chat"]["reply_to"]["business_connection_id"] == "AbCdEfGhIjKlMnOp_biz1"
    assert business.conversation_id != bot_chat.conversation_id
    with reading() as session:  # one person, telegram:<user id>: one contact
        contacts = session.scalars(select(Conversation.contact_id)).all()
    assert len(contacts) == 2 and len(set(contacts)) == 1
    post(client, inbox, "deleted_business_messages.json")
    process_journal()
    edit = json.loads(fixture("business_message.json"))
    edit["edited_business_message"] = {**edit.pop("business_message"), "edit_date": 1795609000}
    edit["update_id"] += 100
    headers = {"X-Telegram-Bot-Api-Secret-Token": SECRET_TOKEN}
    client.post(f"/webhooks/{inbox}", content=json.dumps(edit), headers=headers)
    process_journal()
    _, gone = messages()
    assert (gone.text, gone.deleted_at is not None) == ("", True)
    assert messages()[0].deleted_at is None  # the bot chat's message with another id space


# Media -------------------------------------------------------------------------------------------

JPEG = b"\xff\xd8\xff\xe0" + b"caixa amassada" * 100


def test_a_photo_is_fetched_through_getfile_into_the_blob_store(fake, monkeypatch):
    monkeypatch.setattr(get_settings(), "media_hosts", {"telegram": [r"127\.0\.0\.1"]})
    fake.add_file("AgACAgQAAxkBAAIEsGdPhoto1280large", "photos/file_7.jpg", JPEG)
    inbox = telegram_inbox(fake.url)
    assert deliver(inbox, "message_photo.json")["stored"] == 1
    [m] = messages()
    [listed] = m.headers["chat"]["attachments"]
    assert listed["stored"] is True
    assert (listed["filename"], listed["content_type"], listed["size"]) == (
        "photo-1208.jpg",
        "image/jpeg",
        len(JPEG),
    )
    assert blob_store().read(listed["sha256"]) == JPEG
    assert listed["source"] == "telegram:file:AgACAgQAAxkBAAIEsGdPhoto1280large"
    assert [r for r in fake.requests if r[1] in ("getFile", "file")] == [
        ("GET", "getFile"),
        ("GET", "file"),
    ]


def test_files_are_not_fetched_from_a_host_telegram_does_not_serve_from(fake, monkeypatch):
    monkeypatch.setattr(get_settings(), "media_hosts", {"telegram": [r"127\.0\.0\.1"]})
    fake.add_file("AgACAgQAAxkBAAIEsGdPhoto1280large", "photos/file_7.jpg", JPEG)
    # The inbox's api_url names another host (the same stand-in by another name).
    inbox = telegram_inbox(fake.url.replace("127.0.0.1", "localhost"))
    assert deliver(inbox, "message_photo.json")["stored"] == 1  # the text matters more
    [m] = messages()
    [listed] = m.headers["chat"]["attachments"]
    assert listed["stored"] is False
    assert "not one of the provider's media hosts" in m.headers["chat"]["problems"][0]
    assert fake.requests == []
    # And by default only Telegram's own host is allowed.
    monkeypatch.setattr(get_settings(), "media_hosts", {})
    inbox = telegram_inbox(fake.url)
    deliver(inbox, "message_document.json")
    assert fake.requests == []


# Replies -----------------------------------------------------------------------------------------


def test_a_reply_goes_into_the_customers_chat_once(fake):
    conv = customer_chat(fake)
    rid = queue(conv)
    assert replies.attempt(rid).outcome == "sent"
    assert replies.attempt(rid, now=later()).outcome == "skipped"
    [sent] = fake.sent
    assert sent == {"chat_id": MARIA, "text": "Já reenviámos o pedido.", "message_id": 500}
    done = reply(rid)
    assert (done.state, done.provider_message_id, done.attempts) == ("sent", "500", 1)


def test_a_reply_in_a_group_topic_stays_in_the_topic_and_quotes_the_customer(fake):
    conv = customer_chat(fake, "message_group_topic.json")
    assert replies.attempt(queue(conv, "Reabre segunda-feira.")).outcome == "sent"
    [sent] = fake.sent
    assert sent["chat_id"] == GROUP and sent["message_thread_id"] == 12
    assert sent["reply_parameters"] == {"message_id": 88, "allow_sending_without_reply": True}


def test_a_business_chat_is_answered_through_its_business_connection(fake):
    conv = customer_chat(fake, "business_message.json")
    assert replies.attempt(queue(conv)).outcome == "sent"
    [sent] = fake.sent
    assert sent["business_connection_id"] == "AbCdEfGhIjKlMnOp_biz1"
    assert sent["chat_id"] == MARIA


def test_a_429_waits_as_long_as_telegram_says_in_its_body(fake):
    conv = customer_chat(fake)
    rid = queue(conv)
    fake.retry_after = 90  # longer than any backoff the first retry would take
    fake.faults.append("429")
    before = datetime.now(UTC)
    first = replies.attempt(rid)
    assert first.outcome == "retry" and first.retry_in_s is not None and first.retry_in_s >= 90
    queued = reply(rid)
    assert queued.next_attempt_at is not None
    assert queued.next_attempt_at >= before + timedelta(seconds=90)
    assert replies.attempt(rid).outcome == "skipped"  # not due yet
    assert replies.attempt(rid, now=later()).outcome == "sent"
    assert len(fake.sent) == 1 and reply(rid).attempts == 2


def test_without_an_answer_the_reply_fails_as_outcome_unknown_and_is_never_sent_twice(fake):
    conv = customer_chat(fake)
    rid = queue(conv)
    fake.hang_s = 2.0
    fake.faults.append("hang")
    assert replies.attempt(rid).outcome == "retry"
    assert reply(rid).uncertain
    assert replies.attempt(rid, now=later()).outcome == "failed"
    failed = reply(rid)
    assert "outcome unknown" in (failed.error or "") and "Telegram" in (failed.error or "")
    assert len(fake.sent) == 1
    assert [r for r in fake.requests if r[1] == "sendMessage"] == [("POST", "sendMessage")]


def test_refused_replies_fail_at_once_with_telegrams_reason(fake):
    conv = customer_chat(fake)
    blocked = queue(conv, "Olá?")
    fake.faults.append("403")
    assert replies.attempt(blocked).outcome == "failed"
    assert "bot was blocked by the user" in (reply(blocked).error or "")
    too_long = queue(conv, "x" * 4097)
    assert replies.attempt(too_long).outcome == "failed"
    assert "4096" in (reply(too_long).error or "")
    assert fake.sent == [] and len(fake.requests) == 1  # the long one never left


def test_the_bot_token_is_never_logged_or_kept(fake, monkeypatch, caplog):
    """It is in every Bot API URL: not in a log record (urllib3 logs request lines at DEBUG),
    an error kept on a reply, or a file's listed source."""
    caplog.set_level(logging.DEBUG)
    monkeypatch.setattr(get_settings(), "media_hosts", {"telegram": [r"127\.0\.0\.1"]})
    fake.add_file("AgACAgQAAxkBAAIEsGdPhoto1280large", "photos/file_7.jpg", JPEG)
    conv = customer_chat(fake, "message_photo.json")
    replies.attempt(queue(conv))  # sent
    unreachable = telegram_inbox("http://127.0.0.1:9")
    deliver(unreachable, "message_document.json")  # getFile cannot connect
    [*_, other] = messages()
    failing = queue(other.conversation_id)
    assert replies.attempt(failing).outcome == "retry"
    kept = [reply(failing).error or "", json.dumps([m.headers for m in messages()])]
    logged = caplog.text + "\n".join(repr(vars(r)) for r in caplog.records)
    assert "sendMessage" in logged  # the request lines were logged, without the token
    for text in (*kept, logged):
        assert BOT_TOKEN not in text
        assert BOT_TOKEN.split(":")[1] not in text
    assert "127.0.0.1" in kept[0]


def test_cli_ingest_takes_saved_updates(fake):
    inbox = telegram_inbox(fake.url)
    names = ["message.json", "edited_message.json", "bot_message.json", "callback_query.json"]
    printed = cli_ingest(inbox, "telegram", [FIXTURES / n for n in names])
    assert "queued 2 deliveries, refused 0 files" in printed
    assert process_journal()["dead"] == 0
    [m] = messages()
    assert m.text.endswith("(já passaram 10 dias).")


# A worker killed mid-send -------------------------------------------------------------------------


def test_worker_killed_while_telegram_holds_the_request_never_sends_twice(
    client: TestClient, fake: FakeTelegram
):
    """Telegram cannot be asked whether it has a message: after the kill the reply ends
    ``failed`` with "outcome unknown", and the customer has exactly one message."""
    inbox = telegram_inbox(fake.url)

    def conversation() -> int:
        assert post(client, inbox, "message.json").status_code == 202
        return first_conversation()

    # Telegram takes the message and holds the answer; after the kill the next attempt cannot
    # ask Telegram, so it does not send.
    done = worker_killed_mid_send(
        client,
        fake,
        conversation=conversation,
        taken=lambda: fake.sent,
        ends="failed",
        queues="ingest,outbound",
    )
    assert "outcome unknown" in (done["error"] or "")
    assert done["attempts"] == 2
    assert len(fake.sent) == 1, "the reply was sent twice"
    assert [r for r in fake.requests if r[1] == "sendMessage"] == [("POST", "sendMessage")]
