"""Email parsing and threading throughput, on a generated corpus (called by bench/run.py).

``python bench/email_corpus.py N`` with ``DATABASE_URL`` naming a migrated store: builds N mails
from the fixtures' shapes (plain, quoted-printable Latin-1, HTML alternative, attachments, replies
that thread by In-Reply-To or by References only), then measures

- parsing: raw bytes → ``InboundMessage`` (the rfc822 adapter's ``normalize``), one process;
- threading: storing them in batches of 200 (dedupe, reference lookup, conversation upsert).

Prints one JSON object: ``{"parse_per_s": …, "thread_per_s": …, "n": …, "conversations": …}``.
"""

from __future__ import annotations

import base64
import json
import random
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "email"


def corpus(n: int, seed: int = 7) -> list[bytes]:
    """n mails: a third start a thread, the rest answer an earlier one (In-Reply-To, or only
    References), each with its own Message-ID and body."""
    rng = random.Random(seed)
    shapes = [
        (FIXTURES / name).read_bytes()
        for name in ("plain_utf8.eml", "latin1_qp.eml", "html_alternative.eml", "attachments.eml")
    ]
    mails, ids = [], []
    for i in range(n):
        raw = rng.choice(shapes)
        head, _, body = raw.partition(b"\r\n\r\n")
        lines = [
            line
            for line in head.split(b"\r\n")
            if not line.lower().startswith((b"message-id:", b"in-reply-to:", b"references:"))
        ]
        own = f"<bench-{i}@corpus.example>".encode()
        lines.append(b"Message-ID: " + own)
        if ids and i % 3:
            parent = rng.choice(ids[-200:])
            lines.append((b"In-Reply-To: " if i % 3 == 1 else b"References: ") + parent)
        ids.append(own)
        mails.append(b"\r\n".join(lines) + b"\r\n\r\n" + body + f"\r\n{i}\r\n".encode())
    return mails


def main(n: int) -> None:
    from handlers.channels import adapter_for
    from handlers.ingest import ingest
    from store.db import transaction
    from store.models import Account, Inbox

    with transaction() as session:
        account = Account(name="bench-mail", tier="free", created_at=datetime.now(UTC))
        session.add(account)
        session.flush()
        inbox = Inbox(
            account_id=account.id, name="mail", channel="email", provider="rfc822", secrets={}
        )
        session.add(inbox)
        session.flush()
        inbox_id = inbox.id
    mails = corpus(n)
    adapter = adapter_for("rfc822")
    payloads = [{"raw": base64.b64encode(m).decode()} for m in mails]
    now = datetime.now(UTC)
    started = time.perf_counter()
    messages = [adapter.normalize(inbox_id, now, p)[0] for p in payloads]
    parsed = time.perf_counter()
    conversations: set[int] = set()
    for start in range(0, n, 200):
        with transaction() as session:
            outcomes = ingest(session, messages[start : start + 200])
        conversations.update(o.conversation_id for o in outcomes if o.conversation_id)
    stored = time.perf_counter()
    print(
        json.dumps(
            {
                "n": n,
                "parse_per_s": n / (parsed - started),
                "thread_per_s": n / (stored - parsed),
                "conversations": len(conversations),
            }
        )
    )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3000)
