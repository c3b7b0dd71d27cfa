"""/healthz says the process answers (and its version); /readyz says whether it can work: the
store answers, its schema is the newest, the broker takes connections; 503 naming what fails.
A route that meets a store not migrated answers 503 saying what to run, not 500."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from tests.apihelp import ADMIN
from tests.workerhelp import ROOT
from version import version


@pytest.fixture
def client(db: None) -> Iterator[TestClient]:
    with TestClient(create_app()) as c:
        yield c


def test_healthz_names_the_version(client):
    assert client.get("/healthz").json() == {"status": "ok", "version": version()}


def test_readyz_checks_store_schema_and_broker(client):
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"store": "ok", "schema": "ok", "broker": "ok"}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_store_whose_schema_fell_behind_is_503_with_what_to_run(tmp_path: Path):
    """The service was started on a migrated store, then the store lost its newest migration
    (a restore of an old backup): readiness and routes say so."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL")}
    env["INBOXSYNC_DATA_DIR"] = str(tmp_path)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "serve", "--port", str(port)], cwd=ROOT, env=env
    )
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                if httpx.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        with sqlite3.connect(tmp_path / "inboxsync.sqlite") as db:
            db.execute("UPDATE alembic_version SET version_num = '0005'")
            db.execute("DROP TABLE delivery_outcomes")
        ready = httpx.get(f"{base}/readyz")
        assert ready.status_code == 503
        assert "inboxsync migrate" in ready.json()["checks"]["schema"]
        got = httpx.get(f"{base}/deliveries/1", headers=ADMIN)
        assert got.status_code == 503 and got.json()["error"] == "schema_not_at_head"
        assert "inboxsync migrate" in got.json()["message"]
    finally:
        server.terminate()
        server.wait(30)
