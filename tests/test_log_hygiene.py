"""No log line carries a secret, a token, a signature or a message's text.

Known marker strings go in as an inbox's signing secret, an API token, a webhook signature
header, a customer's message text, an outbound API key and an SMTP password, through the routes
and through what fails: a bad signature, an unknown token, statements the store refuses (a
trigger refuses the insert: a failing statement on either store), a dead-lettered delivery,
replies whose send fails. Every log record the test process makes is kept (the root logger at
DEBUG, SQLAlchemy's statement log on), and so is everything a CLI process and a worker process
at ``--loglevel debug`` print. None may hold a marker.

Before the engines hid statement parameters (store/db.py), the refused journal insert logged the
whole batch it was writing, other customers' mail included, and the refused inbox insert the
inbox's signing secret.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from api.app import create_app, enqueue
from api.webhooks import Ingress
from handlers import journal, pipeline
from handlers.outbound import replies
from schemas.outbound import ReplyIn
from store.db import engine, transaction
from store.models import DeadLetter, Inbox
from tests.apihelp import ADMIN, eventually, message, post_webhook
from tests.fakeproviders import FakeProviders, fake_providers, fake_smtp
from tests.storehelp import count
from tests.workerhelp import ROOT

# Short: a library may shorten what it prints (psycopg's Json repr keeps 40 characters), and a
# marker cut in half would pass unseen.
SECRET = "sec-7f3a91e0"
BAD_TOKEN = "isk_5be2c4d1"
SIGNATURE = "v1=c0ffee42"
TEXT = "txt-d15ea5e1"
API_KEY = "key-8badf00d"
PASSWORD = "pw-feedface9"
MARKERS = [SECRET, BAD_TOKEN, SIGNATURE, TEXT, API_KEY, PASSWORD]


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every record, from every logger, at every level; SQLAlchemy's statement log included
    (what an operator turning on SQL echo would see)."""
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.INFO, logger="sqlalchemy.engine")
    yield caplog


def everything_logged(caplog: pytest.LogCaptureFixture) -> str:
    """The formatted lines (tracebacks included) and each record's attributes: its arguments,
    its exception, any extra field a structured handler would print."""
    return caplog.text + "\n".join(repr(vars(record)) for record in caplog.records)


def assert_clean(output: str, *also: str) -> None:
    for marker in [*MARKERS, *also]:
        assert marker not in output, f"{marker!r} was logged"


@pytest.fixture
def fake(db: None) -> Iterator[FakeProviders]:
    with fake_providers() as providers:
        yield providers


@pytest.fixture
def client(db: None) -> Iterator[TestClient]:
    # A 500 is an answer here, as a server gives it, not an exception raised into the test.
    with TestClient(Ingress(create_app()), raise_server_exceptions=False) as c:
        yield c


def account_with_inbox(client: TestClient, fake_url: str) -> dict[str, Any]:
    """An account, its token (a marker too: random, shown once) and a generic inbox signed with
    ``SECRET`` whose replies go through Postmark with ``API_KEY`` (a key the fake refuses)."""
    account = client.post("/accounts", json={"name": "acme", "tier": "free"}, headers=ADMIN)
    token = client.post(f"/accounts/{account.json()['id']}/tokens", json={}, headers=ADMIN)
    auth = {"Authorization": f"Bearer {token.json()['token']}"}
    inbox = client.post(
        "/inboxes",
        json={
            "name": "support",
            "channel": "email",
            "provider": "generic",
            "secrets": {"signing_secret": SECRET},
            "outbound": {
                "via": "postmark",
                "from": "s@acme.test",
                "server_token": API_KEY,
                "api_url": fake_url,
                "timeout_s": 2,
            },
        },
        headers=auth,
    )
    assert inbox.status_code == 201, inbox.text
    return {"auth": auth, "token": token.json()["token"], "inbox": inbox.json()["id"]}


@contextmanager
def store_refuses_inserts(table: str) -> Iterator[None]:
    """The store refuses every insert into ``table`` (a trigger), as a full disk, a constraint
    or a lock timeout would: a failing statement, on SQLite and on PostgreSQL alike."""
    if engine().dialect.name == "postgresql":
        create = [
            "CREATE OR REPLACE FUNCTION refused_for_test() RETURNS trigger LANGUAGE plpgsql"
            " AS $$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$",
            f"CREATE TRIGGER refuse_{table} BEFORE INSERT ON {table}"
            " FOR EACH ROW EXECUTE FUNCTION refused_for_test()",
        ]
        drop = [f"DROP TRIGGER refuse_{table} ON {table}", "DROP FUNCTION refused_for_test()"]
    else:
        create = [
            f"CREATE TRIGGER refuse_{table} BEFORE INSERT ON {table}"
            " BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
        ]
        drop = [f"DROP TRIGGER refuse_{table}"]
    with transaction() as session:
        for statement in create:
            session.execute(text(statement))
    try:
        yield
    finally:
        with transaction() as session:
            for statement in drop:
                session.execute(text(statement))


# Routes and their refusals -----------------------------------------------------------------------


def test_routes_and_their_refusals_log_no_secret_token_signature_or_text(
    client: TestClient, fake: FakeProviders, logs: pytest.LogCaptureFixture
):
    acct = account_with_inbox(client, fake.url)
    body = json.dumps(message("m-1") | {"text": TEXT}).encode()
    stamp = str(int(time.time()))
    forged = {"X-Inboxsync-Timestamp": stamp, "X-Inboxsync-Signature": SIGNATURE}
    answer = client.post(f"/webhooks/{acct['inbox']}", content=body, headers=forged)
    assert answer.status_code == 401
    assert (
        post_webhook(client, acct["inbox"], message("m-2") | {"text": TEXT}, SECRET).status_code
        == 202
    )
    unknown = client.get("/inboxes", headers={"Authorization": f"Bearer {BAD_TOKEN}"})
    assert unknown.status_code == 401
    assert client.get("/inboxes", headers=acct["auth"]).status_code == 200
    smtp = {"via": "smtp", "from": "s@a.test", "host": "mail.test", "password": PASSWORD}
    bad_port = client.put(
        f"/inboxes/{acct['inbox']}/outbound", json=smtp | {"port": "x"}, headers=acct["auth"]
    )
    assert bad_port.status_code == 422
    assert PASSWORD not in bad_port.text  # not a log line, but the same rule
    assert_clean(everything_logged(logs), acct["token"])


# Statements the store refuses ---------------------------------------------------------------------


def test_a_refused_journal_insert_logs_neither_the_message_text_nor_the_secret(
    client: TestClient, fake: FakeProviders, logs: pytest.LogCaptureFixture
):
    acct = account_with_inbox(client, fake.url)
    with store_refuses_inserts("deliveries"):
        answer = post_webhook(client, acct["inbox"], message("m-1") | {"text": TEXT}, SECRET)
    assert answer.status_code == 500
    logged = everything_logged(logs)
    assert "refused by the test" in logged  # the failure was logged, with its statement ...
    assert_clean(logged, acct["token"])  # ... and without the rows it tried to write


def test_a_refused_inbox_insert_logs_no_secret_through_the_api_or_the_cli(
    client: TestClient, fake: FakeProviders, logs: pytest.LogCaptureFixture
):
    acct = account_with_inbox(client, fake.url)
    body = {
        "name": "other",
        "channel": "email",
        "provider": "generic",
        "secrets": {"signing_secret": SECRET},
    }
    with store_refuses_inserts("inboxes"):
        answer = client.post("/inboxes", json=body, headers=acct["auth"])
        cli = subprocess.run(
            [sys.executable, "-m", "cli.main", "create-inbox", "1", "other"]
            + ["--secret", f"signing_secret={SECRET}"],
            cwd=ROOT,
            env=os.environ,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert answer.status_code in (409, 500)  # SQLite: a constraint; PostgreSQL: an error
    assert cli.returncode != 0
    assert_clean(everything_logged(logs) + cli.stdout + cli.stderr, acct["token"])


# What fails in the workers ----------------------------------------------------------------------


def test_a_dead_lettered_delivery_and_failed_replies_log_nothing_they_carry(
    fake: FakeProviders, logs: pytest.LogCaptureFixture
):
    from tests.test_replies import customer_conversation, outbound

    bad = journal.delivery(1, "generic", {"external_id": "x", "text": TEXT})  # no sender
    counts = pipeline.ingest_deliveries([bad], task_id="test")
    assert counts["dead"] == 1 and count(DeadLetter) == 1
    refused_key = customer_conversation(outbound("postmark", fake.url, server_token=API_KEY))
    unreachable = customer_conversation(outbound("mailgun", "http://127.0.0.1:9", api_key=API_KEY))
    for conv in (refused_key, unreachable):
        rid, _ = replies.queue_reply(
            account_id=None, conversation_id=conv, body=ReplyIn(text=TEXT), key=None
        )
        assert replies.attempt(rid).outcome in ("failed", "retry")
    with fake_smtp() as smtp:  # it offers no AUTH: the login fails
        config = outbound("smtp", host="127.0.0.1", port=smtp.port, security="none")
        conv = customer_conversation(config | {"username": "u", "password": PASSWORD})
        rid, _ = replies.queue_reply(
            account_id=None, conversation_id=conv, body=ReplyIn(text=TEXT), key=None
        )
        assert replies.attempt(rid).outcome in ("failed", "retry")
    assert_clean(everything_logged(logs))


def test_a_worker_at_debug_level_prints_no_secret_key_or_text(
    client: TestClient, fake: FakeProviders, tmp_path: Path
):
    acct = account_with_inbox(client, fake.url)
    output = tmp_path / "worker.log"
    with output.open("wb") as sink:
        worker = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "worker", "-Q", "ingest,outbound"]
            + ["-c", "1", "--pool", "solo", "--loglevel", "debug"],
            cwd=ROOT,
            env=os.environ | {"INBOXSYNC_EMBEDDED_VISIBILITY_TIMEOUT_S": "3"},
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
        try:
            sent = post_webhook(client, acct["inbox"], message("m-1") | {"text": TEXT}, SECRET)
            assert sent.status_code == 202
            enqueue([journal.delivery(acct["inbox"], "generic", {"text": TEXT})])  # dead
            conv = eventually(
                lambda: client.get("/conversations", headers=acct["auth"]).json()["items"],
                timeout=60,
            )[0]
            queued = client.post(
                f"/conversations/{conv['id']}/replies",
                json={"text": TEXT, "to": ["maria@example.com"]},
                headers=acct["auth"],
            )
            assert queued.status_code == 202, queued.text
            location = queued.headers["location"]
            eventually(
                lambda: client.get(location, headers=acct["auth"]).json()["state"] == "failed",
                timeout=60,
            )
            eventually(lambda: count(DeadLetter) == 1, timeout=60)
        finally:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
    printed = output.read_text(errors="replace")
    assert "inboxsync.send_reply" in printed  # it did log, at debug
    assert_clean(printed, acct["token"])
    with transaction() as session:  # the inbox kept its secret: it was there to be leaked
        inbox = session.get(Inbox, acct["inbox"])
        assert inbox is not None and inbox.secrets["signing_secret"] == SECRET
