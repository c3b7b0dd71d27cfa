"""The benchmark's real processes: one store and broker, ``inboxsync serve``, and workers started
and stopped on demand; the load process (bench/load.py); where the CPU went.

Nothing is timed cold: the HTTP service is ready (``/healthz``) before anything is sent, workers
are ready when a warm-up batch has gone through them, and the load process opens its
connections before its clock starts.
"""

from __future__ import annotations

import json
import os
import resource
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
SECRET = "bench-secret"
BEARER = "bench-bearer"
THREADS = 5000  # distinct thread keys: new conversations and appends, as in a real inbox


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_request(path: str, body: bytes, headers: dict[str, str]) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Length: {len(body)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (head + "\r\n").encode() + body


def generic_requests(inbox_id: int, n: int, run: str) -> list[bytes]:
    """n signed webhooks of the generic provider, spread over THREADS conversations."""
    sys.path.insert(0, str(ROOT))
    from handlers.channels.generic import sign

    stamp = int(time.time())
    out = []
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
        headers = {
            "Content-Type": "application/json",
            "X-Inboxsync-Timestamp": str(stamp),
            "X-Inboxsync-Signature": sign(SECRET, stamp, body),
        }
        out.append(http_request(f"/webhooks/{inbox_id}", body, headers))
    return out


def mail_requests(inbox_id: int, mails: list[bytes]) -> list[bytes]:
    headers = {"Content-Type": "message/rfc822", "Authorization": f"Bearer {BEARER}"}
    return [http_request(f"/webhooks/{inbox_id}", raw, headers) for raw in mails]


class Pipeline:
    """One store + broker, the HTTP service, and workers started and stopped on demand."""

    def __init__(self, env: dict[str, str], stack: ExitStack, logs: Path) -> None:
        self.env, self.stack, self.logs = env, stack, logs
        self.port = free_port()
        self.workers: list[subprocess.Popen[bytes]] = []
        self._engine: Any = None
        self.cli("migrate")
        self.server = self._spawn(
            ["serve", "--port", str(self.port), "--no-migrate"], logs / "serve.log"
        )
        self._wait_http()
        account = self.cli("create-account", "bench", "--tier", "free")
        self.inbox = int(
            self.cli(
                "create-inbox", account, "bench", "--secret", f"signing_secret={SECRET}"
            ).split()[0]
        )
        self.mail_inbox = int(
            self.cli(
                "create-inbox",
                account,
                "mail",
                "--provider",
                "rfc822",
                "--secret",
                f"bearer_secret={BEARER}",
            ).split()[0]
        )

    def cli(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "cli.main", *args],
            env=self.env,
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        )
        return done.stdout.strip()

    def _spawn(self, args: list[str], log: Path, prefix: list[str] | None = None) -> Any:
        out = self.stack.enter_context(log.open("a"))
        cmd = [*(prefix or [sys.executable]), "-m", "cli.main", *args]
        proc = subprocess.Popen(cmd, env=self.env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        self.stack.callback(stop, proc)
        return proc

    def _wait_http(self) -> None:
        import httpx

        for _ in range(600):
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError("the HTTP service did not start")

    def start_workers(self, n: int, profile: Path | None = None) -> None:
        """Start ``n`` worker processes and return once they have stored a warm-up batch."""
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
        before = self.stored()
        self.send(generic_requests(self.inbox, 200 * n, f"warmup-{time.time_ns()}"))
        wait_stored(self, before + 200 * n)

    def stop_workers(self) -> None:
        for w in self.workers:
            stop(w)
        self.workers.clear()

    def query(self, sql: str) -> Any:
        from sqlalchemy import create_engine, text

        if self._engine is None:
            sys.path.insert(0, str(ROOT))
            from settings import Settings

            # The pipeline's store, whatever this process's environment names (None: embedded).
            kw: dict[str, Any] = {
                "data_dir": Path(self.env["INBOXSYNC_DATA_DIR"]),
                "database_url": self.env.get("DATABASE_URL"),
            }
            url = Settings(_env_file=None, **kw).resolved_database_url  # type: ignore[call-arg]
            self._engine = create_engine(url, pool_size=1)
            self.stack.callback(self._engine.dispose)
        with self._engine.connect() as conn:
            return conn.execute(text(sql)).all()

    def execute(self, sql: str) -> list[Any]:
        """Run ``sql`` in a transaction of its own and commit (seeding); its rows, if any."""
        self.query("SELECT 1")  # the engine
        with self._engine.begin() as conn:
            from sqlalchemy import text

            result = conn.execute(text(sql))
            return list(result.all()) if result.returns_rows else []

    def stored(self) -> int:
        return int(self.query("SELECT count(*) FROM messages")[0][0])

    def pending(self) -> int:
        """Accepted deliveries not stored yet (a worker deletes a delivery's journal row in the
        transaction that stores it). Cheap to poll, unlike counting messages."""
        return int(self.query("SELECT count(*) FROM (SELECT 1 FROM deliveries LIMIT 1) AS d")[0][0])

    def send(
        self, requests: list[bytes], connections: int = 64, rate: float | None = None
    ) -> tuple[float, dict[str, int]]:
        """Post ``requests`` from the load process; (seconds, status counts)."""
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump([r.decode("latin-1") for r in requests], f)
        args = [sys.executable, str(ROOT / "bench" / "load.py"), str(self.port), f.name]
        args += [str(connections)] + ([str(rate)] if rate else [])
        out = subprocess.run(args, check=True, capture_output=True, text=True)
        os.unlink(f.name)
        answer = json.loads(out.stdout.strip().splitlines()[-1])
        return float(answer["elapsed"]), answer["codes"]


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_stored(p: Pipeline, target: int, timeout: float = 900) -> float:
    """When every accepted delivery is stored; then checks that ``target`` messages are."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if not p.pending():
            done = time.perf_counter()
            if (stored := p.stored()) != target:
                raise RuntimeError(f"{stored} messages stored, {target} expected")
            return done
        time.sleep(0.02)
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
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "load generator": children.ru_utime + children.ru_stime,  # finished children: the load
        "HTTP ingress": _cpu_of(p.server.pid),
        "workers": sum(_cpu_of(w.pid) for w in p.workers),
        "PostgreSQL": _cpu_by_command("postgres"),
        "Redis": _cpu_by_command("redis-server"),
    }


def cpu_line(label: str, before: dict[str, float], after: dict[str, float], n: int) -> str:
    per = {k: 1000 * (after[k] - before[k]) / n for k in before}
    parts = ", ".join(f"{k} {v:.2f}" for k, v in per.items() if v > 0)
    return f"{label}: CPU ms per message: {parts}; total {sum(per.values()):.2f}"
