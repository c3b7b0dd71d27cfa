"""Agents' replies, sent once, against real peers on loopback (tests/fakeproviders.py).

The state machine (handlers/outbound/replies.py) is driven directly here, attempt by attempt,
with ``now`` moved forward where a retry has to be due; tests/test_reply_workers.py runs it in
real worker processes, one of them killed in the middle of a send.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from handlers.channels import adapter_for
from handlers.channels.base import WebhookRequest
from handlers.outbound import replies
from handlers.outbound.compose import ComposeError
from handlers.outbound.replies import ReplyRefused
from schemas.outbound import ReplyIn
from store.db import reading, transaction
from store.models import Message, Reply
from tests.apihelp import eventually
from tests.chathelp import later, reply
from tests.fakeproviders import (
    MAILGUN_KEY,
    POSTMARK_TOKEN,
    SENDGRID_KEY,
    FakeProviders,
    FakeSmtp,
    fake_providers,
    fake_smtp,
)
from tests.storehelp import at, new_account, store

FIXTURES = Path(__file__).parent / "fixtures" / "email"
CUSTOMER_MAIL_ID = "CAF=order1001@mail.example.com"


@pytest.fixture
def fake(db: None) -> Iterator[FakeProviders]:
    with fake_providers() as providers:
        yield providers


@pytest.fixture
def smtp(db: None) -> Iterator[FakeSmtp]:
    with fake_smtp() as server:
        yield server


def outbound(via: str, url: str = "", **extra: Any) -> dict[str, Any]:
    base = {"via": via, "from": "Acme Support <support@acme.test>", "timeout_s": 1.0}
    credentials = {
        "postmark": {"server_token": POSTMARK_TOKEN, "api_url": url},
        "mailgun": {"api_key": MAILGUN_KEY, "domain": "mg.acme.test", "api_url": url},
        "sendgrid": {"api_key": SENDGRID_KEY, "api_url": url},
        "smtp": {},
    }[via]
    return {**base, **credentials, **extra}


def customer_conversation(config: dict[str, Any] | None) -> int:
    """An inbox replying through ``config`` and a conversation holding one customer mail."""
    inbox = new_account(provider="rfc822", secrets={"bearer_secret": "x"}, outbound=config)
    [outcome] = store(*mail_in(inbox["inbox"], (FIXTURES / "plain_utf8.eml").read_bytes()))
    assert outcome.conversation_id is not None
    return outcome.conversation_id


def mail_in(inbox_id: int, raw: bytes) -> Any:
    adapter = adapter_for("rfc822")
    request = WebhookRequest("POST", "https://x", {"content-type": "message/rfc822"}, {}, raw)
    [payload] = adapter.accept(request).payloads
    return adapter.normalize(inbox_id, at(0), payload)


def queue(conversation_id: int, key: str | None = None, **body: Any) -> int:
    reply_id, _ = replies.queue_reply(
        account_id=None,
        conversation_id=conversation_id,
        body=ReplyIn(text=body.pop("text", "Já enviámos de novo."), **body),
        key=key,
    )
    return reply_id


# Composing: the customer's client threads our reply, and their answer threads back ------------


def test_reply_answers_the_customers_newest_mail_and_threads_under_it(fake: FakeProviders):
    conv = customer_conversation(outbound("postmark", fake.url))
    rid = queue(conv)
    assert replies.attempt(rid).outcome == "sent"
    [sent] = fake.sends("postmark")
    assert sent["to"] == ["maria@example.com"]
    assert sent["subject"] == f"Re: Pedido 1001 não chegou [#C{conv}]"
    assert sent["headers"]["In-Reply-To"] == f"<{CUSTOMER_MAIL_ID}>"
    assert sent["headers"]["References"] == f"<{CUSTOMER_MAIL_ID}>"
    done = reply(rid)
    assert sent["headers"]["Message-ID"] == f"<{done.rfc_message_id}>"
    assert done.rfc_message_id.endswith(f".c{conv}@acme.test")
    assert (done.state, done.attempts, done.provider_message_id) == ("sent", 1, sent["id"])
    assert sent["metadata"] == {"inboxsync_reply": done.key}
    with reading() as session:
        message = session.get(Message, done.message_id)
        assert message is not None
        assert (message.direction, message.conversation_id) == ("outbound", conv)
        assert message.external_id == f"mid:{done.rfc_message_id}"


def test_the_customers_answer_to_a_reply_lands_in_the_same_conversation(fake: FakeProviders):
    conv = customer_conversation(outbound("postmark", fake.url))
    rid = queue(conv)
    replies.attempt(rid)
    ours = reply(rid).rfc_message_id
    answer = (
        "From: Maria Souza <maria@example.com>\r\nTo: support@acme.test\r\n"
        "Subject: outra coisa\r\nMessage-ID: <answer-1@mail.example.com>\r\n"
        f"In-Reply-To: <{ours}>\r\nDate: Wed, 25 Nov 2026 10:00:00 +0000\r\n\r\nObrigada!\r\n"
    ).encode()
    with reading() as session:
        inbox_id = session.scalar(select(Message.inbox_id).where(Message.conversation_id == conv))
    [outcome] = store(*mail_in(inbox_id or 0, answer))
    assert outcome.conversation_id == conv


def test_explicit_recipients_subject_and_html(fake: FakeProviders):
    conv = customer_conversation(outbound("mailgun", fake.url))
    rid = queue(
        conv,
        to=["Zé <ze@bücher.example>"],
        cc=["boss@acme.test"],
        subject="Re: [#C99] x",
        html="<p>Olá</p>",
    )
    assert replies.attempt(rid).outcome == "sent"
    [sent] = fake.sends("mailgun")
    assert sent["to"] == ["ze@xn--bcher-kva.example"]  # IDNA on the wire
    assert sent["subject"] == "Re: [#C99] x"  # a token already there is kept, not doubled
    assert reply(rid).provider_message_id == reply(rid).rfc_message_id


def test_a_reply_nobody_can_receive_is_refused_before_anything_is_stored(fake: FakeProviders):
    conv = customer_conversation(outbound("postmark", fake.url))
    with pytest.raises(ComposeError, match="to"):
        queue(conv, to=["not an address"])
    no_outbound = customer_conversation(None)
    with pytest.raises(ReplyRefused, match="no outbound"):
        queue(no_outbound)
    with reading() as session:
        assert session.scalars(select(Reply)).all() == []
        assert session.scalars(select(Message).where(Message.direction == "outbound")).all() == []


def test_same_key_same_reply_and_another_body_is_refused(fake: FakeProviders):
    conv = customer_conversation(outbound("postmark", fake.url))
    first = queue(conv, key="k-1")
    assert queue(conv, key="k-1") == first
    with pytest.raises(ReplyRefused, match="Idempotency-Key"):
        queue(conv, key="k-1", text="something else")


# Exactly once ---------------------------------------------------------------------------------


def test_a_task_run_again_sends_nothing_more(fake: FakeProviders):
    conv = customer_conversation(outbound("sendgrid", fake.url))
    rid = queue(conv)
    assert replies.attempt(rid).outcome == "sent"
    assert replies.attempt(rid).outcome == "skipped"
    assert replies.attempt(rid, now=later()).outcome == "skipped"
    assert len(fake.sends("sendgrid")) == 1
    assert reply(rid).provider_message_id == fake.sends("sendgrid")[0]["id"]


def test_a_second_run_while_the_first_is_sending_sends_nothing(fake: FakeProviders):
    conv = customer_conversation(outbound("postmark", fake.url, timeout_s=10))
    rid = queue(conv)
    fake.faults.append("block")
    first = threading.Thread(target=replies.attempt, args=(rid,))
    first.start()
    try:
        eventually(lambda: fake.sends("postmark"), timeout=10)
        assert reply(rid).state == "sending"
        assert replies.attempt(rid).outcome == "skipped"
    finally:
        fake.release.set()
        first.join()
    assert reply(rid).state == "sent"
    assert len(fake.sends("postmark")) == 1


def test_5xx_and_429_are_retried_with_backoff_then_sent_once(fake: FakeProviders):
    conv = customer_conversation(outbound("postmark", fake.url))
    rid = queue(conv)
    fake.faults.extend(["500", "429"])
    first = replies.attempt(rid)
    assert first.outcome == "retry" and first.retry_in_s is not None
    queued = reply(rid)
    assert (queued.state, queued.uncertain) == ("queued", False)
    assert "HTTP 500" in (queued.error or "")
    assert replies.attempt(rid, now=later(1)).outcome == "retry"
    assert replies.attempt(rid, now=later(2)).outcome == "sent"
    assert len(fake.sends("postmark")) == 1
    assert reply(rid).attempts == 3 and reply(rid).error is None


def test_a_retry_is_not_attempted_before_it_is_due(fake: FakeProviders):
    conv = customer_conversation(outbound("postmark", fake.url))
    rid = queue(conv)
    fake.faults.append("500")
    replies.attempt(rid)
    due = reply(rid).next_attempt_at
    assert due is not None
    early = replies.attempt(rid, now=datetime.now(UTC) - timedelta(seconds=5))
    assert early.outcome == "skipped" and early.retry_in_s is not None
    assert fake.sends("postmark") == []


@pytest.mark.parametrize(("via", "fault"), [("postmark", "hang"), ("mailgun", "drop")])
def test_an_attempt_without_an_answer_is_looked_up_before_any_second_send(
    fake: FakeProviders, via: str, fault: str
):
    conv = customer_conversation(outbound(via, fake.url, timeout_s=0.5))
    rid = queue(conv)
    fake.hang_s = 2.0
    fake.faults.append(fault)
    assert replies.attempt(rid).outcome == "retry"
    assert reply(rid).uncertain
    assert len(fake.sends(via)) == 1  # the provider took it; we never heard
    assert replies.attempt(rid, now=later()).outcome == "sent"
    assert len(fake.sends(via)) == 1, "sent twice"
    assert any(method == "GET" for method, _ in fake.requests)
    done = reply(rid)
    assert (done.state, done.uncertain) == ("sent", False)


def test_a_lookup_that_finds_nothing_sends(fake: FakeProviders):
    conv = customer_conversation(outbound("postmark", fake.url))
    rid = queue(conv)
    with transaction() as session:  # as if an attempt had died before reaching Postmark
        session.execute(update(Reply).where(Reply.id == rid).values(uncertain=True))
    assert replies.attempt(rid).outcome == "sent"
    assert len(fake.sends("postmark")) == 1
    assert ("GET", "/messages/outbound") in fake.requests


def test_where_the_provider_cannot_be_asked_an_unknown_outcome_fails_instead_of_doubling(
    fake: FakeProviders,
):
    conv = customer_conversation(outbound("sendgrid", fake.url, timeout_s=0.5))
    rid = queue(conv)
    fake.hang_s = 2.0
    fake.faults.append("hang")
    assert replies.attempt(rid).outcome == "retry"
    assert replies.attempt(rid, now=later()).outcome == "failed"
    failed = reply(rid)
    assert failed.state == "failed" and "outcome unknown" in (failed.error or "")
    assert len(fake.sends("sendgrid")) == 1
    # The agent checked: the customer did not get it. Resent, same mail, same Message-ID.
    replies.resend(rid, account_id=None)
    assert replies.attempt(rid).outcome == "sent"
    first, second = fake.sends("sendgrid")
    assert first["headers"]["Message-ID"] == second["headers"]["Message-ID"]


def test_a_worker_that_died_mid_send_is_taken_over_and_its_late_answer_is_ignored(
    fake: FakeProviders,
):
    conv = customer_conversation(outbound("postmark", fake.url, timeout_s=10))
    rid = queue(conv)
    fake.faults.append("block")
    stuck = threading.Thread(target=replies.attempt, args=(rid,))
    stuck.start()  # "dies": it stays inside the provider call until released
    try:
        eventually(lambda: fake.sends("postmark"), timeout=10)
        assert replies.sweep(now=later()) == [rid]  # lease ran out: requeued, uncertain
        assert reply(rid).uncertain
        assert replies.attempt(rid, now=later(2)).outcome == "sent"  # found by lookup
        assert reply(rid).attempts == 2
    finally:
        fake.release.set()
        stuck.join()
    done = reply(rid)
    assert (done.state, done.attempts) == ("sent", 2)  # the first attempt's answer was fenced off
    assert len(fake.sends("postmark")) == 1


def test_refused_mail_fails_at_once_with_the_providers_reason(fake: FakeProviders):
    conv = customer_conversation(outbound("postmark", fake.url))
    rid = queue(conv)
    fake.faults.append("422")
    assert replies.attempt(rid).outcome == "failed"
    assert "HTTP 422" in (reply(rid).error or "")
    wrong_token = customer_conversation(outbound("postmark", fake.url, server_token="nope"))
    other = queue(wrong_token)
    assert replies.attempt(other).outcome == "failed"
    assert "401" in (reply(other).error or "")


def test_retries_stop_after_the_last_attempt(fake: FakeProviders):
    conv = customer_conversation(outbound("postmark", fake.url))
    rid = queue(conv)
    with transaction() as session:
        session.execute(update(Reply).where(Reply.id == rid).values(attempts_left=2))
    fake.faults.extend(["500", "500"])
    assert replies.attempt(rid).outcome == "retry"
    assert replies.attempt(rid, now=later()).outcome == "failed"
    assert "gave up" in (reply(rid).error or "")


def test_unreachable_provider_is_retried(db: None):
    conv = customer_conversation(outbound("mailgun", "http://127.0.0.1:9"))
    rid = queue(conv)
    assert replies.attempt(rid).outcome == "retry"
    assert not reply(rid).uncertain  # nothing reached anyone: a plain retry


# SMTP -----------------------------------------------------------------------------------------


def smtp_config(server: FakeSmtp) -> dict[str, Any]:
    return outbound("smtp", host="127.0.0.1", port=server.port, security="none")


def test_smtp_reply_is_a_threaded_mime_mail(smtp: FakeSmtp):
    conv = customer_conversation(smtp_config(smtp))
    rid = queue(conv, html="<p>Já <b>enviámos</b></p>", cc=["Chefe <chefe@acme.test>"])
    assert replies.attempt(rid).outcome == "sent"
    [mail] = smtp.mails
    [(mail_from, rcpt)] = smtp.envelopes
    assert mail_from == "support@acme.test"
    assert rcpt == ["maria@example.com", "chefe@acme.test"]
    assert mail["In-Reply-To"] == f"<{CUSTOMER_MAIL_ID}>"
    assert mail["Message-ID"] == f"<{reply(rid).rfc_message_id}>"
    assert str(mail["Subject"]) == f"Re: Pedido 1001 não chegou [#C{conv}]"
    assert mail.get_body(("plain",)).get_content().strip() == "Já enviámos de novo."  # type: ignore[union-attr]
    assert "<b>enviámos</b>" in mail.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert reply(rid).provider_message_id.startswith("2.0.0 Ok: queued")  # type: ignore[union-attr]


def test_smtp_4xx_is_retried_and_5xx_fails(smtp: FakeSmtp):
    conv = customer_conversation(smtp_config(smtp))
    rid = queue(conv)
    smtp.faults.append("451")
    assert replies.attempt(rid).outcome == "retry"
    assert replies.attempt(rid, now=later()).outcome == "sent"
    refused = queue(conv)
    smtp.faults.append("550")
    assert replies.attempt(refused).outcome == "failed"
    assert "550" in (reply(refused).error or "")
    assert len(smtp.mails) == 1


def test_smtp_without_a_final_answer_is_not_sent_twice(smtp: FakeSmtp):
    conv = customer_conversation(smtp_config(smtp) | {"timeout_s": 0.5})
    rid = queue(conv)
    smtp.hang_s = 2.0
    smtp.faults.append("hang")
    assert replies.attempt(rid).outcome == "retry"
    assert replies.attempt(rid, now=later()).outcome == "failed"
    assert "outcome unknown" in (reply(rid).error or "")
    assert len(smtp.mails) == 1


# CLI ------------------------------------------------------------------------------------------


def test_cli_sets_the_outbound_and_replies(fake: FakeProviders):
    from typer.testing import CliRunner

    from cli.main import app

    conv = customer_conversation(None)
    with reading() as session:
        inbox_id = session.scalar(select(Message.inbox_id).where(Message.conversation_id == conv))
    cli = CliRunner()
    setting = ["--setting", f"server_token={POSTMARK_TOKEN}", "--setting", f"api_url={fake.url}"]
    ok = cli.invoke(
        app, ["set-outbound", str(inbox_id), "--via", "postmark", "--from", "s@acme.test", *setting]
    )
    assert ok.exit_code == 0, ok.output
    bad = cli.invoke(app, ["set-outbound", str(inbox_id), "--via", "pigeon", "--from", "s@a.test"])
    assert bad.exit_code == 2 and "invalid outbound setting" in bad.output
    args = ["reply", str(conv), "--text", "Olá", "--key", "k1", "--wait", "0"]
    first = cli.invoke(app, args)
    assert first.exit_code == 0 and "queued" in first.output, first.output
    assert "already queued" in cli.invoke(app, args).output
    [rid] = [r.id for r in _all_replies()]
    assert replies.attempt(rid).outcome == "sent"
    assert len(fake.sends("postmark")) == 1
    assert cli.invoke(app, ["reply", "999999", "--text", "x", "--wait", "0"]).exit_code == 2


def _all_replies() -> list[Reply]:
    with reading() as session:
        return list(session.scalars(select(Reply)).all())
