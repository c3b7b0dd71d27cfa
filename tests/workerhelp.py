"""Real ``inboxsync worker`` processes for tests, started as a user would start them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def start_worker(
    *args: str,
    visibility_timeout: float = 3.0,
    extra_env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        **(extra_env or {}),
        "INBOXSYNC_REDIS_VISIBILITY_TIMEOUT_S": str(visibility_timeout),
        "INBOXSYNC_EMBEDDED_VISIBILITY_TIMEOUT_S": str(visibility_timeout),
        "INBOXSYNC_REDIS_RESTORE_INTERVAL_S": "1",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "cli.main", "worker", "--loglevel", "warning", *args],
        cwd=ROOT,
        env=env,
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def killed_midway_then_finished(
    done: Callable[[], int], total: int, *args: str, extra_env: dict[str, str] | None = None
) -> None:
    """SIGKILL a worker once it has done some of ``total`` (``done()`` counts), then let a second
    worker finish; the caller then checks that each item was done exactly once."""
    from tests.apihelp import eventually

    first = start_worker(*args, extra_env=extra_env)
    try:
        eventually(lambda: done() > 0, timeout=60)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert done() < total, "the first worker finished everything before the kill"
    second = start_worker(*args, extra_env=extra_env)
    try:
        eventually(lambda: done() == total, timeout=60)
    finally:
        stop(second)
