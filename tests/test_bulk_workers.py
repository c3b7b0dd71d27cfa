"""A bulk job on real ``inboxsync worker`` processes, one of them killed with SIGKILL mid-job:
the job still completes, every item done exactly once (one recorded change per ticket)."""

from __future__ import annotations

import signal

from handlers import bulk
from schemas.bulk import BulkJobIn
from settings import get_settings
from tests.apihelp import eventually
from tests.bulkhelp import changes_per_target, item_states, seed_tickets
from tests.storehelp import count, new_account
from tests.workerhelp import start_worker, stop
from workers import publish

# Paced, so that the kill finds the job under way; chunks held briefly, so that a chunk the
# killed worker had is found again by the periodic round within the test.
BULK_ENV = {
    "INBOXSYNC_BULK_CHUNK_SIZE": "20",
    "INBOXSYNC_BULK_PARALLEL_CHUNKS": "2",
    "INBOXSYNC_BULK_RATE_PER_S": "150",
    "INBOXSYNC_BULK_CHUNK_LEASE_S": "3",
}


def test_a_worker_killed_mid_job_loses_and_doubles_nothing(db: None) -> None:
    from store.models import Ticket

    acct = new_account()
    ids = seed_tickets(acct, 300)
    settings = get_settings().model_copy(
        update={"bulk_chunk_size": 20, "bulk_parallel_chunks": 2, "bulk_chunk_lease_s": 3}
    )
    spec = BulkJobIn(action="close_tickets", filter={})  # type: ignore[arg-type]
    job = bulk.create(spec, acct["account"], {"via": "test"}, settings, publish.bulk_chunk)
    first = start_worker("--pool", "solo", "-Q", "bulk", extra_env=BULK_ENV)
    try:
        eventually(lambda: bulk.get(job.id, None).done >= 40, timeout=60)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert bulk.get(job.id, None).state == "running", "the job ended before the kill"
    second = start_worker("--pool", "solo", "-Q", "bulk", extra_env=BULK_ENV)
    try:
        eventually(lambda: bulk.get(job.id, None).state != "running", timeout=60)
    finally:
        stop(second)
    found = bulk.get(job.id, None)
    assert (found.state, found.total, found.done, found.failed) == ("completed", 300, 300, 0)
    assert changes_per_target(job.id) == dict.fromkeys(ids, 1)
    assert {state for state, _ in item_states(job.id).values()} == {"done"}
    assert count(Ticket, Ticket.status == "closed") == 300
