"""Slack, in and out: Events API requests through the real HTTP app and the pipeline, replies
through a stand-in Slack Web API on loopback (tests/fake_slack.py), one of them in worker
processes killed mid-send.

Fixtures (tests/fixtures/slack/) follow Slack's event wrapper and message events
(https://api.slack.com/apis/events-api, https://api.slack.com/events/message); the signed
request is the worked example of https://api.slack.com/authentication/verifying-requests-from-slack.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from handlers import journal
from handlers.channels import adapter_for
from handlers.channels.base import PayloadError, SignatureError, WebhookRequest
from handlers.channels.slack import plain_text, sign, slack_time
from handlers.outbound import replies
from handlers.outbound.slack import SlackSender
from schemas.outbound import OutboundChat, SlackOutbound
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
from tests.fake_slack import BOT_TOKEN, FakeSlack, fake_slack
from tests.storehelp import at, count, new_account

FIXTURES = Path(__file__).parent / "fixtures" / "slack"
SIGNING_SECRET = "5c1e9a7b3d2f4e6a8b0c1d2e3f4a5b6c"
CHANNEL, DM, MARIA = "C06SUPPORT", "D06MARIADM", "U05MARIA01"
PARENT = "1795600800.123456"  # message.json: a top-level message, the thread it starts
IN_THREAD = "1795600860.000200"  # message_in_thread.json
BOX_PATH = "/files-pri/T06ACME7Q2-F07BOXPHOTO/download/box.jpg"
JPEG = b"\xff\xd8\xff\xe0" + b"box arrived crushed" * 60


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def loaded(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(fixture(name))
    return data


@pytest.fixture
def fake(db: None) -> Iterator[FakeSlack]:
    with fake_slack() as slack:
        yield slack


@pytest.fixture
def client(db: None) -> Iterator[TestClient]:
    with chat_client() as c:
        yield c


def slack_inbox(
    api_url: str = "http://127.0.0.1:9/api", timeout_s: float = 1.0, **secrets: str
) -> int:
    """A chat inbox on Slack, posting replies through ``api_url``."""
    return new_account(
        channel="chat",
        provider="slack",
        secrets={"signing_secret": SIGNING_SECRET, "bot_token": BOT_TOKEN, **secrets},
        outbound={
            "via": "slack",
            "bot_token": BOT_TOKEN,
            "api_url": api_url,
            "timeout_s": timeout_s,
        },
    )["inbox"]


def post(
    client: TestClient,
    inbox: int,
    body: bytes,
    *,
    secret: str = SIGNING_SECRET,
    stamp: str | None = None,
    **headers: str,
) -> Any:
    """``body`` as Slack posts it: signed now (or at ``stamp``) with ``secret``."""
    stamp = str(int(time.time())) if stamp is None else stamp
    signed = {
        "Content-Type": "application/json",
        "X-Slack-Request-Timestamp": stamp,
        "X-Slack-Signature": sign(secret, stamp, body),
    }
    return client.post(f"/webhooks/{inbox}", content=body, headers={**signed, **headers})


def request(body: bytes, **headers: str) -> WebhookRequest:
    return chathelp.request(body, headers)


def deliver(inbox: int, *bodies: bytes) -> dict[str, int]:
    return chathelp.deliver("slack", inbox, bodies)


def normalized(name: str) -> Any:
    return chathelp.normalized("slack", fixture(name))


def queue(conversation_id: int, text: str = "We're on it.") -> int:
    return chathelp.queue(conversation_id, text)


def customer_chat(fake: FakeSlack, name: str = "message.json", **inbox: Any) -> int:
    """A Slack inbox replying through ``fake`` and a conversation with the fixture; its id."""
    deliver(slack_inbox(fake.api_url, **inbox), fixture(name))
    [stored] = messages()
    return stored.conversation_id


def with_files_at(fake: FakeSlack, host: str | None = None) -> bytes:
    """message_file_share.json with its files on the stand-in (or on ``host``'s name for it)."""
    fake.add_file(BOX_PATH, JPEG, "image/jpeg")
    where = fake.url if host is None else fake.url.replace("127.0.0.1", host)
    return fixture("message_file_share.json").replace(b"https://files.slack.com", where.encode())


# Authenticity ------------------------------------------------------------------------------------


def test_slacks_published_signature_example_verifies_and_any_change_is_refused():
    example = loaded("signed_request.json")
    secret, body = example["signing_secret"], example["body"].encode()
    stamp = example["headers"]["X-Slack-Request-Timestamp"]
    assert sign(secret, stamp, body) == example["headers"]["X-Slack-Signature"]
    adapter, secrets, now = adapter_for("slack"), {"signing_secret": secret}, float(stamp)
    headers = {k.lower(): v for k, v in example["headers"].items()}
    adapter.verify(request(body, **headers), secrets, now)
    refused = [
        (request(body + b"&x=1", **headers), secrets, now, "does not match"),
        (request(body, **headers), {"signing_secret": secret[:-1] + "6"}, now, "does not match"),
        (request(body, **headers), secrets, now + 301, "tolerance"),
        (request(body, **headers), secrets, now - 301, "tolerance"),
        (request(body, **{**headers, "x-slack-request-timestamp": "soon"}), secrets, now, "unix"),
        (
            request(body, **{**headers, "x-slack-signature": "v1=" + "0" * 64}),
            secrets,
            now,
            "match",
        ),
        (request(body, **{"x-slack-request-timestamp": stamp}), secrets, now, "missing"),
        (request(body, **headers), {}, now, "configured"),
    ]
    for bad, given_secrets, at_time, why in refused:
        with pytest.raises(SignatureError, match=why):
            adapter.verify(bad, given_secrets, at_time)


def test_a_bad_signature_or_a_stale_timestamp_is_a_401_and_nothing_is_journaled(client):
    inbox = slack_inbox()
    body = fixture("message.json")
    stale = str(int(time.time()) - get_settings().webhook_tolerance_seconds - 5)
    assert_unauthorized(
        [
            post(client, inbox, body, secret="not-the-signing-secret"),
            post(client, inbox, body, stamp=stale),
            client.post(f"/webhooks/{inbox}", content=body, headers={"X-Slack-Signature": "v0=00"}),
        ]
    )
    answer = post(client, inbox, body)
    assert answer.status_code == 200, answer.text  # Slack wants a 200
    assert answer.json()["accepted"] == 1 and count(Delivery) == 1


def test_the_url_verification_handshake_is_answered_with_its_challenge_once_signed(client):
    inbox = slack_inbox()
    body = fixture("url_verification.json")
    answer = post(client, inbox, body)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"challenge": loaded("url_verification.json")["challenge"]}
    assert post(client, inbox, body, secret="someone-else").status_code == 401
    assert count(Delivery) == 0


def test_bodies_that_are_not_slack_events_are_a_422_naming_the_field(client):
    inbox = slack_inbox()
    message = loaded("message.json")
    no_ts = {**message, "event": {k: v for k, v in message["event"].items() if k != "ts"}}
    bad_ts = {**message, "event": {**message["event"], "ts": "yesterday"}}
    no_event_id = {k: v for k, v in message.items() if k != "event_id"}
    cases = [
        (b"{not json", "json"),
        (b"[1, 2]", "object"),
        (json.dumps(no_ts).encode(), "event.ts"),
        (json.dumps(bad_ts).encode(), "event.ts"),
        (json.dumps(no_event_id).encode(), "event_id"),
        (json.dumps({"type": "url_verification"}).encode(), "challenge"),
    ]
    assert_names_the_field((field, post(client, inbox, body)) for body, field in cases)


# Normalization -----------------------------------------------------------------------------------


def test_a_top_level_message_in_a_channel_starts_a_thread_of_its_own():
    [m] = normalized("message.json")
    assert m.external_id == f"slack:{CHANNEL}:{PARENT}"
    assert m.thread_key == f"slack:{CHANNEL}:{PARENT}"
    assert (m.sender, m.contact_name) == (f"slack:{MARIA}", "Maria Souza")
    assert m.text == (
        "Hi! Order #1001 (https://shop.acme.example/orders/1001) still hasn't arrived & tracking"
        " says <unknown>. @U07BOTACME can you check?"
    )
    assert m.sent_at == datetime(2026, 11, 25, 10, 0, 0, 123456, tzinfo=UTC)
    assert m.headers["chat"] == {
        "provider": "slack",
        "reply_to": {"channel": CHANNEL, "ts": PARENT, "thread_ts": PARENT},
        "channel_type": "channel",
    }
    [in_thread] = normalized("message_in_thread.json")
    assert in_thread.thread_key == m.thread_key
    assert in_thread.headers["chat"]["reply_to"]["thread_ts"] == PARENT


def test_slack_markup_is_shown_as_people_read_it_and_times_keep_their_microseconds():
    assert plain_text("<@U123> see <#C456|general> &amp; <!here>") == "@U123 see #general & @here"
    assert plain_text("<https://a.example/x|the doc> or <https://a.example/y>") == (
        "the doc (https://a.example/x) or https://a.example/y"
    )
    assert plain_text("<mailto:m@a.example|m@a.example> <!subteam^S1|@support>") == (
        "m@a.example @support"
    )
    assert (
        plain_text("1 &lt; 2 &amp;&amp; 3 &gt; 2, &amp;lt; stays") == "1 < 2 && 3 > 2, &lt; stays"
    )
    assert slack_time("1795600800.000001") == datetime(2026, 11, 25, 10, 0, 0, 1, tzinfo=UTC)


def test_a_thread_is_one_conversation_and_another_top_level_message_is_another(client):
    inbox = slack_inbox()
    for name in ("message.json", "message_in_thread.json", "message_other_topic.json"):
        assert post(client, inbox, fixture(name)).status_code == 200
    assert process_journal()["stored"] == 3
    by_id = {m.external_id: m for m in messages()}
    parent, in_thread = by_id[f"slack:{CHANNEL}:{PARENT}"], by_id[f"slack:{CHANNEL}:{IN_THREAD}"]
    other = by_id[f"slack:{CHANNEL}:1795601400.000300"]
    assert parent.conversation_id == in_thread.conversation_id != other.conversation_id
    assert (other.sender, parent.sender) == ("slack:U05JOAO002", f"slack:{MARIA}")


def test_a_dm_is_one_conversation_threads_and_all(client):
    inbox = slack_inbox()
    for name in ("message_dm.json", "message_dm_thread.json", "message.json"):
        assert post(client, inbox, fixture(name)).status_code == 200
    process_journal()
    dm = [m for m in messages() if m.external_id.startswith(f"slack:{DM}:")]
    assert len(dm) == 2 and dm[0].conversation_id == dm[1].conversation_id
    assert all(m.headers["chat"]["reply_to"] == {"channel": DM, "ts": m.provider_id} for m in dm)
    [channel] = [m for m in messages() if m.external_id.startswith(f"slack:{CHANNEL}:")]
    assert channel.conversation_id != dm[0].conversation_id
    with reading() as session:  # one person, slack:<user id>: one contact
        contacts = session.scalars(select(Conversation.contact_id)).all()
    assert len(contacts) == 2 and len(set(contacts)) == 1


# Retries -----------------------------------------------------------------------------------------


def test_a_slack_retry_of_an_event_is_stored_once(client):
    inbox = slack_inbox()
    body = fixture("message.json")
    first = post(client, inbox, body)
    assert first.status_code == 200 and first.json()["accepted"] == 1
    # No 2xx within 3 s (Slack thinks): the same event again, with its retry headers.
    for number in ("1", "2"):
        again = post(
            client,
            inbox,
            body,
            **{"X-Slack-Retry-Num": number, "X-Slack-Retry-Reason": "http_timeout"},
        )
        assert again.status_code == 200
        assert again.json() == {"accepted": 0, "deliveries": [], "replay": True}
    assert process_journal() == {"stored": 1, "duplicate": 0, "dead": 0, "gone": 0}
    # Slack's last retry comes 5 minutes on; had the journal forgotten the event id by then,
    # the message's identity (slack:<channel>:<ts>) still stores it once.
    journal.forget_tokens(older_than_s=-1)
    assert post(client, inbox, body, **{"X-Slack-Retry-Num": "3"}).json()["accepted"] == 1
    assert process_journal() == {"stored": 0, "duplicate": 1, "dead": 0, "gone": 0}
    assert [m.external_id for m in messages()] == [f"slack:{CHANNEL}:{PARENT}"]


# What is not a customer's message ----------------------------------------------------------------

NOT_MESSAGES = (
    "bot_echo.json",  # our own reply, coming back as an event
    "bot_echo_changed.json",  # and an update of it
    "bot_message.json",  # a legacy integration's
    "other_app_message.json",  # another app's bot user
    "channel_join.json",  # Slack's notice
    "message_changed_unfurl.json",  # Slack unfurling a link: not an edit
    "reaction_added.json",
    "app_rate_limited.json",
)


def test_echoes_of_bots_and_slacks_own_notices_are_answered_200_and_store_nothing(client):
    inbox = slack_inbox()
    for name in NOT_MESSAGES:
        answer = post(client, inbox, fixture(name))
        assert answer.status_code == 200, name
        assert answer.json()["accepted"] == 0, name
    assert count(Delivery) == 0
    # Saved payloads fed to the worker, where no edge filtered them: nothing either.
    adapter = adapter_for("slack")
    for name in ("bot_echo.json", "bot_echo_changed.json", "bot_message.json"):
        assert adapter.normalize(inbox, at(0), loaded(name)) == []


def test_a_message_of_our_bot_user_is_an_echo_even_without_a_bot_id():
    """The bot user Slack names in ``authorizations`` (signed): what a bot_user_id secret
    would say, without one to configure."""
    adapter = adapter_for("slack")
    echo = loaded("bot_echo.json")
    echo["event"] = {k: v for k, v in echo["event"].items() if k not in ("bot_id", "app_id")}
    assert adapter.accept(request(json.dumps(echo).encode())).payloads == []
    echo["authorizations"][0]["user_id"] = "U07SOMEBOT"  # another app's installation
    [payload] = adapter.accept(request(json.dumps(echo).encode())).payloads
    assert adapter.normalize(1, at(0), payload)[0].sender == "slack:U07BOTACME"


# Edits and deletions -----------------------------------------------------------------------------


def test_an_edit_updates_the_message_and_an_older_edit_after_it_changes_nothing(client):
    inbox = slack_inbox()
    for name in ("message.json", "message_changed.json", "message_changed_earlier.json"):
        assert post(client, inbox, fixture(name)).status_code == 200
        process_journal()
    [m] = messages()
    assert m.text == "Hi! Order #1001 still hasn't arrived (it's been 10 days now)."
    assert m.edited_at == slack_time("1795600990.000000")
    post(client, inbox, fixture("message_changed.json"), **{"X-Slack-Retry-Num": "1"})
    process_journal()
    with reading() as session:
        revisions = session.scalars(select(MessageRevision.event_id)).all()
    assert sorted(revisions) == ["slack:Ev07EDIT0001", "slack:Ev07EDIT0002"]


def test_a_deletion_is_final_and_a_later_edit_changes_nothing(client):
    inbox = slack_inbox()
    for name in ("message_in_thread.json", "message_deleted.json"):
        post(client, inbox, fixture(name))
        process_journal()
    late_edit = loaded("message_changed.json")
    late_edit["event"]["message"]["ts"] = IN_THREAD
    late_edit["event"]["message"]["edited"]["ts"] = "1795609999.000000"
    late_edit["event_id"] = "Ev07EDIT0099"
    post(client, inbox, json.dumps(late_edit).encode())
    process_journal()
    [gone] = messages()
    assert (gone.external_id, gone.text) == (f"slack:{CHANNEL}:{IN_THREAD}", "")
    assert gone.deleted_at is not None


def test_a_thread_parent_deleted_under_its_replies_becomes_a_tombstone_and_is_deleted(client):
    inbox = slack_inbox()
    for name in ("message.json", "message_in_thread.json", "message_tombstone.json"):
        post(client, inbox, fixture(name))
        process_journal()
    parent, child = messages()
    assert parent.deleted_at is not None and parent.text == ""
    assert child.deleted_at is None and child.text.startswith("It's order 1001")


# Media -------------------------------------------------------------------------------------------


def test_a_shared_file_is_fetched_with_the_bot_token_into_the_blob_store(fake, monkeypatch):
    monkeypatch.setattr(get_settings(), "media_hosts", {"slack": [r"127\.0\.0\.1"]})
    inbox = slack_inbox(fake.api_url)
    assert deliver(inbox, with_files_at(fake))["stored"] == 1
    [m] = messages()
    assert m.text == "Here's how the box arrived."
    [listed] = m.headers["chat"]["attachments"]
    assert listed["stored"] is True
    assert (listed["filename"], listed["content_type"], listed["size"]) == (
        "box.jpg",
        "image/jpeg",
        len(JPEG),
    )
    assert blob_store().read(listed["sha256"]) == JPEG
    # The file Slack hides (over the plan's history limit) is said, not silently dropped.
    assert m.headers["chat"]["problems"] == [
        "attachment F05OLDINVCE: Slack shares no download for it"
    ]
    assert fake.requests == [("GET", "file")]


def test_files_are_not_fetched_from_a_host_slack_does_not_serve_from(fake, monkeypatch):
    monkeypatch.setattr(get_settings(), "media_hosts", {"slack": [r"127\.0\.0\.1"]})
    inbox = slack_inbox(fake.api_url)
    assert deliver(inbox, with_files_at(fake, host="localhost"))["stored"] == 1  # the text stays
    [m] = messages()
    assert m.headers["chat"]["attachments"][0]["stored"] is False
    assert "not one of the provider's media hosts" in m.headers["chat"]["problems"][-1]
    assert fake.requests == []
    # And by default only files.slack.com is.
    monkeypatch.setattr(get_settings(), "media_hosts", {})
    deliver(slack_inbox(fake.api_url), with_files_at(fake))
    assert fake.requests == []


def test_slacks_sign_in_page_for_a_wrong_token_is_not_kept_as_the_file(fake, monkeypatch):
    monkeypatch.setattr(get_settings(), "media_hosts", {"slack": [r"127\.0\.0\.1"]})
    inbox = slack_inbox(fake.api_url, bot_token="xoxb-revoked-token")
    deliver(inbox, with_files_at(fake))
    [m] = messages()
    assert m.headers["chat"]["attachments"][0]["stored"] is False
    assert "sign-in page" in m.headers["chat"]["problems"][-1]
    assert fake.requests == [("GET", "file")]  # asked, and refused what came back


# Replies -----------------------------------------------------------------------------------------


def echo_of(posted: dict[str, Any]) -> bytes:
    """The event Slack sends for a message our bot posted."""
    event = loaded("bot_echo.json")
    event["event"].update(
        text=posted["text"], ts=posted["ts"], event_ts=posted["ts"], metadata=posted["metadata"]
    )
    event["event_id"] = "Ev07ECHO0077"
    return json.dumps(event).encode()


def test_a_reply_goes_into_the_customers_thread_once_and_its_echo_is_not_a_message(client, fake):
    conv = customer_chat(fake)
    rid = queue(conv, "Thanks Maria, we're checking with the carrier & will update you <here>.")
    assert replies.attempt(rid).outcome == "sent"
    assert replies.attempt(rid, now=later()).outcome == "skipped"
    [posted] = fake.posted
    done = reply(rid)
    assert (posted["channel"], posted["thread_ts"]) == (CHANNEL, PARENT)
    assert posted["text"] == (
        "Thanks Maria, we're checking with the carrier &amp; will update you &lt;here&gt;."
    )
    assert posted["metadata"] == {
        "event_type": "inboxsync_reply",
        "event_payload": {"client_id": done.rfc_message_id},
    }
    assert (done.state, done.attempts) == ("sent", 1)
    assert done.provider_message_id == f"slack:{CHANNEL}:{posted['ts']}"
    # Slack sends our reply back as an event: answered, and nothing new is stored.
    answer = post(client, slack_inbox(), echo_of(posted))
    assert answer.status_code == 200 and answer.json()["accepted"] == 0
    assert len(messages()) == 2  # the customer's and our reply


def test_a_dm_is_answered_in_the_dm_not_in_a_thread(fake):
    inbox = slack_inbox(fake.api_url)
    deliver(inbox, fixture("message_dm.json"), fixture("message_dm_thread.json"))
    conv = messages()[0].conversation_id
    assert replies.attempt(queue(conv)).outcome == "sent"
    [posted] = fake.posted
    assert posted["channel"] == DM and "thread_ts" not in posted


def test_a_429_waits_as_long_as_slacks_retry_after(fake):
    rid = queue(customer_chat(fake))
    fake.retry_after = 90  # longer than any backoff the first retry would take
    fake.faults.append("429")
    before = datetime.now(UTC)
    first = replies.attempt(rid)
    assert first.outcome == "retry" and first.retry_in_s is not None and first.retry_in_s >= 90
    queued = reply(rid)
    assert not queued.uncertain and queued.next_attempt_at is not None
    assert queued.next_attempt_at >= before + timedelta(seconds=90)
    assert replies.attempt(rid).outcome == "skipped"  # not due yet
    assert replies.attempt(rid, now=later()).outcome == "sent"
    assert len(fake.posted) == 1 and reply(rid).attempts == 2


def test_slacks_transient_errors_are_retried_without_asking_first(fake):
    rid = queue(customer_chat(fake))
    fake.faults.extend(["500", "service_unavailable"])
    assert replies.attempt(rid).outcome == "retry"
    assert replies.attempt(rid, now=later(1)).outcome == "retry"
    assert not reply(rid).uncertain
    assert replies.attempt(rid, now=later(2)).outcome == "sent"
    assert len(fake.posted) == 1
    assert [r for r in fake.requests if r[0] == "GET"] == []  # nothing to ask about


def test_refused_replies_fail_at_once_with_slacks_error(fake):
    conv = customer_chat(fake)
    for error in ("channel_not_found", "not_in_channel", "is_archived"):
        fake.faults.append(error)
        rid = queue(conv)
        assert replies.attempt(rid).outcome == "failed"
        assert error in (reply(rid).error or "")
    too_long = queue(conv, "x" * 40_001)
    assert replies.attempt(too_long).outcome == "failed"
    assert "40000" in (reply(too_long).error or "")
    assert fake.posted == [] and len(fake.requests) == 3  # the long one never left
    revoked = customer_chat_with_token(fake, "xoxb-revoked")
    assert replies.attempt(revoked).outcome == "failed"
    assert "invalid_auth" in (reply(revoked).error or "")


def customer_chat_with_token(fake: FakeSlack, token: str) -> int:
    inbox = new_account(
        channel="chat",
        provider="slack",
        secrets={"signing_secret": SIGNING_SECRET},
        outbound={"via": "slack", "bot_token": token, "api_url": fake.api_url, "timeout_s": 1.0},
    )["inbox"]
    deliver(inbox, fixture("message_other_topic.json"))
    [m] = [m for m in messages() if m.inbox_id == inbox]
    return queue(m.conversation_id)


def test_a_fatal_error_may_have_posted_so_the_next_attempt_asks_and_finds_it(fake):
    rid = queue(customer_chat(fake))
    fake.faults.append("fatal_error")  # Slack posted it, then failed
    assert replies.attempt(rid).outcome == "retry"
    assert reply(rid).uncertain
    assert replies.attempt(rid, now=later()).outcome == "sent"
    [posted] = fake.posted
    assert reply(rid).provider_message_id == f"slack:{CHANNEL}:{posted['ts']}"
    assert [r for r in fake.requests if r[1] != "file"] == [
        ("POST", "chat.postMessage"),
        ("GET", "conversations.replies"),
    ]


def test_without_an_answer_the_next_attempt_finds_the_message_and_posts_nothing_more(fake):
    rid = queue(customer_chat(fake))
    fake.hang_s = 2.0  # the inbox's timeout is 1 s
    fake.faults.append("hang")
    assert replies.attempt(rid).outcome == "retry"
    assert reply(rid).uncertain
    assert replies.attempt(rid, now=later()).outcome == "sent"
    assert len(fake.posted) == 1
    assert [r[1] for r in fake.requests].count("chat.postMessage") == 1


def test_a_connection_lost_before_slack_posted_is_posted_after_asking(fake):
    rid = queue(customer_chat(fake))
    fake.faults.append("reset")  # the connection closed before Slack read the request
    assert replies.attempt(rid).outcome == "retry"
    assert reply(rid).uncertain  # we cannot know that from here
    assert replies.attempt(rid, now=later()).outcome == "sent"
    assert len(fake.posted) == 1
    assert fake.requests == [
        ("POST", "chat.postMessage"),
        ("GET", "conversations.replies"),
        ("POST", "chat.postMessage"),
    ]


def test_find_reads_every_page_since_the_reply_was_queued_and_only_our_client_id(fake):
    config = SlackOutbound(via="slack", bot_token=BOT_TOKEN, api_url=fake.api_url)
    chat = OutboundChat(
        reply_key="k",
        client_id="isx-ours",
        text="We're on it.",
        target={"channel": CHANNEL, "ts": PARENT, "thread_ts": PARENT},
        date=datetime.now(UTC),
    )
    for n in range(450):  # a busy thread: ours comes on the third page
        fake.add_message(CHANNEL, f"+1 ({n})", thread_ts=PARENT)
    sender = SlackSender()
    ts = sender.send(chat, config)
    fake.add_message(CHANNEL, "another thread", thread_ts="1795601400.000300")
    assert sender.find(chat, config) == ts
    assert fake.requests.count(("GET", "conversations.replies")) == 3
    assert sender.find(chat.model_copy(update={"client_id": "isx-other"}), config) is None
    tomorrow = chat.model_copy(update={"date": chat.date + timedelta(days=1)})
    assert sender.find(tomorrow, config) is None  # posted a day before this reply was queued
    in_dm = chat.model_copy(update={"target": {"channel": DM}, "client_id": "isx-dm"})
    dm_ts = sender.send(in_dm, config)
    assert sender.find(in_dm, config) == dm_ts
    assert ("GET", "conversations.history") in fake.requests


def test_cli_ingest_takes_saved_events(db):
    inbox = slack_inbox()
    names = ["message.json", "message_changed.json", "bot_echo.json", "url_verification.json"]
    printed = cli_ingest(inbox, "slack", [FIXTURES / n for n in names])
    assert "queued 2 deliveries, refused 0 files" in printed
    assert process_journal()["dead"] == 0
    [m] = messages()
    assert m.text == "Hi! Order #1001 still hasn't arrived (it's been 10 days now)."


def test_the_adapter_refuses_a_message_event_without_its_author():
    no_user = loaded("message.json")
    del no_user["event"]["user"]
    with pytest.raises(PayloadError, match="event.user"):
        adapter_for("slack").accept(request(json.dumps(no_user).encode()))


# A worker killed mid-send -------------------------------------------------------------------------


def test_worker_killed_while_slack_holds_the_post_the_next_attempt_finds_it(
    client: TestClient, fake: FakeSlack
):
    """Slack can be asked: after the kill the next attempt reads the thread, finds our
    message by its metadata, and the customer has exactly one."""
    inbox = slack_inbox(fake.api_url, timeout_s=20)

    def conversation() -> int:
        assert post(client, inbox, fixture("message.json")).status_code == 200
        return first_conversation()

    # Slack posts the message and holds the answer.
    done = worker_killed_mid_send(
        client,
        fake,
        conversation=conversation,
        taken=lambda: fake.posted,
        ends="sent",
        queues="ingest,outbound",
    )
    [posted] = fake.posted
    assert done["attempts"] >= 2
    assert done["provider_message_id"] == f"slack:{CHANNEL}:{posted['ts']}"
    assert ("GET", "conversations.replies") in fake.requests
    assert [r[1] for r in fake.requests].count("chat.postMessage") == 1, "posted twice"
