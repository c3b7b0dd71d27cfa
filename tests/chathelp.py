"""What the chat channel tests (tests/test_{slack,twilio,whatsapp,telegram,widget}.py) share:
the app under test, the journal and the replies as the tests read them (tests/test_replies.py
too), the CLI ingest of saved events, and the scenario of a worker killed while the provider
holds a reply's request."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from api.app import create_app
from api.webhooks import Ingress
from handlers import journal, pipeline
from handlers.channels import adapter_for
from handlers.channels.base import WebhookRequest
from handlers.outbound import replies
from schemas.outbound import ReplyIn
from settings import get_settings
from store.db import reading
from store.models import Delivery, Message, Reply
from tests.apihelp import ADMIN, eventually
from tests.fakehttp import FakeServer
from tests.storehelp import at
from tests.workerhelp import ROOT, start_worker, stop

LATER = timedelta(hours=1)


@contextmanager
def chat_client() -> Iterator[TestClient]:
    """The HTTP app behind its ingress, sweeping the journal every half second."""
    settings = get_settings().model_copy(update={"sweep_interval_s": 0.5})
    with TestClient(Ingress(create_app(settings))) as client:
        yield client


def request(body: bytes, headers: dict[str, str] | None = None) -> WebhookRequest:
    """``body`` as posted to an inbox's webhook, for an adapter's ``verify`` and ``accept``."""
    return WebhookRequest("POST", "https://x/webhooks/1", headers or {}, {}, body)


def process_journal() -> dict[str, int]:
    """Store every delivery the journal holds, as a worker does."""
    return pipeline.process_deliveries(journal.sweep(older_than_s=-1), None)


def journaled() -> int:
    with reading() as session:
        return int(session.scalar(select(func.count()).select_from(Delivery)) or 0)


def messages(inbox: int | None = None) -> list[Message]:
    """The stored messages (of ``inbox``), oldest first."""
    query = select(Message).order_by(Message.id)
    if inbox is not None:
        query = query.where(Message.inbox_id == inbox)
    with reading() as session:
        rows = list(session.scalars(query).all())
        session.expunge_all()
        return rows


def queue(conversation_id: int, text: str) -> int:
    reply_id, _ = replies.queue_reply(
        account_id=None, conversation_id=conversation_id, body=ReplyIn(text=text), key=None
    )
    return reply_id


def reply(reply_id: int) -> Reply:
    with reading() as session:
        row = session.get_one(Reply, reply_id)
        session.expunge(row)
        return row


def later(n: int = 1) -> datetime:
    """``n`` hours from now: past every backoff."""
    return datetime.now(UTC) + n * LATER


def provider_status(client: TestClient, rid: int) -> str | None:
    status: str | None = client.get(f"/replies/{rid}", headers=ADMIN).json()["provider_status"]
    return status


def first_conversation() -> int:
    """The conversation of the first message stored, once a worker has stored it."""
    found: list[int] = eventually(lambda: [m.conversation_id for m in messages()], timeout=60)
    return found[0]


def assert_unauthorized(answers: Iterable[Any]) -> None:
    """Each answer is a 401 with an error and its message, and nothing was journaled."""
    for answer in answers:
        assert answer.status_code == 401, answer.text
        assert answer.json()["error"] and "message" in answer.json(), answer.json()
    assert journaled() == 0


def assert_names_the_field(answers: Iterable[tuple[str, Any]], *, exact: bool = False) -> None:
    """Each ``(field, answer)`` is a 422 whose message names ``field`` (in any case, unless
    ``exact``), and nothing was journaled."""
    for field, answer in answers:
        assert answer.status_code == 422, (field, answer.text)
        message = answer.json()["message"]
        assert field in (message if exact else message.lower()), (field, answer.json())
    assert journaled() == 0


def cli_ingest(inbox: int, provider: str, files: Sequence[Path | str]) -> str:
    """``inboxsync ingest`` of saved webhook bodies, in its own process; what it printed."""
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", "ingest", "--inbox", str(inbox)]
        + ["--provider", provider, *map(str, files)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def worker_killed_mid_send(
    client: TestClient,
    fake: FakeServer,
    *,
    conversation: Callable[[], int],
    taken: Callable[[], Any],
    ends: str,
    queues: str = "outbound",
    headers: Mapping[str, str] = ADMIN,
) -> dict[str, Any]:
    """A reply sent by a worker (``queues``, with a 2 s outbound lease) that is killed while the
    provider, ``fake``, holds the request it has taken (``taken()`` is then true); a second
    worker takes over once the ingress's sweeper finds the lease run out and requeues the reply
    as uncertain. ``conversation()`` is called once the first worker runs; the reply is asked
    for with ``headers``. The reply, as the API shows it, once it is in state ``ends``."""
    fake.faults.append("block")  # the provider takes the request and holds the answer
    lease = {"INBOXSYNC_OUTBOUND_LEASE_S": "2"}
    first = start_worker("-Q", queues, "--pool", "solo", extra_env=lease)
    try:
        conv = conversation()
        answer = client.post(
            f"/conversations/{conv}/replies", json={"text": "Olá"}, headers=headers
        )
        assert answer.status_code == 202, answer.text
        rid = answer.json()["id"]
        eventually(taken, timeout=60)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    fake.release.set()
    second = start_worker("-Q", "outbound", "--pool", "solo", extra_env=lease)
    try:
        done: dict[str, Any] = eventually(
            lambda: (
                (r := client.get(f"/replies/{rid}", headers=headers).json())["state"] == ends and r
            ),
            timeout=60,
        )
    finally:
        stop(second)
    return done


def accepted(provider: str, body: bytes, headers: dict[str, str] | None = None) -> list[Any]:
    """The payloads ``provider``'s adapter accepts from ``body``, as the journal keeps them."""
    payloads = adapter_for(provider).accept(request(body, headers)).payloads
    json.dumps(payloads)  # what the journal keeps must be JSON
    return payloads


def deliver(provider: str, inbox: int, bodies: Sequence[bytes]) -> dict[str, int]:
    """Bodies as the edge accepts them, stored as a worker stores them (one batch)."""
    payloads = [p for b in bodies for p in accepted(provider, b)]
    return pipeline.ingest_deliveries(
        [journal.delivery(inbox, provider, p) for p in payloads], None
    )


def normalized(provider: str, body: bytes, headers: dict[str, str] | None = None) -> Any:
    """The one payload of ``body``, normalized as inbox 1's at ``at(0)``."""
    [payload] = accepted(provider, body, headers)
    return adapter_for(provider).normalize(1, at(0), payload)
