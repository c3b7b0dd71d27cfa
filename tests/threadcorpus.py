"""Generated email threads, the way mail clients really thread (used by tests and the bench).

Each thread is a tree: its first mail, then replies to any earlier mail of the thread. A reply
names what it answers in one of the ways clients do:

- ``full``: In-Reply-To its parent, References the whole chain (RFC 5322);
- ``refs``: References only (some clients leave In-Reply-To out);
- ``irt``: In-Reply-To only, no References (a reply that names its parent and nothing else: only
  the chain of parents links it to the thread's first mail);
- ``trimmed``: References trimmed to the first id and the last two, as long threads are.

Bodies quote the mail they answer. Date headers lie on purpose: some years ahead, some long ago,
and a reply is often dated before what it answers. What must come out whatever the order of
arrival: one conversation per thread, one message per distinct mail.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

STYLES = ("full", "refs", "irt", "trimmed")


@dataclass
class Mail:
    thread: int
    message_id: str
    raw: bytes


@dataclass
class Corpus:
    threads: int
    mails: list[Mail] = field(default_factory=list)

    def deliveries(self, redelivered: float, seed: int) -> list[Mail]:
        """Every mail once, some twice (providers redeliver), in a shuffled order."""
        rng = random.Random(seed)
        out = list(self.mails)
        out += [m for m in self.mails if rng.random() < redelivered]
        rng.shuffle(out)
        return out


def generate(
    threads: int, *, seed: int = 1, max_replies: int = 5, domain: str = "corpus.example"
) -> Corpus:
    rng = random.Random(seed)
    corpus = Corpus(threads)
    for t in range(threads):
        chain_of: dict[str, list[str]] = {}
        texts: dict[str, str] = {}
        ids: list[str] = []
        for n in range(1 + rng.randrange(max_replies + 1)):
            own = f"t{t}.m{n}.{seed}@{domain}"
            text = f"Mail {n} of thread {t}: order {rng.randrange(10**6)} has not arrived yet."
            headers = [
                f"From: Customer {t} <customer{t}@example.com>",
                "To: Support <support@acme.example>",
                f"Subject: {'Re: ' if n else ''}Order problem {t}",
                f"Date: {format_datetime(_lying_date(rng))}",
                f"Message-ID: <{own}>",
            ]
            body = text
            if ids:
                parent = rng.choice(ids)
                chain = [*chain_of[parent], parent]
                headers += _answer_headers(rng.choice(STYLES), parent, chain)
                quoted = "\n".join(f"> {line}" for line in texts[parent].splitlines())
                body = f"{text}\n\nOn an earlier day someone wrote:\n{quoted}"
                chain_of[own] = chain
            else:
                chain_of[own] = []
            texts[own] = body
            ids.append(own)
            raw = "\r\n".join([*headers, "Content-Type: text/plain; charset=utf-8", "", body, ""])
            corpus.mails.append(Mail(t, own, raw.encode()))
    return corpus


def _answer_headers(style: str, parent: str, chain: list[str]) -> list[str]:
    def refs(ids: list[str]) -> str:
        return "References: " + " ".join(f"<{i}>" for i in ids)

    if style == "full":
        return [f"In-Reply-To: <{parent}>", refs(chain)]
    if style == "refs":
        return [refs(chain)]
    if style == "irt":
        return [f"In-Reply-To: <{parent}>"]
    trimmed = chain if len(chain) <= 3 else [chain[0], *chain[-2:]]
    return [f"In-Reply-To: <{parent}>", refs(trimmed)]


def _lying_date(rng: random.Random) -> datetime:
    now = datetime.now(UTC)
    roll = rng.random()
    if roll < 0.1:
        return now + timedelta(days=365 * rng.randrange(1, 10))  # a clock years ahead
    if roll < 0.2:
        return now - timedelta(days=365 * rng.randrange(1, 20))  # or long behind
    return now - timedelta(minutes=rng.randrange(10_000))
