"""Reading under a large store: ``GET /conversations`` pages with a million messages stored.

An API poller reads pages of conversations while messages pour in; a page must cost a fixed
number of queries (api/views.py), not one per row. The store is filled directly in SQL (an
account of its own: 200,000 conversations of 5 messages each by default), then 300 pages of 50
from random places and 100 single conversations are fetched over one keep-alive connection.
"""

from __future__ import annotations

import random
import time
from typing import Any

from sqlalchemy import create_engine, text


def fill(p: Any, messages: int) -> tuple[int, str, int]:
    """An account with ``messages`` messages in conversations of five; (account, token, inbox)."""
    account = p.cli("create-account", "reader", "--tier", "free")
    inbox = int(p.cli("create-inbox", account, "reading").split()[0])
    token = p.cli("create-token", account)
    conversations = max(1, messages // 5)
    engine = create_engine(p._engine.url)
    with engine.begin() as conn:
        params = {"a": int(account), "i": inbox, "n": conversations}
        conn.execute(
            text(
                "INSERT INTO contacts (account_id, handle) SELECT :a, 'reader' || g || "
                "'@example.com' FROM generate_series(1, 5000) g"
            ),
            params,
        )
        conn.execute(
            text(
                "INSERT INTO conversations (account_id, inbox_id, contact_id, thread_key, "
                "status, location, created_at, last_message_at, last_change_at) "
                "SELECT :a, :i, c.first + g % 5000, 'read-' || g, 'open', 'inbox', now(), "
                "now(), now() FROM generate_series(1, :n) g, "
                "(SELECT min(id) AS first FROM contacts WHERE account_id = :a) c"
            ),
            params,
        )
        conn.execute(
            text(
                "INSERT INTO messages (inbox_id, conversation_id, external_id, direction, "
                "sender, text, sent_at, received_at, stored_at, headers, automatic) "
                "SELECT :i, c.id, 'read-' || c.id || '-' || k, 'inbound', 'reader@example.com', "
                "'a few words of text', now(), now(), now(), '{}', false "
                "FROM conversations c, generate_series(1, 5) k WHERE c.inbox_id = :i"
            ),
            params,
        )
        conn.execute(text("ANALYZE"))
    engine.dispose()
    return int(account), token, inbox


def measure(p: Any, messages: int, report: Any) -> None:
    import httpx

    p.stored()  # opens the harness's engine
    started = time.perf_counter()
    _, token, inbox = fill(p, messages)
    filled = time.perf_counter() - started
    ids = [r[0] for r in p.query(f"SELECT id FROM conversations WHERE inbox_id = {inbox}")]
    rng = random.Random(5)
    headers = {"Authorization": f"Bearer {token}"}
    pages: list[float] = []
    singles: list[float] = []
    with httpx.Client(base_url=f"http://127.0.0.1:{p.port}", headers=headers) as client:
        for _ in range(20):  # warm: connection, plans, caches
            client.get("/conversations", params={"limit": 50})
        for _ in range(300):
            t0 = time.perf_counter()
            got = client.get("/conversations", params={"limit": 50, "after_id": rng.choice(ids)})
            pages.append(time.perf_counter() - t0)
            assert got.status_code == 200
        for _ in range(100):
            t0 = time.perf_counter()
            assert client.get(f"/conversations/{rng.choice(ids)}").status_code == 200
            singles.append(time.perf_counter() - t0)
    report.row(
        f"reading: GET /conversations?limit=50, {messages:,} messages stored "
        f"(filled in {filled:.0f} s): p50 / p99 ms",
        f"{_pct(pages, 50):.1f} / {_pct(pages, 99):.1f}",
        300,
    )
    report.row(
        "reading: GET /conversations/{id} with its messages, same store: p50 / p99 ms",
        f"{_pct(singles, 50):.1f} / {_pct(singles, 99):.1f}",
        100,
    )


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, int(len(ordered) * q / 100))]
