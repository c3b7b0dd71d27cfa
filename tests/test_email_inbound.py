"""Email providers at the seam: Postmark (JSON, basic auth) and raw RFC 5322 (bearer secret).

Authenticity is checked before anything is parsed or enqueued; a mail is one message whatever
provider or how many times it arrives; replies thread by the ids they answer.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from api.app import create_app
from api.webhooks import Ingress
from handlers import journal, pipeline
from handlers.channels import adapter_for
from handlers.channels.base import PayloadError, SignatureError, WebhookRequest
from store.db import reading, transaction
from store.models import Conversation, Delivery, Inbox, Message
from tests.storehelp import at

FIXTURES = Path(__file__).parent / "fixtures"
BASIC = {"basic_username": "postmark", "basic_password": "pm-s3cret"}
BEARER = {"bearer_secret": "raw-s3cret"}


def postmark(name: str) -> bytes:
    return (FIXTURES / "postmark" / name).read_bytes()


def eml(name: str) -> bytes:
    return (FIXTURES / "email" / name).read_bytes()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def request(body: bytes, **headers: str) -> WebhookRequest:
    return WebhookRequest(
        method="POST",
        url="https://x/webhooks/1",
        headers={k.replace("_", "-"): v for k, v in headers.items()},
        query={},
        body=body,
    )


def normalized(provider: str, body: bytes, headers: dict[str, str], inbox: int = 1) -> Any:
    adapter = adapter_for(provider)
    accepted = adapter.accept(request(body, **headers))
    [payload] = accepted.payloads
    json.dumps(payload)  # what the journal stores must be JSON
    [message] = adapter.normalize(inbox, at(0), payload)
    return message


# Authenticity -------------------------------------------------------------------------------


def test_postmark_basic_auth_is_checked_in_constant_time_before_parsing():
    adapter = adapter_for("postmark")
    good = request(b"not even json", authorization=basic("postmark", "pm-s3cret"))
    adapter.verify(good, BASIC, time.time())  # verified without reading the body
    for header in (basic("postmark", "wrong"), basic("other", "pm-s3cret"), "Bearer x", ""):
        with pytest.raises(SignatureError):
            adapter.verify(request(b"{}", authorization=header), BASIC, time.time())
    with pytest.raises(SignatureError, match="configured"):
        adapter.verify(good, {}, time.time())


def test_rfc822_needs_the_inbox_bearer_secret():
    adapter = adapter_for("rfc822")
    adapter.verify(request(b"", authorization="Bearer raw-s3cret"), BEARER, time.time())
    for header in ("Bearer raw-s3cre", "Basic raw-s3cret", ""):
        with pytest.raises(SignatureError):
            adapter.verify(request(b"", authorization=header), BEARER, time.time())


def test_bad_bodies_are_refused_at_the_edge():
    with pytest.raises(PayloadError, match="MessageID"):
        adapter_for("postmark").accept(request(b'{"FromFull": {"Email": "a@b"}}'))
    with pytest.raises(PayloadError, match="message/rfc822"):
        adapter_for("rfc822").accept(request(b"x", content_type="application/json"))
    with pytest.raises(PayloadError, match="empty"):
        adapter_for("rfc822").accept(request(b"  ", content_type="message/rfc822"))


# Normalization -------------------------------------------------------------------------------


def test_postmark_mail_is_keyed_by_its_message_id_and_keeps_what_was_parsed():
    m = normalized("postmark", postmark("inbound.json"), {})
    assert m.external_id == "mid:CAF=order1001@mail.example.com"
    assert m.thread_key == m.external_id and m.thread_refs == []
    assert m.sender == "maria@example.com"
    assert m.sent_at.isoformat() == "2026-11-24T09:11:58-03:00"
    assert "ainda não chegou" in m.text
    email = m.headers["email"]
    assert email["subject"] == "Pedido 1001 não chegou"
    assert email["provider"] == "postmark"
    assert email["provider_id"] == "a8c1040e-2f4d-4d1b-9d5e-6f0e1c2b3a41"
    assert "<script>" not in email["html_safe"] and "<b>1001</b>" in email["html_safe"]
    [attachment] = email["attachments"]
    assert attachment["filename"] == "nota.txt" and attachment["size"] == 15
    assert not m.automatic


def test_postmark_reply_threads_by_in_reply_to_and_carries_the_plus_token():
    m = normalized("postmark", postmark("reply.json"), {})
    assert m.thread_refs == ["CAF=order1001@mail.example.com"]
    assert m.reply_token == 7
    assert m.headers["email"]["visible_text"] == "Chegou hoje, obrigada!"


def test_auto_replies_are_marked_automatic():
    assert normalized("postmark", postmark("auto_reply.json"), {}).automatic
    raw = eml("auto_reply.eml")
    assert normalized("rfc822", raw, {"content-type": "message/rfc822"}).automatic
    bounce = normalized("rfc822", eml("bounce.eml"), {"content-type": "message/rfc822"})
    assert bounce.automatic


def test_rfc822_reply_threads_by_in_reply_to_then_references_newest_first():
    m = normalized("rfc822", eml("gmail_reply.eml"), {"content-type": "message/rfc822"})
    assert m.external_id == "mid:CAF=reply2@mail.example.com"
    assert m.thread_refs == ["out-1.7@acme.test", "CAF=order1001@mail.example.com"]
    assert m.reply_token == 7  # [#C7] in the subject
    refs_only = normalized("rfc822", eml("references_only.eml"), {"content-type": "message/rfc822"})
    assert refs_only.thread_refs == [
        "CAF=reply2@mail.example.com",
        "CAF=order1001@mail.example.com",
    ]


# Through the store ---------------------------------------------------------------------------


def _email_inbox(acct: dict[str, int], provider: str, secrets: dict[str, str]) -> int:
    with transaction() as session:
        inbox = Inbox(
            account_id=acct["account"],
            name=provider,
            channel="email",
            provider=provider,
            secrets=secrets,
        )
        session.add(inbox)
        session.flush()
        return inbox.id


def test_one_mail_through_two_providers_is_one_message_and_replies_join_it(make_account):
    acct = make_account()
    pm = _email_inbox(acct, "postmark", BASIC)
    deliveries = [
        journal.delivery(
            pm, "postmark", adapter_for("postmark").accept(request(postmark(n))).payloads[0]
        )
        for n in ("inbound.json", "inbound.json", "reply.json", "auto_reply.json")
    ]
    raw = adapter_for("rfc822").accept(
        request(eml("plain_utf8.eml"), content_type="message/rfc822")
    )
    deliveries.append(journal.delivery(pm, "rfc822", raw.payloads[0]))
    counts = pipeline.ingest_deliveries(deliveries, None)
    assert counts == {"stored": 3, "duplicate": 2, "dead": 0, "gone": 0}
    with reading() as session:
        assert session.scalar(select(func.count()).select_from(Conversation)) == 1
        automatic = session.scalars(select(Message.automatic).order_by(Message.id)).all()
    assert automatic == [False, False, True]


@pytest.fixture
def client(db: None) -> Iterator[TestClient]:
    with TestClient(Ingress(create_app())) as c:
        yield c


def test_http_forged_credentials_get_401_and_nothing_is_enqueued(client, make_account):
    acct = make_account()
    pm = _email_inbox(acct, "postmark", BASIC)
    raw = _email_inbox(acct, "rfc822", BEARER)
    wrong = client.post(
        f"/webhooks/{pm}",
        content=postmark("inbound.json"),
        headers={"Authorization": basic("postmark", "nope"), "Content-Type": "application/json"},
    )
    assert wrong.status_code == 401 and wrong.json()["error"] == "bad_signature"
    missing = client.post(
        f"/webhooks/{raw}",
        content=eml("plain_utf8.eml"),
        headers={"Content-Type": "message/rfc822"},
    )
    assert missing.status_code == 401
    with reading() as session:
        assert session.scalar(select(func.count()).select_from(Delivery)) == 0


def test_http_accepted_mail_is_journaled_and_stored(client, make_account):
    acct = make_account()
    raw = _email_inbox(acct, "rfc822", BEARER)
    answer = client.post(
        f"/webhooks/{raw}",
        content=eml("gmail_reply.eml"),
        headers={"Authorization": "Bearer raw-s3cret", "Content-Type": "message/rfc822"},
    )
    assert answer.status_code == 202, answer.text
    ids = journal.sweep(older_than_s=-1)
    assert len(ids) == 1
    assert pipeline.process_deliveries(ids, None)["stored"] == 1
    with reading() as session:
        stored = session.scalars(select(Message)).one()
    assert stored.external_id == "mid:CAF=reply2@mail.example.com"
    assert stored.headers["email"]["subject"].startswith("Re: Pedido 1001")


def test_cli_ingest_feeds_saved_mails_through_the_webhook_path(make_account, tmp_path):
    import subprocess
    import sys

    acct = make_account()
    raw = _email_inbox(acct, "rfc822", BEARER)
    empty = tmp_path / "empty.eml"
    empty.write_bytes(b"")
    files = [FIXTURES / "email" / "plain_utf8.eml", FIXTURES / "email" / "gmail_reply.eml"]
    not_a_mail = FIXTURES / "postmark" / "inbound.json"
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", "ingest", "--inbox", str(raw), "--provider", "rfc822"]
        + [str(f) for f in (*files, not_a_mail, empty)],
        cwd=Path(__file__).parent.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    # The empty file is refused at the edge (exit 1, reported); the JSON is a body without mail
    # headers: queued, then a dead letter in the worker with its payload kept.
    assert done.returncode == 1, done.stderr
    assert "queued 3 deliveries, refused 1 files" in done.stdout
    ids = journal.sweep(older_than_s=-1)
    counts = pipeline.process_deliveries(ids, None)
    assert (counts["stored"], counts["dead"]) == (2, 1)
    with reading() as session:
        conversations = session.scalar(select(func.count()).select_from(Conversation))
    assert conversations == 1  # the reply threads to the first mail by its References


# Mailgun -------------------------------------------------------------------------------------

SIGNING = {"signing_key": "key-mg-s3cret"}


def mailgun_form(name: str, *, now: float | None = None, token: str = "tok-1") -> tuple[bytes, str]:
    """The fixture as Mailgun posts it: a signed multipart form."""
    from handlers.channels.mailgun import sign

    fixture = json.loads((FIXTURES / "mailgun" / name).read_text())
    stamp = str(int(now if now is not None else time.time()))
    fields = {**fixture["fields"], "timestamp": stamp, "token": token}
    fields["signature"] = sign(SIGNING["signing_key"], stamp, token)
    boundary = "----mgboundary7MA4YWxk"
    out = b""
    for key, value in fields.items():
        out += (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n'.encode()
            + value.encode()
            + b"\r\n"
        )
    for f in fixture["files"]:
        out += (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{f["field"]}"; '
            f'filename="{f["filename"]}"\r\nContent-Type: {f["content_type"]}\r\n\r\n'.encode()
            + f["content_text"].encode()
            + b"\r\n"
        )
    return out + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_mailgun_signature_window_and_key_are_checked():
    adapter = adapter_for("mailgun")
    body, kind = mailgun_form("parsed.json")
    adapter.verify(request(body, content_type=kind), SIGNING, time.time())
    with pytest.raises(SignatureError, match="does not match"):
        adapter.verify(request(body, content_type=kind), {"signing_key": "other"}, time.time())
    stale, kind = mailgun_form("parsed.json", now=time.time() - 301)
    with pytest.raises(SignatureError, match="window"):
        adapter.verify(request(stale, content_type=kind), SIGNING, time.time())
    # Mailgun signs only timestamp+token, not the body: an edited body still verifies, which is
    # why a token is accepted once (test_mailgun_replayed_token_is_journaled_once).
    forged = body.replace(b"O produto veio partido.", b"Pay to account 123.", 1)
    adapter.verify(request(forged, content_type=kind), SIGNING, time.time())


def test_mailgun_parsed_and_mime_forms_normalize_alike():
    body, kind = mailgun_form("parsed.json")
    m = normalized("mailgun", body, {"content-type": kind})
    assert m.external_id == "mid:CAJ=mg-1@mail.example.com"
    assert m.sender == "joao@example.com" and m.thread_refs == ["out-3.1@acme.test"]
    email = m.headers["email"]
    assert email["subject"] == "Reclamação"
    assert email["visible_text"] == "O produto veio partido."
    assert "onerror" not in email["html_safe"]
    assert [a["filename"] for a in email["attachments"]] == ["foto.jpg"]
    mime_body, mime_kind = mailgun_form("mime.json")
    raw = normalized("mailgun", mime_body, {"content-type": mime_kind})
    assert raw.external_id == "mid:CAF=reply2@mail.example.com" and raw.reply_token == 7


def test_mailgun_replayed_token_is_journaled_once(make_account):
    acct = make_account()
    inbox = _email_inbox(acct, "mailgun", SIGNING)
    body, kind = mailgun_form("parsed.json", token="tok-replayed")
    accepted = adapter_for("mailgun").accept(request(body, content_type=kind))
    first = journal.delivery(inbox, "mailgun", accepted.payloads[0])
    first["replay_key"] = accepted.replay_key
    kept, replayed = journal.journal([first, dict(first)])  # a replay within one batch
    assert kept is not None and replayed is None
    assert journal.journal([dict(first)]) == [None]  # and a later one
    assert journal.forget_tokens(older_than_s=-1) == 1
    assert journal.journal([dict(first)]) != [None]  # past the window the signature decides
    other, plain = dict(first, replay_key="tok-other"), dict(first, replay_key=None)
    ids = journal.journal([dict(other), plain, dict(first), dict(other), dict(plain)])
    assert [i is not None for i in ids] == [True, True, False, False, True]


def test_http_mailgun_post_and_its_replay(client, make_account):
    acct = make_account()
    inbox = _email_inbox(acct, "mailgun", SIGNING)
    body, kind = mailgun_form("parsed.json", token="tok-http")
    for _ in range(2):
        answer = client.post(f"/webhooks/{inbox}", content=body, headers={"Content-Type": kind})
        assert answer.status_code == 202, answer.text
    with reading() as session:
        assert session.scalar(select(func.count()).select_from(Delivery)) == 1
    unsigned = body.replace(b"tok-http", b"tok-other")
    answer = client.post(f"/webhooks/{inbox}", content=unsigned, headers={"Content-Type": kind})
    assert answer.status_code == 401


# SendGrid ------------------------------------------------------------------------------------

URL_SECRET = {"url_secret": "sg-s3cret"}


def sendgrid_form(name: str) -> tuple[bytes, str]:
    """The fixture as Inbound Parse posts it: each field in the charset ``charsets`` names."""
    fixture = json.loads((FIXTURES / "sendgrid" / name).read_text())
    charsets = json.loads(fixture["fields"].get("charsets", "{}"))
    boundary = "xYzZY"
    out = b""
    for key, value in fixture["fields"].items():
        encoding = charsets.get(key, "utf-8") if key in fixture["charset_fields"] else "utf-8"
        out += (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n'.encode()
            + value.encode(encoding)
            + b"\r\n"
        )
    return out + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_sendgrid_url_secret_or_basic_auth():
    adapter = adapter_for("sendgrid")
    ok = WebhookRequest(method="POST", url="u", headers={}, query={"secret": "sg-s3cret"}, body=b"")
    adapter.verify(ok, URL_SECRET, time.time())
    wrong = WebhookRequest(method="POST", url="u", headers={}, query={"secret": "x"}, body=b"")
    with pytest.raises(SignatureError):
        adapter.verify(wrong, URL_SECRET, time.time())
    adapter.verify(request(b"", authorization=basic("postmark", "pm-s3cret")), BASIC, time.time())
    with pytest.raises(SignatureError):
        adapter.verify(request(b"", authorization=basic("postmark", "no")), BASIC, time.time())
    with pytest.raises(SignatureError, match="neither"):
        adapter.verify(ok, {}, time.time())


def test_sendgrid_parsed_mode_honours_the_declared_charsets():
    body, kind = sendgrid_form("parsed.json")
    m = normalized("sendgrid", body, {"content-type": kind})
    assert m.external_id == "mid:sg-parsed-1@example.pt"
    assert m.thread_refs == ["out-5.2@acme.test"]
    email = m.headers["email"]
    assert email["subject"] == "Re: Fatura em atraso"
    assert email["from_"]["name"] == "José Gonçalves"
    assert email["visible_text"] == "Já paguei por referência."
    assert email["html"] == "<p>Já paguei por referência.</p>"


def test_sendgrid_raw_mode_is_the_whole_mail():
    body, kind = sendgrid_form("raw.json")
    m = normalized("sendgrid", body, {"content-type": kind})
    assert m.external_id == "mid:att-1@example.com"
    assert [a["filename"] for a in m.headers["email"]["attachments"]] == [
        "photo.png",
        "fatura nº 42.pdf",
    ]
