"""Threading across real worker processes (Redis + PostgreSQL on CI): two batches that share a
thread id queue behind each other (store/threads.py), whichever process runs them.

The HTTP ingress runs in-process; the workers are separate ``inboxsync worker`` processes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from api.app import create_app
from api.webhooks import Ingress
from store.db import reading
from store.models import Conversation, Delivery, Message
from tests import threadcorpus
from tests.apihelp import ADMIN, eventually
from tests.workerhelp import start_worker, stop

SECRET = "raw-s3cret"


@pytest.fixture
def client(db: None) -> Iterator[TestClient]:
    with TestClient(Ingress(create_app())) as c:
        yield c


@pytest.fixture
def inbox(client: TestClient) -> int:
    account = client.post("/accounts", json={"name": "acme", "tier": "free"}, headers=ADMIN).json()
    made = client.post(
        "/inboxes",
        json={
            "account_id": account["id"],
            "name": "mail",
            "channel": "email",
            "provider": "rfc822",
            "secrets": {"bearer_secret": SECRET},
        },
        headers=ADMIN,
    )
    assert made.status_code == 201, made.text
    return int(made.json()["id"])


def post_mail(client: TestClient, inbox: int, raw: bytes) -> None:
    answer = client.post(
        f"/webhooks/{inbox}",
        content=raw,
        headers={"Content-Type": "message/rfc822", "Authorization": f"Bearer {SECRET}"},
    )
    assert answer.status_code == 202, answer.text


def raw_mail(own: str, *, answers: str | None = None) -> bytes:
    lines = [
        "From: Maria <maria@example.com>",
        "To: support@acme.example",
        f"Subject: order {own}",
        f"Message-ID: <{own}>",
    ]
    if answers:
        lines.append(f"In-Reply-To: <{answers}>")
    return ("\r\n".join([*lines, "", f"text of {own}", ""])).encode()


def journaled() -> int:
    with reading() as session:
        return session.scalar(select(func.count()).select_from(Delivery)) or 0


def in_waves(client: TestClient, jobs: list[Callable[[], None]], size: int) -> None:
    """Run ``jobs`` from 8 client threads, ``size`` at a time, letting the workers drain the
    journal between waves: many small batches, none holding the whole corpus (where any old
    in-batch lookup would have threaded it)."""
    with ThreadPoolExecutor(8) as pool:
        for start in range(0, len(jobs), size):
            list(pool.map(lambda job: job(), jobs[start : start + size]))
            eventually(lambda: journaled() == 0, timeout=60)


def counts() -> tuple[int, int]:
    with reading() as session:
        messages = session.scalar(select(func.count()).select_from(Message)) or 0
        live = session.scalar(
            select(func.count()).select_from(Conversation).where(Conversation.removed_by.is_(None))
        )
        return messages, live or 0


def test_a_reply_stored_before_its_parent_joins_it_through_the_webhook(client, inbox):
    """The issue's reproduction: the reply is posted and stored, then its parent."""
    worker = start_worker("--pool", "solo")
    try:
        post_mail(client, inbox, raw_mail("r1@x", answers="p1@x"))
        eventually(lambda: counts()[0] == 1, timeout=60)
        post_mail(client, inbox, raw_mail("p1@x"))
        eventually(lambda: counts()[0] == 2, timeout=60)
    finally:
        stop(worker)
    assert counts() == (2, 1)


def test_parents_and_replies_through_two_worker_processes_never_split(client, inbox):
    """The issue's second case: for 40 threads, each parent and, after its 202, its reply, from
    8 client threads, to ``inboxsync worker -c 2``. The reply's batch may run beside the parent's
    in the other process: they share the parent's id, so one waits for the other."""
    client.app.state.batcher._max_items = 2  # type: ignore[attr-defined]  # many small batches
    worker = start_worker("-c", "2")
    try:

        def thread(n: int) -> Callable[[], None]:
            def post() -> None:
                post_mail(client, inbox, raw_mail(f"p{n}@x"))
                post_mail(client, inbox, raw_mail(f"r{n}@x", answers=f"p{n}@x"))

            return post

        in_waves(client, [thread(n) for n in range(40)], size=8)
        eventually(lambda: counts()[0] == 80, timeout=90)
    finally:
        stop(worker)
    assert counts() == (80, 40)


def test_a_shuffled_corpus_through_two_workers_gives_one_conversation_per_thread(client, inbox):
    """Generated threads (every reply style, lying dates, 20 % redelivered), shuffled, posted by
    8 client threads in batches of at most 3, stored by two worker processes."""
    corpus = threadcorpus.generate(80, seed=11)
    deliveries = corpus.deliveries(redelivered=0.2, seed=12)
    client.app.state.batcher._max_items = 3  # type: ignore[attr-defined]
    workers = [start_worker("--pool", "solo"), start_worker("--pool", "solo")]
    try:
        jobs = [lambda raw=m.raw: post_mail(client, inbox, raw) for m in deliveries]
        in_waves(client, jobs, size=16)
        eventually(lambda: counts()[0] == len(corpus.mails), timeout=120)
    finally:
        for w in workers:
            stop(w)
    assert counts() == (len(corpus.mails), corpus.threads)
