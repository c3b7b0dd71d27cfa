"""``make bench``: how fast the pipeline is, on this machine, with every guarantee on.

Runs the real processes (``inboxsync serve``, ``inboxsync worker``) and posts signed webhooks
over keep-alive HTTP connections from a separate load process, like a provider would:

- ingress: accepted webhooks/s with no worker running (each 202 means durably queued);
- end-to-end: messages/s from the first webhook sent to the last message committed in the store,
  with 1 and then 2 worker processes, on Redis + PostgreSQL;
- the same end-to-end pipeline on the embedded default (SQLite store, SQLite broker);
- email parsing and threading throughput on a generated corpus (bench/email_corpus.py);
- reply sending throughput against a fake provider on loopback (bench/replies.py).

Redis + PostgreSQL come from ``CELERY_BROKER_URL`` / ``DATABASE_URL`` (default: the local
servers). The run works in a schema and under a Redis key prefix of its own, removed at the end.
Prints a table and writes it to bench/results.md. ``--profile`` also writes a pyinstrument
profile of one worker to bench/profile-worker.txt.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from handlers.channels.generic import sign  # noqa: E402

SECRET = "bench-secret"
THREADS = 5000  # distinct thread keys: new conversations and appends, as in a real inbox


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def requests_for(inbox_id: int, n: int, run: str) -> list[bytes]:
    """n complete HTTP/1.1 requests, signed as the generic provider signs them."""
    out = []
    stamp = int(time.time())
    for i in range(n):
        body = json.dumps(
            {
                "external_id": f"{run}-{i}",
                "sender": f"customer{i % THREADS}@example.com",
                "thread_key": f"{run}-thread-{i % THREADS}",
                "text": f"message {i} of the benchmark; a few words like a short email body.",
                "sent_at": datetime.now(UTC).isoformat(),
            }
        ).encode()
        head = (
            f"POST /webhooks/{inbox_id} HTTP/1.1\r\nHost: bench\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"X-Inboxsync-Timestamp: {stamp}\r\n"
            f"X-Inboxsync-Signature: {sign(SECRET, stamp, body)}\r\n\r\n"
        ).encode()
        out.append(head + body)
    return out


async def _blast(port: int, reqs: list[bytes], connections: int) -> dict[str, int]:
    """Send every request over ``connections`` keep-alive connections; count the answers."""
    codes: dict[str, int] = {}
    it = iter(reqs)

    async def conn() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for req in it:
            writer.write(req)
            status = (await reader.readline()).split(b" ")[1].decode()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            codes[status] = codes.get(status, 0) + 1
        writer.close()

    await asyncio.gather(*(conn() for _ in range(connections)))
    return codes


def load_main(port: int, path: str, connections: int) -> None:
    """The load process: reads prepared requests from ``path``, prints the status counts."""
    reqs = json.loads(Path(path).read_text())
    data = [r.encode("latin-1") for r in reqs]
    print(json.dumps(asyncio.run(_blast(port, data, connections))))


class Pipeline:
    """One store + broker, the HTTP service, and workers started and stopped on demand."""

    def __init__(self, env: dict[str, str], stack: ExitStack, logs: Path) -> None:
        self.env, self.stack, self.logs = env, stack, logs
        self.port = free_port()
        self.workers: list[subprocess.Popen[bytes]] = []
        self._engine: Any = None
        subprocess.run([sys.executable, "-m", "cli.main", "migrate"], env=env, cwd=ROOT, check=True)
        self.server = self._spawn(
            ["serve", "--port", str(self.port), "--no-migrate"], logs / "serve.log"
        )
        self._wait_http()
        self.inbox = self._setup()

    def _spawn(self, args: list[str], log: Path, prefix: list[str] | None = None) -> Any:
        out = self.stack.enter_context(log.open("a"))
        cmd = [*(prefix or [sys.executable]), "-m", "cli.main", *args]
        proc = subprocess.Popen(cmd, env=self.env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        self.stack.callback(_stop, proc)
        return proc

    def _wait_http(self) -> None:
        import httpx

        for _ in range(300):
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError("the HTTP service did not start")

    def _setup(self) -> int:
        out = subprocess.run(
            [sys.executable, "-m", "cli.main", "create-account", "bench", "--tier", "free"],
            env=self.env,
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        )
        account = out.stdout.strip()
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "cli.main",
                "create-inbox",
                account,
                "bench",
                "--secret",
                f"signing_secret={SECRET}",
            ],
            env=self.env,
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        )
        return int(out.stdout.split()[0])

    def start_workers(self, n: int, profile: Path | None = None) -> None:
        for i in range(n):
            prefix = None
            if profile is not None and i == 0:
                prefix = [sys.executable, "-m", "pyinstrument", "-o", str(profile), "-r", "text"]
            self.workers.append(
                self._spawn(
                    ["worker", "--pool", "solo", "--loglevel", "warning"],
                    self.logs / f"worker{i}.log",
                    prefix,
                )
            )

    def stop_workers(self) -> None:
        for w in self.workers:
            _stop(w)
        self.workers.clear()

    def _query(self, sql: str) -> int:
        from sqlalchemy import create_engine, text

        from settings import Settings

        if self._engine is None:
            url = Settings(_env_file=None, **_settings_kwargs(self.env)).resolved_database_url
            self._engine = create_engine(url, pool_size=1)
            self.stack.callback(self._engine.dispose)
        with self._engine.connect() as conn:
            return int(conn.execute(text(sql)).scalar_one())

    def stored(self) -> int:
        return self._query("SELECT count(*) FROM messages")

    def pending(self) -> int:
        """Accepted deliveries not stored yet (the journal; a worker deletes a delivery's row in
        the transaction that stores its message). Cheap to poll, unlike counting messages."""
        return self._query("SELECT count(*) FROM (SELECT 1 FROM deliveries LIMIT 1) AS d")

    def send(self, n: int, run: str, connections: int = 64) -> tuple[float, dict[str, int]]:
        reqs = requests_for(self.inbox, n, run)
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump([r.decode("latin-1") for r in reqs], f)
        started = time.perf_counter()
        out = subprocess.run(
            [sys.executable, __file__, "--load", str(self.port), f.name, str(connections)],
            check=True,
            capture_output=True,
            text=True,
        )
        elapsed = time.perf_counter() - started
        os.unlink(f.name)
        return elapsed, json.loads(out.stdout.strip().splitlines()[-1])


def _settings_kwargs(env: dict[str, str]) -> dict[str, Any]:
    kw: dict[str, Any] = {}
    if "DATABASE_URL" in env:
        kw["database_url"] = env["DATABASE_URL"]
    if "INBOXSYNC_DATA_DIR" in env:
        kw["data_dir"] = Path(env["INBOXSYNC_DATA_DIR"])
    return kw


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_stored(p: Pipeline, target: int, timeout: float = 600) -> float:
    """When every accepted delivery is stored; then checks that ``target`` messages are."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if not p.pending():
            done = time.perf_counter()
            if (stored := p.stored()) != target:
                raise RuntimeError(f"{stored} messages stored, {target} expected")
            return done
        time.sleep(0.05)
    raise RuntimeError(f"only {p.stored()} of {target} messages stored in {timeout} s")


TICK = os.sysconf("SC_CLK_TCK")


def _cpu_of(pid: int) -> float:
    """User + system CPU seconds of a live process (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def _cpu_by_command(name: str) -> float:
    total = 0.0
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip().startswith(name):
                total += _cpu_of(int(comm.parent.name))
        except OSError:
            continue
    return total


def cpu_snapshot(p: Pipeline) -> dict[str, float]:
    """CPU seconds used so far by each part of the pipeline."""
    import resource

    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "load generator": children.ru_utime + children.ru_stime,  # finished children: the load
        "HTTP ingress": _cpu_of(p.server.pid),
        "workers": sum(_cpu_of(w.pid) for w in p.workers),
        "PostgreSQL": _cpu_by_command("postgres"),
        "Redis": _cpu_by_command("redis-server"),
    }


def measure_end_to_end(
    p: Pipeline, workers: int, n: int, run: str, profile: Path | None
) -> tuple[float, dict[str, float]]:
    """Messages/s, and CPU milliseconds per message by part of the pipeline."""
    before = p.stored()
    p.start_workers(workers, profile)
    time.sleep(3)  # workers connected and idle
    cpu0 = cpu_snapshot(p)
    started = time.perf_counter()
    _, codes = p.send(n, run)
    assert codes == {"202": n}, codes
    done = wait_stored(p, before + n)
    cpu1 = cpu_snapshot(p)
    p.stop_workers()
    per_message = {k: 1000 * (cpu1[k] - cpu0[k]) / n for k in cpu0}
    return n / (done - started), per_message


def cpu_line(label: str, per_message: dict[str, float]) -> str:
    parts = ", ".join(f"{k} {v:.2f}" for k, v in per_message.items() if v > 0)
    return f"{label}: CPU ms per message: {parts}; total {sum(per_message.values()):.2f}"


def measure_ingress(p: Pipeline, n: int, run: str) -> float:
    elapsed, codes = p.send(n, run)
    assert codes == {"202": n}, codes
    return n / elapsed


def redis_pg_env(base: dict[str, str], logs: Path) -> tuple[dict[str, str], Any]:
    """The PostgreSQL database and Redis database the environment names, used through a schema
    and a key prefix of this run's own (tests/scratch.py), removed at the end."""
    from tests import scratch

    db_url = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
    broker = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
    made = scratch.make(db_url, broker, "bench")
    env = {**base, **made.env, "INBOXSYNC_DATA_DIR": str(logs)}
    return env, made.remove


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=20000, help="webhooks per measurement")
    parser.add_argument("--embedded-n", type=int, default=5000)
    parser.add_argument("--mails", type=int, default=3000, help="generated mails to parse")
    parser.add_argument("--replies", type=int, default=2000, help="replies to send")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--skip-embedded", action="store_true")
    args = parser.parse_args()
    base = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL")}
    work = Path(tempfile.mkdtemp(prefix="inboxsync-bench-"))
    rows: list[tuple[str, str, str]] = []
    notes: list[str] = []
    profile = ROOT / "bench" / "profile-worker.txt" if args.profile else None
    try:
        env, cleanup = redis_pg_env(base, work)
        try:
            with ExitStack() as stack:
                p = Pipeline(env, stack, work)
                rate = measure_ingress(p, args.n, "ingress")
                rows.append(("ingress: accepted webhooks/s (Redis)", f"{rate:,.0f}", f"{args.n}"))
                print(rows[-1], flush=True)
                p.start_workers(1, profile)
                time.sleep(1)
                started = time.perf_counter()
                done = wait_stored(p, args.n)  # drain what the ingress run queued
                p.stop_workers()
                rows.append(
                    (
                        "workers alone: stored messages/s draining a full queue, 1 worker process",
                        f"{args.n / (done - started):,.0f}",
                        f"{args.n}",
                    )
                )
                print(rows[-1], flush=True)
                figures = run_script("email_corpus.py", args.mails, env)
                rows.append(
                    (
                        "email parsing: raw mails → normalized messages/s, 1 process",
                        f"{figures['parse_per_s']:,.0f}",
                        f"{args.mails}",
                    )
                )
                rows.append(
                    (
                        "email threading: messages/s stored by reference in batches of 200, "
                        "PostgreSQL",
                        f"{figures['thread_per_s']:,.0f}",
                        f"{args.mails}",
                    )
                )
                print(*rows[-2:], sep="\n", flush=True)
                figures = run_script("replies.py", args.replies, env)
                rows.append(
                    (
                        "replies: sent/s through a fake Postmark API on loopback, 1 worker "
                        f"process (8 threads); the provider got {figures['provider_got']:,}",
                        f"{figures['sent_per_s']:,.0f}",
                        f"{args.replies}",
                    )
                )
                print(rows[-1], flush=True)
                for workers in (1, 2):
                    rate, cpu = measure_end_to_end(p, workers, args.n, f"e2e{workers}", None)
                    notes.append(cpu_line(f"{workers} worker process(es), Redis + PostgreSQL", cpu))
                    rows.append(
                        (
                            f"end-to-end: messages/s, {workers} worker process(es), "
                            "Redis + PostgreSQL",
                            f"{rate:,.0f}",
                            f"{args.n}",
                        )
                    )
                    print(rows[-1], flush=True)
        finally:
            cleanup()
        if not args.skip_embedded:
            data = work / "embedded"
            data.mkdir()
            env = {**base, "INBOXSYNC_DATA_DIR": str(data)}
            with ExitStack() as stack:
                p = Pipeline(env, stack, work)
                rate, cpu = measure_end_to_end(p, 1, args.embedded_n, "emb", None)
                notes.append(cpu_line("embedded", cpu))
                rows.append(
                    (
                        "end-to-end: messages/s, 1 worker process, embedded "
                        "(SQLite store + broker)",
                        f"{rate:,.0f}",
                        f"{args.embedded_n}",
                    )
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(rows, notes)


def report(rows: list[tuple[str, str, str]], notes: list[str]) -> None:
    cores = os.cpu_count()
    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# inboxsync benchmark",
        "",
        f"Machine: {cores} cores; date: {date}; command: `make bench`.",
        "",
        "| measurement | rate | webhooks |",
        "|---|---:|---:|",
        *(f"| {a} | {b} | {c} |" for a, b, c in rows),
        "",
        "Where the CPU goes during the end-to-end runs (every process shares the 2 cores):",
        "",
        *(f"- {line}" for line in notes),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    (ROOT / "bench" / "results.md").write_text(text)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--load":
        load_main(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
    else:
        main()
