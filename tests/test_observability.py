"""What an operator sees: /metrics counts move when the matching thing happens (webhooks by
provider and code, refused signatures, tasks, the accepted → committed latency) and show the
store's state; log lines carry the ids that follow one message (one grep finds a delivery at the
ingress and in the worker), as JSON with LOG_FORMAT=json; a worker process serves its own
/metrics (tests/test_worker_metrics.py: no in-thread worker may take its work)."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from api.webhooks import Ingress
from observability import logs
from tests.apihelp import eventually, message, post_webhook, setup_account
from tests.workerhelp import ROOT


@pytest.fixture
def client(db: None, worker: None) -> Iterator[TestClient]:
    with TestClient(Ingress(create_app())) as c:
        yield c


def sample(text: str, name: str, **labels: str) -> float:
    """The value of sample ``name`` with ``labels`` in an exposition, 0 if absent."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


def scrape(client: TestClient) -> str:
    got = client.get("/metrics")
    assert got.status_code == 200
    return got.text


def test_counts_move_when_their_things_happen(client):
    acct = setup_account(client)
    before = scrape(client)
    assert post_webhook(client, acct["inbox"], message("m1")).status_code == 202
    assert post_webhook(client, acct["inbox"], message("m2"), secret="wrong").status_code == 401
    eventually(
        lambda: (
            sample(scrape(client), "inboxsync_delivery_commit_seconds_count")
            > sample(before, "inboxsync_delivery_commit_seconds_count")
        )
    )
    after = scrape(client)

    def moved(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert moved("inboxsync_webhooks_total", provider="generic", code="202") == 1
    assert moved("inboxsync_webhooks_total", provider="generic", code="401") == 1
    assert moved("inboxsync_webhook_signature_failures_total", provider="generic") == 1
    assert moved("inboxsync_tasks_total", task="inboxsync.ingest_batch", outcome="success") >= 1
    assert moved("inboxsync_deliveries_processed_total", state="stored") == 1
    assert moved("inboxsync_http_requests_total", route="/accounts", code="201") == 0
    assert sample(after, "inboxsync_journal_backlog") == 0
    assert "inboxsync_queue_depth" in after and "inboxsync_replies" in after
    for gauge in ("inboxsync_events_pending", "inboxsync_subscribers_disabled"):
        assert sample(after, gauge) == 0, gauge
    assert sample(after, "inboxsync_bulk_jobs", state="running") == 0


def test_event_and_bulk_gauges_read_the_store(client):
    """What an operator alerts on for outbound events and bulk jobs (README Operating)."""
    from handlers import bulk
    from schemas.bulk import BulkJobIn
    from settings import get_settings
    from store.db import transaction
    from store.models import Subscriber
    from tests.bulkhelp import Published, seed_tickets

    acct = setup_account(client)
    owner = {"account": acct["account"]["id"], "inbox": acct["inbox"]}
    spec = BulkJobIn.model_validate({"action": "close_tickets", "ids": seed_tickets(owner, 1)})
    bulk.create(spec, owner["account"], {"via": "test"}, get_settings(), Published())
    with transaction() as session:
        session.add(
            Subscriber(
                account_id=owner["account"],
                url="https://hooks.example.com/x",
                types=["status.changed"],
                secret="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                enabled=False,
                created_at=datetime.now(UTC),
            )
        )
    found = scrape(client)
    assert sample(found, "inboxsync_bulk_jobs", state="running") == 1
    assert sample(found, "inboxsync_subscribers_disabled") == 1
    assert sample(found, "inboxsync_events_pending") == 0


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """Log lines as JSON into a buffer, the way LOG_FORMAT=json writes them to stderr."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    buffer = io.StringIO()
    stderr, sys.stderr = sys.stderr, buffer
    try:
        logs.configure("json", "INFO")
    finally:
        sys.stderr = stderr
    yield buffer
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in saved[0]:
        root.addHandler(handler)
    root.setLevel(saved[1])


def test_one_grep_follows_a_delivery_from_the_ingress_to_its_conversation(client, json_lines):
    acct = setup_account(client)
    answer = post_webhook(client, acct["inbox"], message("m1")).json()
    [delivery] = answer["deliveries"]
    eventually(lambda: "deliveries processed" in json_lines.getvalue())
    lines = [json.loads(line) for line in json_lines.getvalue().splitlines() if line]
    about = [line for line in lines if delivery in (line.get("delivery_ids") or [])]
    assert {line["logger"] for line in about} >= {"inboxsync.access", "workers.tasks"}
    access = next(line for line in about if line["logger"] == "inboxsync.access")
    assert access["request_id"] and access["provider"] == "generic"


def test_a_refused_signature_is_logged_with_inbox_and_reason_never_the_secret(client, json_lines):
    acct = setup_account(client)
    post_webhook(client, acct["inbox"], message("m1"), secret="not-the-secret-0xbeef")
    refused = [
        json.loads(line)
        for line in json_lines.getvalue().splitlines()
        if line and "webhook refused" in line
    ]
    assert refused and refused[0]["inbox_id"] == acct["inbox"]
    assert refused[0]["reason"] == "signature does not match"
    assert "s3cret" not in json_lines.getvalue() and "0xbeef" not in json_lines.getvalue()


def test_api_requests_are_answered_with_a_request_id(client):
    got = client.get("/healthz", headers={"X-Request-Id": "trace-42"})
    assert got.headers["x-request-id"] == "trace-42"
    assert client.get("/healthz").headers["x-request-id"]


def test_log_format_json_reaches_a_command():
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL",)}
    done = subprocess.run(
        [sys.executable, "-c", "from settings import Settings; print(Settings().log_format)"],
        cwd=ROOT,
        env={**env, "LOG_FORMAT": "json"},
        capture_output=True,
        text=True,
    )
    assert done.stdout.strip() == "json"
