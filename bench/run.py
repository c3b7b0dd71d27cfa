"""``make bench``: how fast the pipeline is, on this machine, with every guarantee on.

Runs the real processes (``inboxsync serve``, ``inboxsync worker``; bench/harness.py) and posts
webhooks over keep-alive connections from a separate load process (bench/load.py), like a
provider would. Measures, on Redis + PostgreSQL:

- ingress: accepted webhooks/s with no worker running (each 202 means durably journaled);
- workers alone: messages/s draining what the ingress run queued (from the first stored);
- end-to-end: messages/s from the first webhook sent to the last message committed, 1 and 2
  worker processes; and ingest messages left on the broker once all is stored;
- email end to end: a shuffled corpus of generated threads (tests/threadcorpus.py) through the
  raw-mail webhook: mails/s, and conversations counted against threads;
- chat (bench/chat.py): per chat provider, signed as it signs, from many contacts: accepted
  webhooks/s at the ingress alone and stored messages/s end to end, beside the generic
  provider's figures taken the same way;
- latency: accepted → committed (each delivery's ``received_at`` → ``processed_at``) at a steady
  offered rate, p50 / p99;
- reading: a 50-row page of ``GET /conversations`` with a million messages stored, p50 / p99;
- email parsing and threading alone; reply sending (bench/email_corpus.py, bench/replies.py);
- bulk jobs (bench/bulk.py): closing 100,000 tickets with their conversations, 1 and 2 workers;
  live ingest with and without a bulk job running;

then the end-to-end run on the embedded default (SQLite store and broker).

``DATABASE_URL`` / ``CELERY_BROKER_URL`` name the PostgreSQL and Redis to use (default: the local
servers); the run works in a schema and under a key prefix of its own, removed at the end
(tests/scratch.py). Prints a table and writes it to bench/results.md. ``--profile`` also writes
a pyinstrument profile of one worker to bench/profile-worker.txt.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import bulk, chat, harness, reading  # noqa: E402
from bench.harness import Pipeline, cpu_line, cpu_snapshot, generic_requests, wait_stored  # noqa: E402

Row = tuple[str, str, str]


class Report:
    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.notes: list[str] = []

    def row(self, what: str, figure: str, size: int | str) -> None:
        self.rows.append((what, figure, f"{size}"))
        print(self.rows[-1], flush=True)

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(text, flush=True)


def measure_ingress(p: Pipeline, n: int, report: Report) -> None:
    p.send(generic_requests(p.inbox, 1000, "warm-ingress"))  # inbox cache, connections, JITs
    elapsed, codes = p.send(generic_requests(p.inbox, n, "ingress"))
    assert codes == {"202": n}, codes
    report.row("ingress: accepted webhooks/s (Redis), no worker running", f"{n / elapsed:,.0f}", n)


def measure_drain(p: Pipeline, n: int, report: Report) -> None:
    """Workers alone: what the ingress run queued, timed from the first message stored."""
    before = p.stored()
    queued = p.pending() and int(p.query("SELECT count(*) FROM deliveries")[0][0])
    p.workers.append(
        p._spawn(["worker", "--pool", "solo", "--loglevel", "warning"], p.logs / "worker-drain.log")
    )
    while (first := p.stored()) == before:
        time.sleep(0.01)
    started = time.perf_counter()
    done = wait_stored(p, before + queued)
    p.stop_workers()
    rate = (before + queued - first) / (done - started)
    report.row(
        "workers alone: stored messages/s draining a full queue, 1 worker process",
        f"{rate:,.0f}",
        queued,
    )


def measure_end_to_end(
    p: Pipeline, workers: int, n: int, label: str, report: Report, profile: Path | None = None
) -> float:
    p.start_workers(workers, profile)  # returns when they have stored a warm-up batch
    before = p.stored()
    cpu0 = cpu_snapshot(p)
    started = time.perf_counter()
    _, codes = p.send(generic_requests(p.inbox, n, f"e2e-{label}"))
    assert codes == {"202": n}, codes
    done = wait_stored(p, before + n)
    cpu1 = cpu_snapshot(p)
    left = queue_left(p)
    p.stop_workers()
    rate = n / (done - started)
    report.row(f"end-to-end: messages/s, {label}", f"{rate:,.0f}", n)
    report.note(cpu_line(label, cpu0, cpu1, n))
    if left is not None:
        report.note(f"{label}: ingest messages left on the broker once all was stored: {left}")
    return rate


def measure_metrics_cost(
    p: Pipeline, env: dict[str, str], stack: ExitStack, work: Path, n: int, report: Report
) -> None:
    """What counting costs: end to end with 1 worker, metrics on (the default), off
    (``INBOXSYNC_METRICS=false``: another HTTP service and worker on the same store), on again."""
    logs = work / "metrics-off"
    logs.mkdir(exist_ok=True)
    off_pipeline = Pipeline({**env, "INBOXSYNC_METRICS": "false"}, stack, logs)
    on = [measure_end_to_end(p, 1, n, "1 worker process, metrics on", report)]
    off = measure_end_to_end(
        off_pipeline, 1, n, "1 worker process, INBOXSYNC_METRICS=false", report
    )
    on.append(measure_end_to_end(p, 1, n, "1 worker process, metrics on (again)", report))
    report.row("metrics cost: end-to-end rate with metrics on / off", f"{sum(on) / 2 / off:.2f}", n)


def queue_left(p: Pipeline) -> int | None:
    """Ingest task messages still on Redis (a batch whose work another task already did would
    stay here and cost a task later); None on the embedded broker."""
    url, prefix = p.env.get("CELERY_BROKER_URL", ""), p.env.get("INBOXSYNC_REDIS_KEY_PREFIX", "")
    if not url.startswith("redis"):
        return None
    import redis

    return int(redis.Redis.from_url(url).llen(f"{prefix}ingest"))


def measure_email(p: Pipeline, threads: int, report: Report) -> None:
    from tests import threadcorpus

    corpus = threadcorpus.generate(threads, seed=2026, max_replies=3)
    deliveries = corpus.deliveries(redelivered=0.05, seed=7)
    requests = harness.mail_requests(p.mail_inbox, [m.raw for m in deliveries])
    p.start_workers(1)
    before = p.stored()
    started = time.perf_counter()
    _, codes = p.send(requests)
    assert codes == {"202": len(requests)}, codes
    done = wait_stored(p, before + len(corpus.mails))
    p.stop_workers()
    live = int(
        p.query(
            f"SELECT count(*) FROM conversations WHERE inbox_id = {p.mail_inbox}"
            " AND removed_by IS NULL"
        )[0][0]
    )
    merged = int(
        p.query(
            f"SELECT count(*) FROM conversations WHERE inbox_id = {p.mail_inbox}"
            " AND merged_into IS NOT NULL"
        )[0][0]
    )
    report.row(
        f"email end to end: mails/s, {threads:,} threads, {len(corpus.mails):,} mails "
        f"({len(deliveries):,} deliveries, shuffled), 1 worker; conversations: {live:,} "
        f"({merged} merged on the way)",
        f"{len(deliveries) / (done - started):,.0f}",
        len(deliveries),
    )
    if live != threads:
        raise RuntimeError(f"{live} conversations for {threads} threads")


def measure_latency(p: Pipeline, rate: float, seconds: float, report: Report) -> None:
    """Accepted → committed per delivery at a steady offered rate."""
    p.start_workers(1)
    first = int(p.query("SELECT coalesce(max(id), 0) FROM delivery_outcomes")[0][0])
    before = p.stored()
    n = int(rate * seconds)
    _, codes = p.send(generic_requests(p.inbox, n, "latency"), rate=rate)
    assert codes == {"202": n}, codes
    wait_stored(p, before + n)
    p.stop_workers()
    p50, p99, worst = p.query(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY d),"
        " percentile_cont(0.99) WITHIN GROUP (ORDER BY d), max(d) FROM ("
        " SELECT extract(epoch FROM processed_at - received_at) * 1000 AS d"
        f" FROM delivery_outcomes WHERE id > {first}) AS l"
    )[0]
    report.row(
        f"latency accepted → committed at {rate:,.0f} msgs/s offered for {seconds:g} s, "
        "1 worker: p50 / p99 / max ms",
        f"{p50:,.0f} / {p99:,.0f} / {worst:,.0f}",
        n,
    )


def run_script(name: str, n: int, env: dict[str, str]) -> dict[str, Any]:
    """Run ``bench/<name> n``; the JSON object its last line prints."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / name), str(n)],
        env=env,
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    )
    figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def measure_scripts(env: dict[str, str], args: argparse.Namespace, report: Report) -> None:
    figures = run_script("email_corpus.py", args.mails, env)
    report.row(
        "email parsing: raw mails → normalized messages/s, 1 process",
        f"{figures['parse_per_s']:,.0f}",
        args.mails,
    )
    report.row(
        "email threading: messages/s stored in batches of 200, PostgreSQL",
        f"{figures['thread_per_s']:,.0f}",
        args.mails,
    )
    # The fake provider listens on loopback, which workers refuse unless told (README: Replies).
    loopback = {**env, "INBOXSYNC_OUTBOUND_ALLOW_PRIVATE": "true"}
    figures = run_script("replies.py", args.replies, loopback)
    report.row(
        "replies: sent/s through a fake Postmark API on loopback, 1 worker process "
        f"(8 threads); the provider got {figures['provider_got']:,}",
        f"{figures['sent_per_s']:,.0f}",
        args.replies,
    )


def on_redis_and_postgres(
    base: dict[str, str], work: Path, args: argparse.Namespace, report: Report
) -> None:
    from tests import scratch

    made = scratch.make(
        os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"),
        os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0"),
        "bench",
    )
    env = {**base, **made.env, "INBOXSYNC_DATA_DIR": str(work)}
    try:
        with ExitStack() as stack:
            p = Pipeline(env, stack, work)
            steps: dict[str, Callable[[], None]] = {
                "ingress": lambda: measure_ingress(p, args.n, report),
                "drain": lambda: measure_drain(p, args.n, report),
                "e2e1": lambda: measure_end_to_end(
                    p, 1, args.n, "1 worker process, Redis + PostgreSQL", report, args.profile
                ),
                "e2e2": lambda: measure_end_to_end(
                    p, 2, args.n, "2 worker processes, Redis + PostgreSQL", report
                ),
                "metrics": lambda: measure_metrics_cost(p, env, stack, work, args.n, report),
                "email": lambda: measure_email(p, args.threads, report),
                "chat": lambda: chat.measure(p, args.chat_n, report),
                "latency": lambda: measure_latency(p, args.rate, args.seconds, report),
                "reading": lambda: reading.measure(p, args.read_messages, report),
                "scripts": lambda: measure_scripts(env, args, report),
                "bulk": lambda: [bulk.measure_close(p, args.bulk_n, w, report) for w in (1, 2)],
                "bulk_live": lambda: bulk.measure_live(p, args.n, args.bulk_n // 2, report),
            }
            for name, step in steps.items():
                if not args.only or name in args.only:
                    step()
    finally:
        made.remove()


def on_embedded(base: dict[str, str], work: Path, args: argparse.Namespace, report: Report) -> None:
    data = work / "embedded"
    data.mkdir()
    env = {**base, "INBOXSYNC_DATA_DIR": str(data)}
    with ExitStack() as stack:
        p = Pipeline(env, stack, data)
        profile = ROOT / "bench" / "profile-embedded-worker.txt" if args.profile else None
        measure_end_to_end(
            p,
            1,
            args.embedded_n,
            "1 worker process, embedded (SQLite store + broker)",
            report,
            profile,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=20000, help="webhooks per measurement")
    parser.add_argument("--embedded-n", type=int, default=10000)
    parser.add_argument("--threads", type=int, default=1000, help="email threads end to end")
    parser.add_argument("--chat-n", type=int, default=5000, help="chat: webhooks per provider")
    parser.add_argument("--rate", type=float, default=1000, help="latency: offered msgs/s")
    parser.add_argument("--seconds", type=float, default=15, help="latency: how long")
    parser.add_argument("--read-messages", type=int, default=1_000_000)
    parser.add_argument("--mails", type=int, default=3000, help="generated mails to parse")
    parser.add_argument("--replies", type=int, default=2000, help="replies to send")
    parser.add_argument("--bulk-n", type=int, default=100_000, help="tickets a bulk job closes")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--skip-embedded", action="store_true")
    parser.add_argument(
        "--only",
        nargs="*",
        default=[],
        help="run only these Redis + PostgreSQL steps: ingress drain e2e1 e2e2 metrics email chat "
        "latency reading scripts bulk bulk_live (no embedded run, no results.md)",
    )
    args = parser.parse_args()
    args.profile = ROOT / "bench" / "profile-worker.txt" if args.profile else None
    base = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "CELERY_BROKER_URL", "INBOXSYNC_REDIS_KEY_PREFIX")
    }
    work = Path(tempfile.mkdtemp(prefix="inboxsync-bench-"))
    report = Report()
    try:
        on_redis_and_postgres(base, work, args, report)
        if not args.skip_embedded and not args.only:
            on_embedded(base, work, args, report)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not args.only:
        write(report)


def write(report: Report) -> None:
    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# inboxsync benchmark",
        "",
        f"Machine: {os.cpu_count()} cores; date: {date}; command: `make bench`.",
        "",
        "| measurement | figure | webhooks |",
        "|---|---:|---:|",
        *(f"| {a} | {b} | {c} |" for a, b, c in report.rows),
        "",
        "Notes (CPU per part of the pipeline; every process shares the cores):",
        "",
        *(f"- {line}" for line in report.notes),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    (ROOT / "bench" / "results.md").write_text(text)


if __name__ == "__main__":
    main()
