"""The periodic work runs once per deployment, whichever processes run (workers/periodic.py):
every serve and worker process takes part, the store's lease picks one per round, and when that
one stops another takes over. Recovery no longer depends on the HTTP service."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from collections import Counter

from store import lease
from tests.apihelp import eventually
from tests.workerhelp import ROOT, start_worker, stop
from workers.periodic import LEASE, Scheduler


def test_two_schedulers_started_at_once_share_no_round(db):
    """Ticked together, many times: each round is done by exactly one of them."""
    first, second = Scheduler(holder="one"), Scheduler(holder="two")
    done: Counter[str] = Counter()
    barrier = threading.Barrier(2)

    def turns(s: Scheduler) -> None:
        for _ in range(20):
            barrier.wait()
            if s.tick():
                done[s.holder] += 1

    threads = [threading.Thread(target=turns, args=(s,)) for s in (first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sum(done.values()) == 20 and len(done) == 1  # one holder did every round
    assert lease.holder_of(LEASE) == (next(iter(done)), 20)


def test_another_process_takes_over_when_the_holder_stops(db):
    first, second = Scheduler(holder="one"), Scheduler(holder="two")
    assert first.tick() and not second.tick()
    first.stop()  # a clean stop gives the lease back at once
    assert second.tick() and not first.tick()


def scheduler_process() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "cli.main", "scheduler"], cwd=ROOT)


def test_two_scheduler_processes_one_holder_and_a_takeover_after_a_kill(db):
    procs = [scheduler_process(), scheduler_process()]
    try:
        first = eventually(lambda: lease.holder_of(LEASE), timeout=60)
        eventually(lambda: (h := lease.holder_of(LEASE)) is not None and h[1] >= 4, timeout=60)
        held = lease.holder_of(LEASE)
        assert held is not None and held[0] == first[0]  # rounds went on under one holder
        pid = int(held[0].split(":")[1])
        victim = next(p for p in procs if p.pid == pid)
        victim.send_signal(signal.SIGKILL)  # no clean release: its lease must run out
        victim.wait()
        taken = eventually(
            lambda: (h := lease.holder_of(LEASE)) is not None and h[0] != first[0] and h,
            timeout=60,
        )
        assert taken[0].split(":")[1] != str(pid)
    finally:
        for p in procs:
            stop(p)


def test_a_lost_reply_is_recovered_by_a_worker_without_the_http_service(make_account):
    """A reply queued while the broker was away (its task never published): a worker process
    alone finds it due and sends it."""
    from handlers.outbound import replies
    from schemas.outbound import ReplyIn
    from store.db import transaction
    from store.models import Inbox
    from tests.fakeproviders import POSTMARK_TOKEN, FakeProviders
    from tests.storehelp import inbound, store

    fake = FakeProviders()
    acct = make_account()
    with transaction() as session:
        inbox = session.get_one(Inbox, acct["inbox"])
        inbox.outbound = {
            "via": "postmark",
            "from": "S <s@acme.example>",
            "server_token": POSTMARK_TOKEN,
            "api_url": fake.url,
        }
    conv = store(inbound(acct["inbox"], "m1", thread="t"))[0].conversation_id
    assert conv is not None
    body = ReplyIn(text="hello", to=["maria@example.com"])
    reply_id, _ = replies.queue_reply(account_id=None, conversation_id=conv, body=body, key=None)
    worker = start_worker("-Q", "outbound", "--pool", "solo")
    try:
        eventually(lambda: fake.sends("postmark"), timeout=60)
    finally:
        stop(worker)
        fake.close()
    assert len(fake.sends("postmark")) == 1 and reply_id
