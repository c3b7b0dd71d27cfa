"""The chaos run's traffic, as a seeded plan: the same seed and size give the same list of
sends, byte for byte (``Plan.digest``).

- **Accounts** on both sides of the R1 cutoff, by tier and by creation date (one exactly on it,
  one an hour before it written with a +02:00 offset).
- **Generic webhooks**: signed JSON messages on order threads (``thread_key``).
- **Mail**: raw RFC 5322 threads from tests/threadcorpus.py (replies before parents, In-Reply-To
  only, trimmed References) through each account's ``rfc822`` inbox; their lying Date headers
  are redrawn from the seed (the corpus dates them from the clock).
- **Agents' actions** through the API, each with its Idempotency-Key: owners, statuses, tickets,
  trash / delete / restore, associate, dissociate. An action names a thread, not an id: the
  client finds the conversation when it sends it (ids are the store's). Destructive and
  associating actions are on generic threads only, so that every mail thread must end in one
  live conversation (trashing one would rightly split it; two tickets in one thread link its
  conversations instead of merging them, M2).

Every event is sent 1 to 3 times (a provider's redelivery, a client's retry after an answer it
did not see), the copies later in the list; the webhooks are shuffled as a whole.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

from tests import threadcorpus

# The documented R1 defaults (docs/rules.md); the chaos run leaves them as they are.
CUTOFF = datetime(2024, 4, 1, tzinfo=UTC)
HELPDESK_TIERS = frozenset({"professional", "enterprise"})
BASE_TIME = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)  # what seeded dates are drawn around


@dataclass(frozen=True)
class AccountSpec:
    name: str
    tier: str
    created_at: str  # as sent to POST /accounts

    def location(self) -> str:
        """Where R1/R2 send this account's tickets (the cutoff compared as an instant)."""
        created = datetime.fromisoformat(self.created_at)
        after = created >= CUTOFF
        return "help_desk" if self.tier in HELPDESK_TIERS and after else "inbox"


ACCOUNTS = (
    AccountSpec("enterprise-2025", "enterprise", "2025-06-01T09:00:00+00:00"),  # R1
    AccountSpec("professional-at-cutoff", "professional", "2024-04-01T00:00:00+00:00"),  # R1
    AccountSpec("professional-before", "professional", "2024-04-01T01:00:00+02:00"),  # R2: 23:00Z
    AccountSpec("free-2025", "free", "2025-01-01T00:00:00+00:00"),  # R2: its tier
)
OWNERS_PER_ACCOUNT = 3


@dataclass(frozen=True)
class Message:
    """One webhook: a generic JSON message or a raw mail."""

    id: str
    account: int
    mail: bool
    external_id: str  # the store's key of it: the generic id, or ``mid:<Message-ID>``
    thread: str
    body: bytes


@dataclass(frozen=True)
class Action:
    """One agent's action on a thread's conversation (or its ticket); ``value`` is an owner's
    index (or None), a status; ``other`` the thread whose conversation is associated."""

    id: str
    account: int
    kind: str
    thread: str
    other: str | None = None
    value: int | str | None = None


Event = Message | Action

GENERIC_KINDS = {
    "conversation_owner": 14,
    "conversation_status": 14,
    "create_ticket": 14,
    "ticket_owner": 8,
    "ticket_status": 14,
    "trash": 5,
    "delete_ticket": 4,
    "restore_conversation": 5,
    "restore_ticket": 4,
    "associate": 10,
    "dissociate": 2,
}
MAIL_KINDS = {
    "conversation_owner": 20,
    "conversation_status": 20,
    "create_ticket": 20,
    "ticket_owner": 10,
    "ticket_status": 20,
}


@dataclass
class Plan:
    seed: int
    messages: list[Message]
    actions: list[Action]
    sends: list[Event]  # in order, copies included
    # Mail threads: their messages' external ids, the thread's first mail first.
    mail_threads: dict[str, list[str]] = field(default_factory=dict)

    @property
    def events(self) -> int:
        return len(self.messages) + len(self.actions)

    def digest(self) -> str:
        """A fingerprint of the whole list of sends, to show two runs sent the same."""
        h = hashlib.sha256()
        for e in self.sends:
            h.update(e.id.encode())
            h.update(e.body if isinstance(e, Message) else repr(e).encode())
        return h.hexdigest()[:16]


def make_plan(seed: int, events: int) -> Plan:
    """About ``events`` distinct events: 10 % actions, 30 % mail (whole threads), the rest
    generic webhooks; then their sends (see the module's docstring)."""
    rng = random.Random(seed)
    mails, mail_threads = _mails(rng, seed, events * 3 // 10)
    n_actions = max(len(ACCOUNTS), events // 10)
    generic = _generic(rng, seed, max(len(ACCOUNTS), events - n_actions - len(mails)))
    webhooks: list[Message] = generic + mails
    rng.shuffle(webhooks)
    sequence, actions = _with_actions(rng, webhooks, n_actions, mail_threads)
    return Plan(seed, webhooks, actions, _with_copies(rng, sequence), mail_threads)


def _mails(
    rng: random.Random, seed: int, target: int
) -> tuple[list[Message], dict[str, list[str]]]:
    per_account = max(1, round(target / len(ACCOUNTS) / 3.5))  # 3.5 mails a thread on average
    out: list[Message] = []
    threads: dict[str, list[str]] = {}
    for a in range(len(ACCOUNTS)):
        corpus = threadcorpus.generate(
            per_account, seed=seed * 1000 + a, domain=f"a{a}.chaos.example"
        )
        for n, mail in enumerate(corpus.mails):
            thread = f"m{a}.{mail.thread}"
            external_id = f"mid:{mail.message_id}"
            threads.setdefault(thread, []).append(external_id)
            raw = _redate(mail.raw, rng)
            out.append(Message(f"m{a}.{n}", a, True, external_id, thread, raw))
    return out, threads


def _redate(raw: bytes, rng: random.Random) -> bytes:
    """The mail with a Date drawn from the seed: still lying (years ahead, long ago, a reply
    before its parent), but the same in every run."""
    roll = rng.random()
    if roll < 0.1:
        when = BASE_TIME + timedelta(days=365 * rng.randrange(1, 10))
    elif roll < 0.2:
        when = BASE_TIME - timedelta(days=365 * rng.randrange(1, 20))
    else:
        when = BASE_TIME - timedelta(minutes=rng.randrange(10_000))
    line = f"Date: {format_datetime(when)}".encode()
    return re.sub(rb"^Date: [^\r\n]*", line, raw, count=1, flags=re.MULTILINE)


def _generic(rng: random.Random, seed: int, n: int) -> list[Message]:
    """``n`` generic webhooks, about six to an order thread."""
    threads_per_account = max(1, n // len(ACCOUNTS) // 6)
    out = []
    for i in range(n):
        a = i % len(ACCOUNTS)
        k = rng.randrange(threads_per_account)
        external_id = f"c{seed}-g{i}"
        sent = BASE_TIME - timedelta(seconds=rng.randrange(86_400))
        body = {
            "external_id": external_id,
            "sender": f"customer{k}@a{a}.example",
            "thread_key": f"order-{a}-{k}",
            "text": f"generic message {external_id} about order {k}: where is it?",
            "sent_at": sent.isoformat(),
        }
        raw = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        out.append(Message(f"g{i}", a, False, external_id, f"g{a}.{k}", raw))
    return out


def _with_actions(
    rng: random.Random, webhooks: list[Message], n: int, mail_threads: dict[str, list[str]]
) -> tuple[list[Event], list[Action]]:
    """The webhooks with ``n`` actions among them, each after a message of its thread (after
    the thread's first mail, for mail). Most actions go to a few busy threads per account, so
    that cases see many changes (and their orders) rather than one each."""
    positions = sorted(rng.randrange(1, len(webhooks) + 1) for _ in range(n))
    firsts = {ids[0] for ids in mail_threads.values()}
    seen: dict[tuple[int, bool], list[str]] = {}
    known: set[str] = set()
    out: list[Event] = []
    actions: list[Action] = []
    p = 0
    for i, message in enumerate(webhooks):
        eligible = not message.mail or message.external_id in firsts
        if eligible and message.thread not in known:
            known.add(message.thread)
            seen.setdefault((message.account, message.mail), []).append(message.thread)
        out.append(message)
        while p < len(positions) and positions[p] <= i + 1:
            action = _action(rng, f"a{len(actions)}", seen)
            if action is None:
                break  # no thread to act on yet: this one comes after the next message
            actions.append(action)
            out.append(action)
            p += 1
    return out, actions


def _pick(rng: random.Random, threads: list[str]) -> str:
    hot = max(3, len(threads) // 10)
    return rng.choice(threads[:hot] if rng.random() < 0.6 else threads)


def _action(
    rng: random.Random, action_id: str, seen: dict[tuple[int, bool], list[str]]
) -> Action | None:
    a = rng.randrange(len(ACCOUNTS))
    mail = rng.random() < 0.4 and bool(seen.get((a, True)))
    threads = seen.get((a, mail))
    if not threads:
        return None
    kinds = MAIL_KINDS if mail else GENERIC_KINDS
    kind = rng.choices(list(kinds), weights=list(kinds.values()))[0]
    thread = _pick(rng, threads)
    other = None
    if kind == "associate":
        other = _pick(rng, threads)
        if other == thread:
            kind = "create_ticket"
            other = None
    value: int | str | None = None
    if kind in ("conversation_owner", "ticket_owner", "create_ticket"):
        value = rng.choice([0, 1, 2, None])
    elif kind == "conversation_status":
        value = rng.choice(["open", "closed", "closed"])
    elif kind == "ticket_status":
        value = rng.choice(["new", "waiting_on_contact", "waiting_on_us", "closed", "closed"])
    return Action(action_id, a, kind, thread, other, value)


def _with_copies(rng: random.Random, sequence: list[Event]) -> list[Event]:
    """Every event once more or twice more (40 % once in all), each copy a few hundred sends
    after the one before it."""
    keyed: list[tuple[float, int, Event]] = []
    for i, event in enumerate(sequence):
        keyed.append((float(i), len(keyed), event))
        extra = rng.choices([0, 1, 2], weights=[40, 35, 25])[0]
        at = float(i)
        for _ in range(extra):
            at += rng.uniform(1, 400)
            keyed.append((at, len(keyed), event))
    keyed.sort(key=lambda k: (k[0], k[1]))
    return [e for _, _, e in keyed]
