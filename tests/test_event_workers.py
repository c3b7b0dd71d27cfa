"""Outbound events end to end with real ``inboxsync worker`` processes: their periodic round
fans the outbox out and publishes, their tasks deliver to a loopback receiver that is down for
a while (connections dropped, 503s) and then comes back."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from schemas import changes as c
from schemas.events import EVENT_TYPES
from settings import get_settings
from tests.apihelp import eventually, setup_account
from tests.fake_receiver import Receiver, receiver
from tests.storehelp import change, conversation, run
from tests.workerhelp import start_worker, stop
from workers import publish


@pytest.fixture
def client(db: None) -> Iterator[TestClient]:
    # The workers' own periodic rounds do the event work; this process does none.
    with TestClient(create_app(get_settings().model_copy(update={"scheduler": False}))) as c:
        yield c


@pytest.fixture
def rx() -> Iterator[Receiver]:
    with receiver() as r:
        yield r


def test_a_receiver_down_for_a_while_gets_every_event_once_in_order(client, rx):
    acct = setup_account(client)
    made = client.post(
        "/subscribers", json={"url": rx.url, "types": list(EVENT_TYPES)}, headers=acct["auth"]
    ).json()
    rx.secrets = [made["secret"]]
    rx.faults.extend(["drop", "503", "drop", "503", "503"])
    conv = conversation(acct["inbox"], "t1")
    for i in range(6):
        status = "closed" if i % 2 == 0 else "open"
        action = c.SetConversationStatus(conversation_id=conv, status=status)
        run(change(f"c{i}", acct["account"]["id"], action, 100 + i))
    for _ in range(3):  # copies of the task: at most one holds the subscriber at a time
        publish.events(made["id"])
    worker = start_worker("-Q", "outbound", "-c", "2")
    try:
        eventually(lambda: len(rx.accepted) >= 8, timeout=60)
        late = c.SetConversationStatus(conversation_id=conv, status="closed")
        run(change("late", acct["account"]["id"], late, 200))  # while the workers run
        ids = eventually(lambda: rx.ids() if len(rx.accepted) >= 9 else None, timeout=60)
    finally:
        stop(worker)
    numbers = [int(i.removeprefix("evt_")) for i in ids]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers) == 9
    assert rx.refused == 5
    assert [r.type for r in rx.accepted][:2] == ["conversation.created", "message.received"]
