"""A real worker process serves its own /metrics (INBOXSYNC_WORKER_METRICS_PORT), its pool
processes' counts added up, and logs JSON with LOG_FORMAT=json. Apart from the other
observability tests: their in-thread worker would take this worker's tasks."""

from __future__ import annotations

import socket

import httpx

from tests.apihelp import eventually, message
from tests.test_observability import sample
from tests.workerhelp import start_worker, stop


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_worker_process_serves_its_counts_and_logs_json(db):
    """INBOXSYNC_WORKER_METRICS_PORT and LOG_FORMAT reach a real worker (prefork, two pool
    processes: their counts are added up through the multiprocess directory)."""
    from handlers import journal
    from tests.storehelp import new_account
    from workers import publish

    acct = new_account(secrets={"signing_secret": "s3cret"})
    port = free_port()
    worker = start_worker(
        "-c", "2", extra_env={"INBOXSYNC_WORKER_METRICS_PORT": str(port), "LOG_FORMAT": "json"}
    )
    try:
        for n in range(3):
            [did] = journal.journal([journal.delivery(acct["inbox"], "generic", message(f"w{n}"))])
            assert did is not None
            publish.ingest([did])

        def counted() -> float:
            try:
                text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
            except httpx.TransportError:
                return 0.0
            return sample(text, "inboxsync_deliveries_processed_total", state="stored")

        assert eventually(lambda: counted() >= 3, timeout=60)
    finally:
        stop(worker)
