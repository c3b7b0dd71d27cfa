"""Periodic work, once per deployment however many processes run.

Each round: publish again what was journaled but whose broker message was lost (deliveries,
pending API changes: handlers/journal.py), publish bulk chunks whose lease ran out
(handlers/bulk.py ``sweep``), recover replies whose worker died mid-send or whose
task was lost (handlers/outbound/replies.py ``sweep``), forget one-time webhook tokens older
than the signature window, apply edits that raced their message (handlers/edits.py).
Outbound events are fanned out to their subscribers, and the subscribers that have one due
published (handlers/outbound/event_delivery.py), on a clock of their own
(``INBOXSYNC_EVENTS_INTERVAL_S``, 2 s) under the lease ``events``.
Reconciliation (handlers/reconcile.py) runs from the same turns under a lease of its own,
``reconcile``, at most once per ``INBOXSYNC_RECONCILE_INTERVAL_S`` in the deployment.
Old outbound events and their delivery log are forgotten once an hour under the lease
``events_prune`` (``INBOXSYNC_EVENTS_RETENTION_DAYS``).

A ``Scheduler`` runs in every ``inboxsync serve`` and ``inboxsync worker`` process (and in
``inboxsync scheduler``, for those who want it apart): before each round it takes the store's
lease ``periodic`` (store/lease.py), so one process does the round and the others skip it. When
that process stops or dies, its lease runs out (three intervals) and another one takes over: no
recovery depends on the HTTP service running, and two HTTP processes no longer sweep twice.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid

from handlers import bulk, edits, journal, reconcile
from handlers.outbound import event_delivery, replies
from settings import Settings, get_settings
from store import lease
from workers import publish

log = logging.getLogger(__name__)
LEASE = "periodic"
RECONCILE_LEASE = "reconcile"
EVENTS_LEASE = "events"
EVENTS_PRUNE_LEASE = "events_prune"
EVENTS_PRUNE_EVERY_S = 3600.0
PAGE = 1000  # a full page means there may be more; a short one ends the pass


def round_once(settings: Settings) -> dict[str, int]:
    """One round of the periodic work; what it did, by kind."""
    done = dict.fromkeys(("deliveries", "changes", "replies", "tokens", "edits", "bulk"), 0)
    done["tokens"] = journal.forget_tokens(2 * settings.webhook_tolerance_seconds)
    while ids := journal.sweep(settings.sweep_after_s, limit=PAGE):
        for start in range(0, len(ids), settings.ingest_batch_max):
            publish.ingest(ids[start : start + settings.ingest_batch_max])
        done["deliveries"] += len(ids)
        if len(ids) < PAGE:
            break
    while lost := journal.sweep_changes(settings.sweep_after_s, limit=PAGE):
        for queue, envelope in lost:
            publish.change(envelope, queue)
        done["changes"] += len(lost)
        if len(lost) < PAGE:
            break
    for reply_id in replies.sweep():
        publish.reply(reply_id)
        done["replies"] += 1
    done["edits"] = edits.sweep()
    done["bulk"] = bulk.sweep(settings, publish.bulk_chunk)
    if done["deliveries"] or done["changes"]:
        log.warning(
            "re-enqueued %d deliveries and %d changes whose broker message was lost",
            done["deliveries"],
            done["changes"],
        )
    return done


def events_once() -> int:
    """Fan new outbound events out to their subscribers and publish each subscriber that has one
    due (handlers/outbound/event_delivery.py); how many events were fanned out. One writer at a
    time (the lease ``events``): whatever order transactions commit in, none is missed or
    doubled."""
    fanned = 0
    while (page := event_delivery.fan_out(limit=PAGE)) > 0:
        fanned += page
        if page < PAGE:
            break
    for subscriber_id in event_delivery.due():
        publish.events(subscriber_id)
    return fanned


class Scheduler:
    """Rounds every ``sweep_interval_s`` in a daemon thread, under the store's lease."""

    def __init__(self, settings: Settings | None = None, holder: str | None = None) -> None:
        self.settings = settings or get_settings()
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._events: threading.Thread | None = None

    def start(self) -> Scheduler:
        self._thread = threading.Thread(target=self.run, name="periodic", daemon=True)
        self._thread.start()
        self._events = threading.Thread(target=self.run_events, name="events", daemon=True)
        self._events.start()
        return self

    def run(self) -> None:
        interval = self.settings.sweep_interval_s
        while not self._stop.wait(interval):
            self.tick()

    def run_events(self) -> None:
        """Outbound events on their own, shorter clock (``events_interval_s``): an event goes
        out within about that, not within a sweep round."""
        interval = self.settings.events_interval_s
        while not self._stop.wait(interval):
            self.events_turn()

    def events_turn(self) -> bool:
        """Fan out and publish events if this process holds the lease ``events``."""
        try:
            if not lease.acquire(
                EVENTS_LEASE, self.holder, ttl_s=3 * self.settings.events_interval_s
            ):
                return False
            events_once()
            return True
        except Exception:
            log.exception("outbound events turn failed; trying again")
            return False

    def tick(self) -> bool:
        """One turn: a round if this process holds the lease; whether it did one. Then
        reconciliation, if its turn has come (``reconcile_turn``)."""
        done = self._round()
        self.reconcile_turn()
        self.prune_turn()
        return done

    def _round(self) -> bool:
        try:
            if not lease.acquire(LEASE, self.holder, ttl_s=3 * self.settings.sweep_interval_s):
                return False
            round_once(self.settings)
            return True
        except Exception:  # the store or the broker is away: the next turn tries again
            log.exception(
                "periodic round failed; trying again in %s s", self.settings.sweep_interval_s
            )
            return False

    def reconcile_turn(self) -> bool:
        """Reconciliation (handlers/reconcile.py) once per ``reconcile_interval_s`` in the
        deployment: whichever process first finds the lease ``reconcile`` run out takes it for
        that long and runs it; whether this one did. 0 turns it off."""
        every = self.settings.reconcile_interval_s
        if every <= 0:
            return False
        try:
            if not lease.take_turn(RECONCILE_LEASE, self.holder, every_s=every):
                return False
            reconcile.run(self.settings)
            return True
        except Exception:
            log.exception("reconciliation failed; its next turn is in %s s", every)
            return False

    def prune_turn(self) -> bool:
        """Forget old outbound events and their log (``events_retention_days``), once an hour
        in the deployment, under the lease ``events_prune``; whether this process did."""
        try:
            if not lease.take_turn(EVENTS_PRUNE_LEASE, self.holder, every_s=EVENTS_PRUNE_EVERY_S):
                return False
            event_delivery.prune(self.settings.events_retention_days)
            return True
        except Exception:
            log.exception("pruning outbound events failed; its next turn is in an hour")
            return False

    def stop(self) -> None:
        self._stop.set()
        for thread in (self._thread, self._events):
            if thread is not None:
                thread.join(timeout=10)
        try:
            lease.release(LEASE, self.holder)
            lease.release(EVENTS_LEASE, self.holder)
        except Exception:
            log.warning("could not release the periodic lease; it runs out by itself")
