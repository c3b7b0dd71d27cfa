"""Attachments: their bytes kept once, by content hash, before their message commits; served
back to the account that owns the message."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.app import create_app
from handlers import journal, pipeline
from handlers.channels import adapter_for
from handlers.channels.base import WebhookRequest
from handlers.email.parse import parse_raw
from store.blobs import BlobStore, blob_store
from store.db import reading
from store.models import Message
from tests.apihelp import ADMIN

RAW = (Path(__file__).parent / "fixtures" / "email" / "attachments.eml").read_bytes()


@pytest.fixture
def client(db: None) -> Iterator[TestClient]:
    with TestClient(create_app()) as c:
        yield c


def deliver(inbox: int, raw: bytes = RAW) -> int:
    request = WebhookRequest("POST", "https://x", {"content-type": "message/rfc822"}, {}, raw)
    [payload] = adapter_for("rfc822").accept(request).payloads
    pipeline.ingest_deliveries([journal.delivery(inbox, "rfc822", payload)], task_id=None)
    with reading() as session:
        return int(
            session.scalars(
                select(Message.id).where(Message.inbox_id == inbox).order_by(Message.id.desc())
            ).first()
            or 0
        )


def parts() -> list[bytes]:
    mail = message_from_bytes(RAW, policy=policy.default)
    return [p.get_payload(decode=True) for p in mail.walk() if p.get_filename()]


def test_attachments_are_kept_and_served_to_their_account(client: TestClient, make_account):
    acct = make_account()
    message_id = deliver(acct["inbox"])
    expected = parts()
    assert len(expected) == 2
    for index, data in enumerate(expected):
        got = client.get(f"/messages/{message_id}/attachments/{index}", headers=ADMIN)
        assert got.status_code == 200
        assert got.content == data
        assert got.headers["etag"] == f'"{hashlib.sha256(data).hexdigest()}"'
    pdf = client.get(f"/messages/{message_id}/attachments/1", headers=ADMIN)
    assert pdf.headers["content-type"] == "application/pdf"
    assert "fatura%20n%C2%BA%2042.pdf" in pdf.headers["content-disposition"]
    assert client.get(f"/messages/{message_id}/attachments/2", headers=ADMIN).status_code == 404
    other = make_account()
    token = client.post(f"/accounts/{other['account']}/tokens", json={}, headers=ADMIN).json()
    foreign = {"Authorization": f"Bearer {token['token']}"}
    answer = client.get(f"/messages/{message_id}/attachments/0", headers=foreign)
    assert answer.status_code == 404 and answer.json()["error"] == "not_found"


def test_the_same_file_is_one_blob_however_often_it_arrives(make_account):
    first, second = make_account(), make_account()
    deliver(first["inbox"])
    paths = [blob_store().path(hashlib.sha256(d).hexdigest()) for d in parts()]
    written = [(p.stat().st_ino, p.stat().st_mtime_ns) for p in paths]
    deliver(second["inbox"])  # the same files in another account's mail
    deliver(first["inbox"])  # a duplicate delivery
    assert [(p.stat().st_ino, p.stat().st_mtime_ns) for p in paths] == written  # not rewritten
    assert [p.read_bytes() for p in paths] == parts()
    assert not list((blob_store().root / "sha256").rglob(".tmp-*"))


def test_an_attachment_over_the_limit_is_listed_but_not_kept(tmp_path: Path):
    parsed, _ = parse_raw(RAW, max_attachment_bytes=10)
    assert [a.stored for a in parsed.attachments] == [False, False]
    assert any("not kept" in p for p in parsed.problems)
    store = BlobStore(tmp_path)
    digest = store.put(b"x" * 20)
    assert store.read(digest) == b"x" * 20 and store.put(b"x" * 20) == digest
    assert store.read("0" * 64) is None
    with pytest.raises(ValueError):
        store.path("../../etc/passwd")


def _mail_with_attachments(n: int) -> bytes:
    parts = "".join(
        f"--b\r\nContent-Type: application/octet-stream\r\n"
        f'Content-Disposition: attachment; filename="f{i}.bin"\r\n\r\nbytes of file {i}\r\n'
        for i in range(n)
    )
    return (
        "From: a@example.com\r\nTo: s@acme.example\r\nSubject: many\r\n"
        "Message-ID: <many@example.com>\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
        f"--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n{parts}--b--\r\n"
    ).encode()


def test_a_mail_with_too_many_attachments_keeps_the_first_and_lists_the_rest(
    make_account, monkeypatch
):
    """INBOXSYNC_MAX_ATTACHMENTS_KEPT reaches the parser's caller: each kept attachment is a
    file written and fsynced, so a mail of thousands cannot cost a worker minutes."""
    from settings import get_settings

    monkeypatch.setattr(get_settings(), "max_attachments_kept", 3)
    acct = make_account()
    deliver(acct["inbox"], _mail_with_attachments(5))
    with reading() as session:
        mail = session.scalars(select(Message.headers)).one()["email"]
    assert [a["stored"] for a in mail["attachments"]] == [True, True, True, False, False]
    assert any("INBOXSYNC_MAX_ATTACHMENTS_KEPT" in p for p in mail["problems"])
    assert all(blob_store().read(a["sha256"]) is not None for a in mail["attachments"][:3])
    assert blob_store().read(mail["attachments"][4]["sha256"]) is None


def test_attachments_are_written_before_the_transaction_holds_any_lock(make_account, monkeypatch):
    """A slow disk (one fsync per blob) must not hold the batch's journal rows: while the blobs
    are being written, another transaction can lock those rows at once."""
    import threading

    from sqlalchemy import text

    from store.db import is_postgres, transaction

    acct = make_account()
    request = WebhookRequest(
        "POST", "https://x", {"content-type": "message/rfc822"}, {}, _mail_with_attachments(2)
    )
    [payload] = adapter_for("rfc822").accept(request).payloads
    [did] = journal.journal([journal.delivery(acct["inbox"], "rfc822", payload)])
    writing, release = threading.Event(), threading.Event()
    put_all = BlobStore.put_all

    def stalling_put_all(self: BlobStore, blobs: Iterable[bytes]) -> list[str]:
        kept = list(blobs)  # the disk stalls, as behind a full fsync queue
        writing.set()
        release.wait(30)
        return put_all(self, kept)

    monkeypatch.setattr(BlobStore, "put_all", stalling_put_all)
    worker = threading.Thread(target=pipeline.process_deliveries, args=([did], None))
    worker.start()
    try:
        assert writing.wait(30)
        # On SQLite, opening a write transaction at all shows that no writer holds the lock
        # (the busy timeout would make it wait for the worker's release otherwise).
        with transaction() as session:
            if is_postgres(session):
                locked = session.execute(
                    text("SELECT id FROM deliveries WHERE id = :id FOR UPDATE NOWAIT"), {"id": did}
                ).all()
                assert [r.id for r in locked] == [did]
    finally:
        release.set()
        worker.join(30)
    with reading() as session:
        assert len(session.scalars(select(Message.id)).all()) == 1
