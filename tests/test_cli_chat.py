"""The CLI's chat parts: ``set-outbound`` for the chat providers, and the demo's WhatsApp round
trip (cli/demo_chat.py) against the real HTTP app and a real worker process."""

from __future__ import annotations

import typing
from collections.abc import Iterator
from contextlib import ExitStack

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner

from api.app import create_app
from api.webhooks import Ingress
from cli.main import app
from schemas.outbound import OutboundConfig
from settings import get_settings
from store.db import reading
from store.models import Inbox
from tests.apihelp import ADMIN
from tests.storehelp import new_account
from tests.workerhelp import start_worker, stop


def _vias() -> list[tuple[str, list[str]]]:
    """Every ``via`` of the outbound settings and its setting names (from the schema itself)."""
    union = typing.get_args(typing.get_args(OutboundConfig)[0])
    return [
        (
            model.model_fields["via"].annotation.__args__[0],
            [name for name in model.model_fields if name not in ("via", "from_")],
        )
        for model in union
    ]


def test_set_outbound_help_lists_every_via_and_its_settings():
    shown = CliRunner().invoke(app, ["set-outbound", "--help"], env={"COLUMNS": "200"}).output
    for via, names in _vias():
        assert via in shown, via
        for name in names:
            assert name in shown, (via, name)


def test_a_chat_via_is_set_without_from_and_a_mail_via_still_needs_it(db: None):
    inbox = new_account(provider="whatsapp", channel="chat", secrets={"app_secret": "s"})["inbox"]
    cli = CliRunner()
    settings = ["--setting", "access_token=EAAG-token", "--setting", "phone_number_id=1065"]
    ok = cli.invoke(app, ["set-outbound", str(inbox), "--via", "whatsapp", *settings])
    assert ok.exit_code == 0, ok.output
    assert ok.output.strip() == f"inbox {inbox} replies via whatsapp"
    with reading() as session:
        outbound = session.scalar(select(Inbox.outbound).where(Inbox.id == inbox))
    assert outbound is not None and outbound["via"] == "whatsapp"
    assert outbound["phone_number_id"] == "1065"
    with_from = cli.invoke(
        app, ["set-outbound", str(inbox), "--via", "whatsapp", "--from", "s@a.test", *settings]
    )
    assert with_from.exit_code == 2 and "from" in with_from.output
    no_from = cli.invoke(
        app, ["set-outbound", str(inbox), "--via", "sendgrid", "--setting", "api_key=k"]
    )
    assert no_from.exit_code == 2 and "from" in no_from.output


@pytest.fixture
def client(db: None) -> Iterator[TestClient]:
    settings = get_settings().model_copy(update={"sweep_interval_s": 0.5})
    with TestClient(Ingress(create_app(settings))) as c:
        yield c


def test_the_demos_whatsapp_round_trip(client: TestClient):
    from cli import demo_chat

    account = client.post(
        "/accounts",
        json={"name": "cora", "tier": "free", "created_at": "2025-03-10T00:00:00Z"},
        headers=ADMIN,
    ).json()
    token = client.post(f"/accounts/{account['id']}/tokens", json={}, headers=ADMIN).json()
    auth = {"Authorization": f"Bearer {token['token']}"}
    worker = start_worker("--pool", "solo")
    try:
        with ExitStack() as stack:
            demo_chat.whatsapp_round_trip(client, auth, stack)
    finally:
        stop(worker)
    [conv] = client.get("/conversations", headers=auth).json()["items"]
    view = client.get(f"/conversations/{conv['id']}", headers=auth).json()
    assert conv["contact"] == "+351910000000"
    assert [m["direction"] for m in view["messages"]] == ["inbound", "outbound", "inbound"]
    assert view["messages"][1]["delivery"] == "sent"
    # The answer is dated before the reply by her phone and listed after it (stored order).
    assert view["messages"][2]["sent_at"] < view["messages"][1]["sent_at"]


def test_the_demos_operations_round_trip(client: TestClient):
    """cli/demo_ops.py: a subscriber hears a bulk job's events (signatures verified by the
    demo's receiver) and the ticket's history names the job."""
    from cli import demo_ops
    from tests.bulkhelp import seed_tickets

    acct = new_account()
    token = client.post(f"/accounts/{acct['account']}/tokens", json={}, headers=ADMIN).json()
    auth = {"Authorization": f"Bearer {token['token']}"}
    [ticket] = seed_tickets(acct, 1)
    worker = start_worker("--pool", "solo")
    try:
        with ExitStack() as stack:
            demo_ops.operations_round_trip(client, {"auth": auth, "ticket": ticket}, stack)
    finally:
        stop(worker)
    history = client.get(f"/tickets/{ticket}/history", headers=auth).json()
    assert history["entries"][-1]["cause"]["via"] == "bulk"
    assert history["entries"][-1]["event_id"].startswith("bulk:")
    assert client.get(f"/tickets/{ticket}", headers=auth).json()["status"] == "closed"
