"""Reply sending throughput (called by bench/run.py).

``python bench/replies.py N`` with ``DATABASE_URL`` / ``CELERY_BROKER_URL`` naming a migrated
store and a broker: queues N replies on one conversation, starts one ``inboxsync worker -Q
outbound --pool threads`` process, and times until every reply is ``sent`` through the fake Postmark
API of the tests (a real HTTP server on loopback, in this process). Checks that the provider got
each reply exactly once. Prints one JSON object: ``{"n", "sent_per_s", "provider_got"}``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(n: int, threads: int = 8) -> None:

    from handlers.outbound import replies
    from schemas.inbound import InboundMessage
    from schemas.outbound import ReplyIn
    from store.db import transaction
    from store.models import Account, Inbox
    from tests.fakeproviders import POSTMARK_TOKEN, FakeProviders
    from workers import publish

    fake = FakeProviders()
    with transaction() as session:
        account = Account(name="bench-replies", tier="free", created_at=datetime.now(UTC))
        session.add(account)
        session.flush()
        inbox = Inbox(
            account_id=account.id,
            name="replies",
            channel="email",
            provider="rfc822",
            secrets={},
            outbound={
                "via": "postmark",
                "from": "Bench <bench@acme.example>",
                "server_token": POSTMARK_TOKEN,
                "api_url": fake.url,
            },
        )
        session.add(inbox)
        session.flush()
        inbox_id = inbox.id
    from handlers.ingest import ingest

    now = datetime.now(UTC)
    customer = InboundMessage(
        inbox_id=inbox_id,
        external_id=f"mid:bench-{time.time_ns()}@customer.example",
        sender="customer@example.com",
        text="hello",
        sent_at=now,
        received_at=now,
        headers={"email": {"from_": {"name": "", "email": "customer@example.com"}, "subject": "x"}},
    )
    with transaction() as session:
        [outcome] = ingest(session, [customer])
    conversation = outcome.conversation_id
    assert conversation is not None
    ids = [
        replies.queue_reply(
            account_id=None,
            conversation_id=conversation,
            body=ReplyIn(text=f"reply {i}"),
            key=None,
        )[0]
        for i in range(n)
    ]
    worker = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "worker", "-Q", "outbound", "--pool", "threads"]
        + ["-c", str(threads), "--loglevel", "warning"],
        cwd=ROOT,
    )
    try:
        # Warm: the worker is up and has sent one reply before the clock starts.
        publish.reply(ids[0])
        deadline = time.monotonic() + 60
        while _sent([ids[0]]) < 1:
            if time.monotonic() > deadline:
                raise SystemExit("the warm-up reply was not sent within 60 s")
            time.sleep(0.05)
        ids = ids[1:]
        n -= 1
        for reply_id in ids:
            publish.reply(reply_id)
        started = time.perf_counter()
        while True:
            sent = _sent(ids)
            if sent == n:
                break
            if time.perf_counter() - started > 600:
                raise SystemExit(f"only {sent} of {n} replies sent in 600 s")
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
    finally:
        worker.terminate()
        worker.wait(30)
        fake.close()
    got = len(fake.accepted)
    print(json.dumps({"n": n + 1, "sent_per_s": n / elapsed, "provider_got": got}))


def _sent(ids: list[int]) -> int:
    from sqlalchemy import func, select

    from store.db import reading
    from store.models import Reply

    with reading() as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(Reply)
                .where(Reply.id.in_(ids), Reply.state == "sent")
            )
            or 0
        )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
