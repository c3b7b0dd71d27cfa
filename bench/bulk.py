"""Bulk jobs in ``make bench`` (bench/run.py steps ``bulk`` and ``bulk_live``), on Redis +
PostgreSQL:

- closing N tickets with their conversations (one each) by one ``close_tickets`` job, with 1
  and 2 worker processes: items/s and seconds from the job's creation to its end, as the store
  recorded them (``bulk_jobs.created_at`` → ``finished_at``); pacing off
  (``INBOXSYNC_BULK_RATE_PER_S=0``), four chunks in flight;
- live traffic beside a job: the end-to-end generic webhook load on 2 worker processes (every
  queue, as ``inboxsync worker`` starts), without and then with a bulk job running at the
  default settings; the ratio of the two rates.

The tickets are seeded with three ``INSERT … SELECT`` statements into the run's scratch schema
(accounts of their own, dropped with the schema).
"""

from __future__ import annotations

import time
from typing import Any

from bench.harness import Pipeline, generic_requests, wait_stored

FAST = {"INBOXSYNC_BULK_RATE_PER_S": "0", "INBOXSYNC_BULK_PARALLEL_CHUNKS": "4"}


def seed(p: Pipeline, name: str, n: int) -> str:
    """A new account with ``n`` open tickets of one open conversation each; its id."""
    account = p.cli("create-account", name, "--tier", "free")
    inbox = p.cli("create-inbox", account, name, "--secret", "signing_secret=x").split()[0]
    contact = p.execute(
        f"INSERT INTO contacts (account_id, handle) VALUES ({account}, '{name}@example.com')"
        " RETURNING id"
    )[0][0]
    p.execute(
        "INSERT INTO tickets (account_id, status, properties, location, created_at,"
        f" last_change_at) SELECT {account}, 'new', '{{}}', 'inbox', now(), now()"
        f" FROM generate_series(1, {n})"
    )
    p.execute(
        "INSERT INTO conversations (account_id, inbox_id, contact_id, thread_key, status,"
        " location, ticket_id, created_at, last_message_at, last_change_at)"
        f" SELECT {account}, {inbox}, {contact}, 'bulk-' || t.id, 'open', 'inbox', t.id,"
        f" now(), now(), now() FROM tickets t WHERE t.account_id = {account}"
    )
    p.execute("ANALYZE tickets; ANALYZE conversations")
    return account


def start_job(p: Pipeline, account: str, action: str = "close_tickets") -> int:
    out = p.cli("bulk", "create", "--account", account, "--action", action, "--no-follow")
    return int(out.split()[2].rstrip(":"))


def job_row(p: Pipeline, job: int) -> Any:
    return p.query(
        "SELECT state, done, failed, total, extract(epoch FROM coalesce(finished_at, now())"
        f" - created_at) FROM bulk_jobs WHERE id = {job}"
    )[0]


def wait_job(p: Pipeline, job: int, timeout: float = 1800) -> Any:
    deadline = time.monotonic() + timeout
    while (row := job_row(p, job))[0] == "running":
        if time.monotonic() > deadline:
            raise RuntimeError(f"bulk job {job} still running after {timeout} s: {row}")
        time.sleep(0.2)
    return row


def measure_close(p: Pipeline, n: int, workers: int, report: Any) -> None:
    account = seed(p, f"bulk{workers}", n)
    saved = dict(p.env)
    p.env.update(FAST)
    try:
        p.start_workers(workers)
        job = start_job(p, account)
        state, done, failed, total, seconds = wait_job(p, job)
        p.stop_workers()
    finally:
        p.env.clear()
        p.env.update(saved)
    closed = int(
        p.query(
            f"SELECT count(*) FROM conversations WHERE account_id = {account} AND status = 'closed'"
        )[0][0]
    )
    if (state, done, failed, closed) != ("completed", n, 0, n):
        raise RuntimeError(f"bulk job {job}: {state}, {done} done, {failed} failed, {closed}")
    label = f"{workers} worker process{'es' if workers > 1 else ''}"
    report.row(
        f"bulk: close {n:,} tickets with their conversations, {label}: items/s",
        f"{n / seconds:,.0f}",
        n,
    )
    report.row(
        f"bulk: close {n:,} tickets with their conversations, {label}: seconds",
        f"{seconds:,.1f}",
        n,
    )


def measure_live(p: Pipeline, n: int, tickets: int, report: Any) -> None:
    """End-to-end webhook rate with 2 workers, without and with a bulk job (default pacing)."""
    account = seed(p, "bulklive", tickets)
    p.start_workers(2)
    rates = []
    job = None
    for label in ("without", "with"):
        if label == "with":
            job = start_job(p, account)
            while job_row(p, job)[1] == 0:
                time.sleep(0.05)
        before = p.stored()
        started = time.perf_counter()
        _, codes = p.send(generic_requests(p.inbox, n, f"bulk-live-{label}"))
        assert codes == {"202": n}, codes
        rates.append(n / (wait_stored(p, before + n) - started))
    assert job is not None
    state, done, _, total, seconds = job_row(p, job)
    p.cli("bulk", "cancel", str(job))
    p.stop_workers()
    report.row("live ingest, 2 workers, no bulk job: messages/s", f"{rates[0]:,.0f}", n)
    report.row(
        f"live ingest, 2 workers, a bulk job running (default pacing; {done:,} of {total:,}"
        f" items done in {seconds:,.0f} s, {state} at the end): messages/s",
        f"{rates[1]:,.0f}",
        n,
    )
    report.row("live ingest with / without a bulk job running", f"{rates[1] / rates[0]:.2f}", n)
