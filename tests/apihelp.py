"""Helpers for tests that go through HTTP: sign like a provider, wait like a client."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi.testclient import TestClient

from handlers.channels.generic import sign

T = TypeVar("T")
ADMIN = {"Authorization": "Bearer test-admin-token"}


def post_webhook(
    client: TestClient, inbox_id: int, payload: dict[str, Any], secret: str = "s3cret", **kw: Any
) -> Any:
    body = json.dumps(payload).encode()
    stamp = kw.pop("stamp", int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "X-Inboxsync-Timestamp": str(stamp),
        "X-Inboxsync-Signature": sign(secret, stamp, body),
    }
    return client.post(f"/webhooks/{inbox_id}", content=body, headers=headers)


def eventually(check: Callable[[], T | None], timeout: float = 20.0) -> T:
    """Poll ``check`` until it returns something truthy (the worker is asynchronous)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.05)


def setup_account(
    client: TestClient,
    tier: str = "free",
    created_at: str = "2023-01-01T00:00:00Z",
    inbox: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An account with a token, an inbox (by default generic, secret ``s3cret``; else the
    ``POST /inboxes`` body given) and two owners, via the API."""
    account = client.post(
        "/accounts", json={"name": "acme", "tier": tier, "created_at": created_at}, headers=ADMIN
    ).json()
    token = client.post(f"/accounts/{account['id']}/tokens", json={}, headers=ADMIN).json()
    auth = {"Authorization": f"Bearer {token['token']}"}
    made = client.post(
        "/inboxes",
        json=inbox
        or {
            "name": "support",
            "channel": "email",
            "provider": "generic",
            "secrets": {"signing_secret": "s3cret"},
        },
        headers=auth,
    )
    assert made.status_code == 201, made.text
    owners = [
        client.post("/owners", json={"name": n}, headers=auth).json()["id"] for n in ("ana", "bo")
    ]
    return {"account": account, "auth": auth, "inbox": made.json()["id"], "owners": owners}


def message(
    external_id: str,
    thread: str | None = "t1",
    sender: str = "maria@example.com",
    sent_at: str = "2026-01-01T10:00:00Z",
) -> dict[str, Any]:
    return {
        "external_id": external_id,
        "sender": sender,
        "thread_key": thread,
        "text": f"text of {external_id}",
        "sent_at": sent_at,
    }
