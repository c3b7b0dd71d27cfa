"""Threading as a graph: which conversation each message of a batch belongs to. Pure: the store
locks and loads what these functions read (handlers/ingest.py), and writes what they decide.

A message names **thread ids**: its own id and the ids it answers (email: its Message-ID, its
In-Reply-To and References, all as ``mid:<id>``), or the thread key its channel gives (a chat,
an order number; ``sender:<address>`` when there is none). The store records every id against a
conversation (``threads``), so a message joins the conversation of **any** id it shares with
one, whichever arrives first: a reply stored before its parent is found by the parent, because
the reply recorded the parent's id when it was stored. Within a batch, messages that share an id
are one group (union-find), however they chain.

When a group names one live conversation, its messages go there; none, a new one starts (a
trashed or deleted conversation is not live: a message that threads to it starts a new one, and
its ids move on to that). When it names **several** (a message shows two conversations to be one
thread: its parent arrived after its own answer had started a conversation of its own), they are
**merged** (rule M2) into the one with a ticket, or else into the oldest: the others' messages
move there and each answers ``merged_into``. A conversation with a ticket never leaves it (T2),
so when two or more of them have tickets, those are not merged but **linked**: the message joins
the oldest ticketed one and lists the others (``also_in``); conversations without a ticket are
still merged in.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from schemas.inbound import InboundMessage

Key = tuple[int, str]  # (inbox id, thread id)
MessageKey = tuple[int, str]  # (inbox id, external id)


def ref_key(message_id: str) -> str:
    """The thread id (and the ``external_id``) of a mail with this Message-ID."""
    return f"mid:{message_id}"


def thread_ids(m: InboundMessage) -> list[str]:
    """Every thread id ``m`` names, each once, its own first."""
    ids = [m.effective_thread_key, *(ref_key(r)[:500] for r in m.thread_refs)]
    return list(dict.fromkeys(ids))


@dataclass(frozen=True)
class Conv:
    """What placing a message needs to know of a conversation it names."""

    id: int
    live: bool
    ticket_id: int | None = None
    merged_into: int | None = None


class Group:
    """Messages of a batch that share thread ids, directly or through each other.

    ``named``: the conversations its ids point to, its reply tokens name, or its stored copies
    are in; ``fresh``: it holds a message not stored before. (A plain class: one is made per
    thread of every batch, and a dataclass's field factories cost more than the rest.)"""

    __slots__ = ("keys", "messages", "named", "fresh")

    def __init__(self) -> None:
        self.keys: set[Key] = set()
        self.messages: list[InboundMessage] = []
        self.named: set[int] = set()
        self.fresh = False


@dataclass(frozen=True)
class Placement:
    conversation_id: int | None  # None: a new conversation
    absorbed: tuple[int, ...] = ()  # merged into it (M2)
    linked: tuple[int, ...] = ()  # named too, but with tickets of their own: left apart


def groups(
    messages: Iterable[InboundMessage],
    ids_of: dict[MessageKey, list[str]],
    links: dict[Key, int | None],
    named_by_message: dict[MessageKey, set[int]],
    stored: set[MessageKey],
) -> list[Group]:
    """Partition ``messages`` by shared thread ids (union-find over the ids)."""
    parent: dict[Key, Key] = {}

    def root(k: Key) -> Key:
        while parent.setdefault(k, k) != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    keyed = [(m, [(m.inbox_id, t) for t in ids_of[(m.inbox_id, m.external_id)]]) for m in messages]
    for _, keys in keyed:
        first = root(keys[0])
        for k in keys[1:]:
            parent[root(k)] = first
    by_root: dict[Key, Group] = {}
    for m, keys in keyed:
        own = (m.inbox_id, m.external_id)
        top = root(keys[0])
        group = by_root.get(top)
        if group is None:
            group = by_root[top] = Group()
        group.keys.update(keys)
        group.messages.append(m)
        if own in named_by_message:
            group.named |= named_by_message[own]
        if own not in stored:
            group.fresh = True
    for group in by_root.values():
        group.named |= {c for k in group.keys if (c := links.get(k)) is not None}
    return list(by_root.values())


def resolve(conversation_id: int, convs: dict[int, Conv]) -> int | None:
    """The live conversation ``conversation_id`` is, or was merged into; None if removed."""
    seen: set[int] = set()
    current: int | None = conversation_id
    while current is not None and current not in seen:
        seen.add(current)
        conv = convs[current]
        if conv.live:
            return current
        current = conv.merged_into
    return None


def place(group: Group, convs: dict[int, Conv]) -> Placement:
    """Where the group's messages go (see the module's docstring)."""
    live = sorted({r for c in group.named if (r := resolve(c, convs)) is not None})
    if not live:
        return Placement(None)
    if len(live) == 1 or not group.fresh:  # copies seen before never merge anything
        return Placement(live[0])
    ticketed = [c for c in live if convs[c].ticket_id is not None]
    survivor = ticketed[0] if ticketed else live[0]
    absorbed = tuple(c for c in live if convs[c].ticket_id is None and c != survivor)
    return Placement(survivor, absorbed, tuple(ticketed[1:]))


def place_all(groups: list[Group], convs: dict[int, Conv]) -> list[tuple[Group, Placement]]:
    """Place every group, in turn: a conversation one group merges away is seen merged by the
    next (two groups can name one conversation through different ids and share no id)."""
    placed = []
    for group in groups:
        p = place(group, convs)
        for gone in p.absorbed:
            convs[gone] = Conv(gone, live=False, merged_into=p.conversation_id)
        placed.append((group, p))
    return placed


def settled(
    placed: list[tuple[Group, Placement]], convs: dict[int, Conv]
) -> list[tuple[Group, Placement]]:
    """Each placement's conversation as it ends up: one a later group merged away leads to the
    conversation it went into."""
    out = []
    for group, p in placed:
        target = p.conversation_id
        if target is not None and target in convs:
            target = resolve(target, convs)
        out.append((group, Placement(target, p.absorbed, p.linked)))
    return out


def repointed(
    group: Group, placement: Placement, links: dict[Key, int | None], convs: dict[int, Conv]
) -> dict[Key, int]:
    """The group's ids that must point to ``placement.conversation_id`` now: new ones, and those
    of a removed or absorbed conversation. Ids of a linked conversation keep pointing to it."""
    target = placement.conversation_id
    assert target is not None
    moved = {*placement.absorbed, target}
    out = {}
    for key in group.keys:
        current = links.get(key)
        if current == target:
            continue
        if current is None or resolve(current, convs) in (None, *moved):
            out[key] = target
    return out
