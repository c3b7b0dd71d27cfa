"""People's errors: what a newcomer or an operator gets wrong is one line naming the setting and
the fix, with a non-zero exit code, from every entry point; never a traceback (cli/errors.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.workerhelp import ROOT


def inboxsync(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL")}
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    return lines[0]


@pytest.mark.parametrize("command", [["migrate"], ["create-account", "acme"], ["worker"]])
def test_a_store_that_does_not_answer(command):
    line = one_line(inboxsync(*command, DATABASE_URL="postgresql://postgres@127.0.0.1:1/test"))
    assert "cannot reach the store" in line and "DATABASE_URL" in line


def test_a_database_that_does_not_exist():
    url = "postgresql://postgres@127.0.0.1:5432/inboxsync_no_such_database_here"
    line = one_line(inboxsync("migrate", DATABASE_URL=url))
    assert "does not exist" in line and "createdb" in line


def test_a_database_url_that_is_not_one():
    line = one_line(inboxsync("migrate", DATABASE_URL="mysqlish://nowhere"))
    assert "DATABASE_URL is not a URL" in line


def test_a_data_directory_that_cannot_be_written():
    line = one_line(inboxsync("migrate", INBOXSYNC_DATA_DIR="/sys/inboxsync-cannot-be-here"))
    assert "INBOXSYNC_DATA_DIR" in line


def test_a_setting_of_the_wrong_type():
    line = one_line(inboxsync("migrate", INBOXSYNC_SWEEP_INTERVAL_S="often"))
    assert "SWEEP_INTERVAL_S" in line and "invalid setting" in line


def test_a_worker_without_its_broker(tmp_path):
    done = inboxsync(
        "worker", INBOXSYNC_DATA_DIR=str(tmp_path), CELERY_BROKER_URL="redis://127.0.0.1:1/0"
    )
    line = one_line(done)
    assert ("not ready" in line and "migrate" in line) or "broker" in line


def test_a_worker_with_an_unmigrated_store(tmp_path):
    line = one_line(inboxsync("worker", INBOXSYNC_DATA_DIR=str(tmp_path)))
    assert "inboxsync migrate" in line


def test_serve_refuses_the_default_admin_token_off_loopback(tmp_path):
    empty = inboxsync(
        "serve", "--host", "0.0.0.0", INBOXSYNC_DATA_DIR=str(tmp_path), INBOXSYNC_ADMIN_TOKEN=""
    )
    assert "ADMIN_TOKEN" in one_line(empty)
    env_token = inboxsync(
        "serve",
        "--host",
        "0.0.0.0",
        INBOXSYNC_DATA_DIR=str(tmp_path),
        INBOXSYNC_ADMIN_TOKEN="dev-admin-token",
    )
    assert "INBOXSYNC_ADMIN_TOKEN" in one_line(env_token)


def test_the_version_comes_from_one_place():
    from version import version

    done = inboxsync("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"inboxsync {version()}"
