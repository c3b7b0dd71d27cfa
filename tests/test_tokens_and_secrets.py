"""Token revocation and inbox secret rotation (handlers/admin.py, through the API and the CLI).

- ``GET /accounts/{id}/tokens`` lists tokens, never the token; ``DELETE /tokens/{id}`` revokes
  one at once: the next request with it is 401.
- ``POST /inboxes/{id}/secrets`` rotates: the old and the new signatures are both accepted until
  ``DELETE /inboxes/{id}/secrets/previous``; then the old one is 401.

The ingress caches an inbox for ``INBOX_CACHE_SECONDS``; the tests empty the cache where that
much time would have passed (``expire_inbox_cache``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from api import webhooks
from api.app import create_app
from api.webhooks import Ingress
from cli.main import app as cli
from tests.apihelp import ADMIN, eventually, message, post_webhook, setup_account


@pytest.fixture
def client(db: None, worker: None) -> Iterator[TestClient]:
    with TestClient(Ingress(create_app())) as c:
        yield c


def expire_inbox_cache() -> None:
    """What ``INBOX_CACHE_SECONDS`` (30 s) of waiting does to the ingress's cache."""
    webhooks._inboxes.clear()


def run(*args: str) -> Any:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return result


def new_token(client: TestClient, account_id: int, name: str) -> dict[str, Any]:
    made = client.post(f"/accounts/{account_id}/tokens", json={"name": name}, headers=ADMIN)
    assert made.status_code == 201, made.text
    return made.json()  # type: ignore[no-any-return]


def bearer(token: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {token['token']}"}


# ---- tokens ----------------------------------------------------------------------------------


def test_an_account_lists_its_tokens_and_never_sees_a_token(client: TestClient) -> None:
    acct, other = setup_account(client), setup_account(client)
    account_id = acct["account"]["id"]
    extra = new_token(client, account_id, "ci")
    listed = client.get(f"/accounts/{account_id}/tokens", headers=acct["auth"])
    assert listed.status_code == 200, listed.text
    assert [t["name"] for t in listed.json()] == ["api", "ci"]
    assert set(listed.json()[1]) == {"id", "account_id", "name", "created_at"}
    assert extra["token"] not in listed.text
    assert client.get(f"/accounts/{account_id}/tokens", headers=ADMIN).json() == listed.json()
    assert client.get(f"/accounts/{account_id}/tokens", headers=other["auth"]).status_code == 404
    assert client.get("/accounts/999999/tokens", headers=ADMIN).status_code == 404


def test_a_revoked_token_is_refused_at_once(client: TestClient) -> None:
    acct, other = setup_account(client), setup_account(client)
    account_id = acct["account"]["id"]
    doomed = new_token(client, account_id, "laptop")
    assert client.get("/accounts", headers=bearer(doomed)).status_code == 200
    # Another account cannot revoke it (it does not exist for them).
    assert client.delete(f"/tokens/{doomed['id']}", headers=other["auth"]).status_code == 404
    assert client.get("/accounts", headers=bearer(doomed)).status_code == 200
    # Its own account can; the very next request with it is 401.
    gone = client.delete(f"/tokens/{doomed['id']}", headers=acct["auth"])
    assert gone.status_code == 200 and gone.json()["name"] == "laptop"
    refused = client.get("/accounts", headers=bearer(doomed))
    assert refused.status_code == 401 and refused.json()["error"] == "unauthenticated"
    assert client.delete(f"/tokens/{doomed['id']}", headers=ADMIN).status_code == 404
    assert client.get("/accounts", headers=acct["auth"]).status_code == 200  # the others work
    # The admin revokes any account's token, the caller's own too.
    mine = client.get(f"/accounts/{account_id}/tokens", headers=ADMIN).json()[0]
    assert client.delete(f"/tokens/{mine['id']}", headers=acct["auth"]).status_code == 200
    assert client.get("/accounts", headers=acct["auth"]).status_code == 401


# ---- secrets ---------------------------------------------------------------------------------


def accepted(client: TestClient, inbox: int, secret: str, external_id: str) -> int:
    """The webhook's status; an accepted one is waited for until the worker has stored it (a
    test ends with nothing in flight)."""
    answer = post_webhook(client, inbox, message(external_id), secret=secret)
    if answer.status_code == 202:
        [delivery] = answer.json()["deliveries"]
        eventually(
            lambda: (
                client.get(f"/deliveries/{delivery}", headers=ADMIN).json()["state"] != "journaled"
            )
        )
    return int(answer.status_code)


def test_during_a_rotation_both_signatures_are_accepted_and_after_retiring_only_the_new(
    client: TestClient,
) -> None:
    acct = setup_account(client)  # secret "s3cret"
    inbox = acct["inbox"]
    assert accepted(client, inbox, "s3cret", "before") == 202
    rotated = client.post(
        f"/inboxes/{inbox}/secrets",
        json={"secrets": {"signing_secret": "n3w"}},
        headers=acct["auth"],
    )
    assert rotated.status_code == 200, rotated.text
    assert rotated.json() == {
        "inbox_id": inbox,
        "current": ["signing_secret"],
        "previous": ["signing_secret"],
    }
    assert "n3w" not in rotated.text and "s3cret" not in rotated.text
    expire_inbox_cache()
    assert accepted(client, inbox, "n3w", "new-1") == 202
    assert accepted(client, inbox, "s3cret", "old-1") == 202
    assert accepted(client, inbox, "wrong", "never") == 401

    retired = client.delete(f"/inboxes/{inbox}/secrets/previous", headers=acct["auth"])
    assert retired.status_code == 200 and retired.json()["previous"] is None
    expire_inbox_cache()
    refused = post_webhook(client, inbox, message("old-2"), secret="s3cret")
    assert refused.status_code == 401 and refused.json()["error"] == "bad_signature"
    assert accepted(client, inbox, "n3w", "new-2") == 202


def test_rotating_to_the_current_secrets_again_keeps_the_previous_ones(client: TestClient) -> None:
    """A retried rotation must not push the old secrets out while the provider still uses them."""
    acct = setup_account(client)
    body = {"secrets": {"signing_secret": "n3w"}}
    for _ in range(2):
        again = client.post(f"/inboxes/{acct['inbox']}/secrets", json=body, headers=acct["auth"])
        assert again.status_code == 200 and again.json()["previous"] == ["signing_secret"]
    expire_inbox_cache()
    assert accepted(client, acct["inbox"], "s3cret", "old") == 202


def test_an_account_cannot_rotate_or_retire_another_accounts_secrets(client: TestClient) -> None:
    acct, other = setup_account(client), setup_account(client)
    body = {"secrets": {"signing_secret": "stolen"}}
    taken = client.post(f"/inboxes/{acct['inbox']}/secrets", json=body, headers=other["auth"])
    assert taken.status_code == 404
    retire = client.delete(f"/inboxes/{acct['inbox']}/secrets/previous", headers=other["auth"])
    assert retire.status_code == 404
    empty = client.post(
        f"/inboxes/{acct['inbox']}/secrets", json={"secrets": {}}, headers=acct["auth"]
    )
    assert empty.status_code == 422
    expire_inbox_cache()
    assert accepted(client, acct["inbox"], "stolen", "x") == 401
    assert accepted(client, acct["inbox"], "s3cret", "y") == 202


# ---- the CLI ---------------------------------------------------------------------------------


def test_the_cli_lists_and_revokes_tokens_and_rotates_and_retires_secrets(
    client: TestClient,
) -> None:
    acct = setup_account(client)
    account_id, inbox = acct["account"]["id"], acct["inbox"]
    [listed] = json.loads(run("list-tokens", str(account_id), "--json").stdout)
    assert listed["name"] == "api" and "token" not in listed
    assert "api" in run("list-tokens", str(account_id)).stdout
    run("rotate-secrets", str(inbox), "--secret", "signing_secret=n3w")
    expire_inbox_cache()
    assert accepted(client, inbox, "s3cret", "cli-old") == 202
    assert accepted(client, inbox, "n3w", "cli-new") == 202
    run("retire-secrets", str(inbox))
    expire_inbox_cache()
    assert accepted(client, inbox, "s3cret", "cli-old-2") == 401
    assert "revoked" in run("revoke-token", str(listed["id"])).stdout
    assert client.get("/accounts", headers=acct["auth"]).status_code == 401
    missing = CliRunner().invoke(cli, ["revoke-token", str(listed["id"])])
    assert missing.exit_code == 2 and "not found" in missing.stderr
    no_secret = CliRunner().invoke(cli, ["rotate-secrets", str(inbox)])
    assert no_secret.exit_code == 2
