"""``make chaos``: a seeded, rerunnable run of the real processes while they are being killed.

    make chaos                       # seed 1, 50,000 events; writes bench/chaos.md
    make chaos SEED=7 EVENTS=5000

It starts its own PostgreSQL (a fresh ``initdb`` cluster) and Redis (append-only) on loopback
ports of its own, ``inboxsync serve`` and two or more ``inboxsync worker`` processes
(bench/chaosservices.py), and sends a seeded plan of events (bench/chaostraffic.py): generic
webhooks, raw mails of generated threads, agents' actions through the API, each sent up to three
times, shuffled, by clients that retry what was not acknowledged (bench/chaosclient.py). Meanwhile
it kills a worker with SIGKILL every few seconds (and starts a replacement), restarts Redis once
(SIGKILL), restarts PostgreSQL once (``pg_ctl restart -m immediate``) and kills the ingress once
(SIGKILL, then starts it again). Then it waits until everything is drained (journal, pending
changes, broker queues and unacknowledged messages all empty) and compares the store with what
it was promised and with the rules (bench/chaosmodel.py): nothing acknowledged lost, nothing
doubled, every conversation and ticket as docs/rules.md computes it from the recorded history,
every mail thread in one live conversation. Everything it made is removed at the end, also on
Ctrl-C or SIGTERM. Exit code 1 on any loss, duplicate or mismatch (or if it did not drain).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import chaosreport  # noqa: E402
from bench.chaosclient import Clients, Directory, Tally  # noqa: E402
from bench.chaosmodel import Findings, check  # noqa: E402
from bench.chaosservices import (  # noqa: E402
    ADMIN_TOKEN,
    Inboxsync,
    Postgres,
    Redis,
    clean_environment,
)
from bench.chaostraffic import ACCOUNTS, OWNERS_PER_ACCOUNT, Plan, make_plan  # noqa: E402

QUEUES = ("ingest", "inbox", "helpdesk", "outbound", "bulk")
# A worker is killed only once it has been up this long (past its start-up, so at work).
WORKER_MIN_AGE_S = 5.0
BIG_FAULTS = ("Redis restart", "PostgreSQL restart", "ingress kill -9")

# Recovery is what is under test, so its clocks are short: a journaled delivery or pending
# change is published again 10 s after its broker message went missing, and a message a killed
# worker had taken comes back after 15 s (both default to minutes in production).
FAST_RECOVERY = {
    "INBOXSYNC_SWEEP_AFTER_S": "10",
    "INBOXSYNC_SWEEP_INTERVAL_S": "2",
    "INBOXSYNC_REDIS_VISIBILITY_TIMEOUT_S": "15",
    "INBOXSYNC_REDIS_RESTORE_INTERVAL_S": "2",
    "INBOXSYNC_API_WAIT_TIMEOUT_S": "5",
}


@dataclass
class Config:
    seed: int = 1
    events: int = 50_000
    workers: int = 2
    concurrency: int = 32
    kill_every_s: tuple[float, float] = (4.0, 8.0)  # between two worker kills, drawn per kill
    drain_timeout_s: float = 1200.0
    faults: bool = True  # False: the same traffic undisturbed (a baseline to compare with)
    report: Path | None = None  # where to write the Markdown report
    keep_logs: Path | None = None  # keep the processes' logs there (default: removed)


@dataclass
class Fault:
    kind: str
    at_s: float  # since the traffic started
    detail: str = ""


@dataclass
class Result:
    config: Config
    plan: Plan
    tally: Tally
    findings: Findings
    faults: list[Fault] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    drained: bool = False

    @property
    def ok(self) -> bool:
        """Nothing lost, doubled or mismatched, all drained, every send answered."""
        tally = self.tally
        unanswered = tally.refused or tally.gave_up or tally.client_errors
        return self.drained and self.findings.ok and not unanswered


def run(config: Config) -> Result:
    """The whole run; removes everything it started and made before it returns or raises."""
    started = time.monotonic()
    plan = make_plan(config.seed, config.events)
    timings = {"plan": time.monotonic() - started}
    faults: list[Fault] = []
    with ExitStack() as stack:
        pg, redis = Postgres(), Redis()
        stack.callback(pg.remove)
        pg.start()
        stack.callback(redis.remove)
        redis.start()
        work = Path(tempfile.mkdtemp(prefix="inboxsync-chaos-"))
        stack.callback(shutil.rmtree, work, True)
        logs = config.keep_logs or work / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        env = clean_environment(
            {
                "DATABASE_URL": pg.url,
                "CELERY_BROKER_URL": redis.url,
                "INBOXSYNC_DATA_DIR": str(work / "data"),
                "INBOXSYNC_ADMIN_TOKEN": ADMIN_TOKEN,
                **FAST_RECOVERY,
            }
        )
        services = Inboxsync(env, logs, stack)
        services.cli("migrate")
        services.start_server()
        for _ in range(config.workers):
            services.start_worker()
        directory = setup(services.base)
        timings["setup"] = time.monotonic() - started - timings["plan"]
        clients = Clients(services.port, plan, directory, config.concurrency)
        sending = time.monotonic()
        asyncio.run(_traffic(clients, services, pg, redis, config, faults))
        timings["traffic"] = time.monotonic() - sending
        mark = time.monotonic()
        drained = drain(services, pg.url, redis, config.drain_timeout_s, faults, sending)
        timings["drain"] = time.monotonic() - mark
        services.stop_all()
        mark = time.monotonic()
        findings = check(pg.url, plan, directory, clients.tally)
        timings["check"] = time.monotonic() - mark
    timings["total"] = time.monotonic() - started
    result = Result(config, plan, clients.tally, findings, faults, timings, drained)
    if config.report is not None:
        config.report.write_text(chaosreport.render(result))
    return result


def setup(base: str) -> Directory:
    """The accounts of the plan, each with a generic inbox, a raw-mail inbox and owners."""
    import httpx

    signing, bearer = "chaos-signing-secret", "chaos-bearer-secret"
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    accounts, generic, mail, owners = [], [], [], []
    with httpx.Client(base_url=base, headers=admin, timeout=30) as http:

        def post(path: str, body: dict[str, object]) -> int:
            answer = http.post(path, json=body)
            answer.raise_for_status()
            return int(answer.json()["id"])

        for spec in ACCOUNTS:
            account = post(
                "/accounts", {"name": spec.name, "tier": spec.tier, "created_at": spec.created_at}
            )
            accounts.append(account)
            inbox = {"account_id": account, "channel": "email"}
            generic.append(
                post(
                    "/inboxes",
                    {
                        **inbox,
                        "name": "orders",
                        "provider": "generic",
                        "secrets": {"signing_secret": signing},
                    },
                )  # fmt: skip
            )
            mail.append(
                post(
                    "/inboxes",
                    {
                        **inbox,
                        "name": "mail",
                        "provider": "rfc822",
                        "secrets": {"bearer_secret": bearer},
                    },
                )  # fmt: skip
            )
            owners.append(
                [
                    post("/owners", {"account_id": account, "name": f"agent {n}"})
                    for n in range(OWNERS_PER_ACCOUNT)
                ]
            )
    return Directory(accounts, generic, mail, owners, signing, bearer, ADMIN_TOKEN)


async def _traffic(
    clients: Clients,
    services: Inboxsync,
    pg: Postgres,
    redis: Redis,
    config: Config,
    faults: list[Fault],
) -> None:
    """Send the plan while injecting faults; return when every send is answered or given up.

    The fault schedule is seeded apart from the traffic: the three one-off faults fire when
    the sends dispatched pass fractions drawn from the seed, worker kills at drawn intervals."""
    rng = random.Random(config.seed * 7919 + 1)
    at = sorted(rng.uniform(0.15, 0.85) for _ in BIG_FAULTS)
    kinds = list(BIG_FAULTS)
    rng.shuffle(kinds)
    due = list(zip(at, kinds, strict=True))
    started = time.monotonic()
    sender = asyncio.create_task(clients.run())
    next_kill = started + rng.uniform(*config.kill_every_s)
    said = started
    if not config.faults:
        await sender
        return
    while not sender.done():
        await asyncio.sleep(0.2)
        if time.monotonic() - said > 10:
            said = time.monotonic()
            _progress(clients, said - started)
        await _replace_exited(services, faults, started)
        if due and clients.progress >= due[0][0]:
            await _big_fault(due.pop(0)[1], services, pg, redis, faults, started)
        if time.monotonic() >= next_kill and services.working(WORKER_MIN_AGE_S):
            await _kill_worker(rng, services, faults, started)
            next_kill = time.monotonic() + rng.uniform(*config.kill_every_s)
    # A short run may end before a fault was due: each kind still happens once.
    for _, kind in due:
        await _big_fault(kind, services, pg, redis, faults, started)
    if not any(f.kind == "worker kill -9" for f in faults):
        await _kill_worker(rng, services, faults, started)
    await sender


def _progress(clients: Clients, elapsed: float) -> None:
    t = clients.tally
    print(
        f"{elapsed:5.0f} s: {t.done:,} of {len(clients.plan.sends):,} sends answered, "
        f"{len(t.acknowledged):,} messages acknowledged, {sum(t.retries.values()):,} retries",
        flush=True,
    )


async def _kill_worker(
    rng: random.Random, services: Inboxsync, faults: list[Fault], started: float
) -> None:
    candidates = services.working(WORKER_MIN_AGE_S) or list(range(len(services.workers)))
    pid = await asyncio.to_thread(services.kill_worker, rng.choice(candidates))
    faults.append(Fault("worker kill -9", time.monotonic() - started, f"pid {pid}"))


async def _big_fault(
    kind: str,
    services: Inboxsync,
    pg: Postgres,
    redis: Redis,
    faults: list[Fault],
    started: float,
) -> None:
    """One of BIG_FAULTS; recorded with how long the service was away."""
    at = time.monotonic() - started
    if kind == "Redis restart":
        redis.kill()
        await asyncio.sleep(1.0)  # down long enough for every client of it to notice
        await asyncio.to_thread(redis.start)
    elif kind == "PostgreSQL restart":
        await asyncio.to_thread(pg.restart_immediate)
    else:
        services.kill_server()
        await asyncio.sleep(0.5)
        await asyncio.to_thread(services.start_server)
    away = time.monotonic() - started - at
    faults.append(Fault(kind, at, f"back after {away:.1f} s"))


async def _replace_exited(services: Inboxsync, faults: list[Fault], started: float) -> None:
    for what, code in await asyncio.to_thread(services.replace_exited):
        faults.append(
            Fault(f"{what} exited on its own", time.monotonic() - started, f"exit code {code}")
        )


def backlog(pg_url: str, redis: Redis) -> dict[str, int]:
    """What is still waiting anywhere: journal rows, pending changes, broker queues, messages
    taken by a worker and not acknowledged."""
    import psycopg

    with psycopg.connect(pg_url, connect_timeout=5) as conn:
        left = {
            "journal": conn.execute("SELECT count(*) FROM deliveries").fetchone()[0],  # type: ignore[index]
            # A pending row whose change was recorded or dead-lettered is never going away:
            # waiting for it would never end. The run reports such rows (chaosmodel: stuck).
            "pending changes": conn.execute(
                "SELECT count(*) FROM pending_changes p"
                " WHERE NOT EXISTS (SELECT 1 FROM dead_letters d WHERE d.key = p.id)"
                " AND NOT EXISTS (SELECT 1 FROM changes c WHERE c.id = p.id)"
            ).fetchone()[0],  # type: ignore[index]
        }
    client = redis.client()
    left |= {f"queue {q}": int(client.llen(q)) for q in QUEUES}
    left["unacknowledged"] = int(client.hlen("unacked"))
    return left


def _pending(pg_url: str) -> list[tuple[str, str, str]]:
    """The oldest pending changes (id, queue, enqueued at): what a stuck drain waits for."""
    import psycopg

    try:
        with psycopg.connect(pg_url, connect_timeout=5) as conn:
            rows = conn.execute(
                "SELECT id, queue, enqueued_at::text FROM pending_changes"
                " ORDER BY enqueued_at LIMIT 5"
            ).fetchall()
    except psycopg.Error as exc:
        return [("?", "?", repr(exc))]
    return [tuple(r) for r in rows]


def drain(
    services: Inboxsync,
    pg_url: str,
    redis: Redis,
    timeout_s: float,
    faults: list[Fault],
    started: float,
) -> bool:
    """Wait until nothing is waiting anywhere, three seconds in a row; False on the timeout.
    Processes that end on their own meanwhile are restarted and recorded (times from
    ``started``, when the traffic began)."""
    deadline = time.monotonic() + timeout_s
    quiet, said = 0, time.monotonic()
    while time.monotonic() < deadline:
        for what, code in services.replace_exited():
            at = time.monotonic() - started
            faults.append(Fault(f"{what} exited on its own (drain)", at, f"exit code {code}"))
        try:
            left = backlog(pg_url, redis)
        except Exception as exc:  # noqa: BLE001 - a service still coming back: not drained yet
            left = {f"unreachable ({type(exc).__name__})": 1}
        waiting = sum(left.values())
        quiet = quiet + 1 if waiting == 0 else 0
        if waiting and time.monotonic() - said > 10:
            said = time.monotonic()
            print("draining:", ", ".join(f"{k} {v}" for k, v in left.items() if v), flush=True)
            if left.get("pending changes"):
                print("  pending:", _pending(pg_url), flush=True)
        if quiet >= 3:
            return True
        time.sleep(1.0)
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--report", type=Path, default=ROOT / "bench" / "chaos.md")
    parser.add_argument("--keep-logs", type=Path, default=None)
    parser.add_argument("--drain-timeout", type=float, default=1200.0, help="seconds")
    parser.add_argument("--no-faults", action="store_true", help="a baseline: traffic only")
    args = parser.parse_args(argv)
    if args.workers < 2:
        parser.error("--workers: at least 2 (one is killed while the others go on)")

    def stop(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")  # unwinds run()'s clean-up

    signal.signal(signal.SIGTERM, stop)
    config = Config(
        seed=args.seed,
        events=args.events,
        workers=args.workers,
        concurrency=args.concurrency,
        report=args.report,
        keep_logs=args.keep_logs,
        drain_timeout_s=args.drain_timeout,
        faults=not args.no_faults,
    )
    result = run(config)
    print(chaosreport.summary(result))
    print(f"report: {os.path.relpath(args.report)}")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
