"""The chaos run's own processes: a PostgreSQL cluster and a Redis on loopback ports of their
own, the ingress (``inboxsync serve``) and the workers, each started, killed and restarted on
demand, and all of it removed at the end.

Nothing here touches the machine's shared PostgreSQL, Redis or RabbitMQ: the cluster is a fresh
``initdb`` in a temporary directory, Redis a ``redis-server`` with its own port and directory,
and the inboxsync processes get an environment that names only those two (any ``DATABASE_URL``,
``CELERY_BROKER_URL`` or ``INBOXSYNC_*`` of the caller is dropped).

``initdb`` and ``postgres`` refuse to run as root: as root they run as the ``postgres`` system
user (``runuser``), in a directory that user owns.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack, suppress
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ADMIN_TOKEN = "chaos-admin-token"


def free_port() -> int:
    """A loopback port nothing listens on now (the OS's choice)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(ready: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Poll ``ready`` until it is true; RuntimeError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if ready():
                return
        except Exception:  # noqa: BLE001 - not up yet: refused, reset, starting up
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not become ready in {timeout:.0f} s")


def postgres_bindir() -> Path:
    """The newest ``/usr/lib/postgresql/*/bin`` with ``initdb``, else the one on PATH."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: (
            int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0
        ),
    )
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    if on_path is None:
        raise RuntimeError("no PostgreSQL binaries (initdb) under /usr/lib/postgresql or on PATH")
    return Path(on_path).parent


class Postgres:
    """A throwaway cluster: ``initdb`` in a temporary directory, listening on 127.0.0.1 only,
    with a trust login ``inboxsync`` and a database ``inboxsync``."""

    def __init__(self) -> None:
        self.bin = postgres_bindir()
        self.port = free_port()
        root = os.geteuid() == 0
        # As root the cluster's user must reach its directory: /tmp, not a private TMPDIR.
        self.dir = Path(
            tempfile.mkdtemp(prefix="inboxsync-chaos-pg-", dir="/tmp" if root else None)
        )
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"
        self._as: list[str] = []
        if root:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError("running as root needs a 'postgres' system user") from None
            os.chown(self.dir, user.pw_uid, user.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        self.url = f"postgresql://inboxsync@127.0.0.1:{self.port}/inboxsync"

    def _run(self, *args: str) -> None:
        subprocess.run([*self._as, *args], check=True, capture_output=True, text=True)

    def _ctl(self, action: str, *extra: str) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1"
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w",
            "-t", "120", "-o", options, *extra, action,
        )  # fmt: skip

    def start(self) -> None:
        """initdb, start, and create the database."""
        self._run(
            str(self.bin / "initdb"), "-D", str(self.data), "-U", "inboxsync", "--auth=trust",
            "-E", "UTF8", "--locale=C", "--no-sync",
        )  # fmt: skip
        self._ctl("start")
        import psycopg

        admin = f"postgresql://inboxsync@127.0.0.1:{self.port}/postgres"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("CREATE DATABASE inboxsync")

    def restart_immediate(self) -> None:
        """``pg_ctl restart -m immediate``: every backend dies without a checkpoint, as in a
        crash, and the cluster comes back through WAL recovery."""
        self._ctl("restart", "-m", "immediate")

    def remove(self) -> None:
        """Stop the cluster (immediately) and delete its directory."""
        if (self.data / "postmaster.pid").exists():
            try:
                self._ctl("stop", "-m", "immediate")
            except subprocess.CalledProcessError:
                self._kill_postmaster()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _kill_postmaster(self) -> None:
        try:
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
            os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            pass


class Redis:
    """A ``redis-server`` on its own port and directory: no RDB snapshots, an append-only file,
    so that a restart keeps what it acknowledged."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="inboxsync-chaos-redis-"))
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "yes", "--dir", str(self.dir), "--logfile", "redis.log"]
        self.proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        wait_until(self.ping, "redis-server")

    def client(self):  # noqa: ANN201 - redis.Redis
        import redis

        return redis.Redis.from_url(self.url, socket_timeout=5, socket_connect_timeout=2)

    def ping(self) -> bool:
        return bool(self.client().ping())

    def kill(self) -> None:
        """SIGKILL: no shutdown save, no goodbye to clients (the AOF holds what it answered)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def remove(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def clean_environment(extra: dict[str, str]) -> dict[str, str]:
    """The caller's environment without anything that names a store, a broker or an inboxsync
    setting (CI may point those at the shared services), plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("INBOXSYNC_") and k not in ("DATABASE_URL", "CELERY_BROKER_URL")
    }
    env.update(extra)
    return env


class Inboxsync:
    """``inboxsync serve`` and ``inboxsync worker`` processes, each in its own session (a
    Ctrl-C in the terminal reaches only the chaos run, which stops them in order)."""

    def __init__(self, env: dict[str, str], logs: Path, stack: ExitStack) -> None:
        self.env, self.logs, self.stack = env, logs, stack
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.server: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []
        self._spawned = 0
        self._born: dict[int, float] = {}
        stack.callback(self.stop_all)

    def cli(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "cli.main", *args],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:  # what it said, not only its exit code
            said = (done.stderr or done.stdout).strip().splitlines()[-5:]
            raise RuntimeError(
                f"inboxsync {' '.join(args)}: exit code {done.returncode}: " + " | ".join(said)
            )
        return done.stdout.strip()

    def _spawn(self, args: list[str], log_name: str) -> subprocess.Popen[bytes]:
        with (self.logs / log_name).open("ab") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "cli.main", *args],
                env=self.env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def start_server(self) -> None:
        self.server = self._spawn(["serve", "--port", str(self.port), "--no-migrate"], "serve.log")
        import httpx

        wait_until(lambda: httpx.get(f"{self.base}/healthz").status_code == 200, "the ingress")

    def start_worker(self) -> subprocess.Popen[bytes]:
        self._spawned += 1
        proc = self._spawn(
            ["worker", "--pool", "solo", "--loglevel", "warning"], f"worker{self._spawned}.log"
        )
        self.workers.append(proc)
        self._born[proc.pid] = time.monotonic()
        return proc

    def kill_server(self) -> None:
        if self.server is not None:
            kill9(self.server)

    def working(self, min_age_s: float) -> list[int]:
        """Indexes of the workers up for ``min_age_s`` at least: past their start-up, so
        killing one interrupts work (a worker still importing has none)."""
        now = time.monotonic()
        return [i for i, w in enumerate(self.workers) if now - self._born[w.pid] >= min_age_s]

    def kill_worker(self, index: int) -> int:
        """SIGKILL worker ``index`` and start its replacement; the pid killed."""
        victim = self.workers.pop(index)
        kill9(victim)
        self.start_worker()
        return victim.pid

    def replace_exited(self) -> list[tuple[str, int | None]]:
        """Processes that ended on their own, restarted (as a service manager would); what
        ended, with its exit code."""
        ended: list[tuple[str, int | None]] = []
        for proc in [w for w in self.workers if w.poll() is not None]:
            self.workers.remove(proc)
            ended.append(("worker", proc.returncode))
            self.start_worker()
        if self.server is not None and self.server.poll() is not None:
            ended.append(("ingress", self.server.returncode))
            self.start_server()
        return ended

    def stop_all(self) -> None:
        """SIGTERM everything, SIGKILL what is still there after 20 s."""
        procs = [p for p in [self.server, *self.workers] if p is not None and p.poll() is None]
        for p in procs:
            p.terminate()
        deadline = time.monotonic() + 20
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                kill9(p)


def kill9(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process (and its session's group: a prefork pool's children die with it)."""
    if proc.poll() is None:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
