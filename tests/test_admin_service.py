"""Admin writes (handlers/admin.py) validated once, for the API and the CLI alike: a bad input
is refused by both, the same way; on the CLI as one line on stderr, exit code 2, nothing written.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import Result
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from api.app import create_app
from cli.main import app as cli
from store.models import Account, ApiToken, Inbox, Owner
from tests.apihelp import ADMIN
from tests.storehelp import count, new_account

MISSING = 999_999


@pytest.fixture
def client(db: None) -> Iterator[TestClient]:
    with TestClient(create_app()) as c:
        yield c


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def rows() -> tuple[int, ...]:
    return tuple(count(model) for model in (Account, ApiToken, Inbox, Owner))


def refused_in_one_line(result: Result) -> str:
    """The CLI's refusal: exit code 2 and exactly one line, on stderr, no traceback."""
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


# Each bad input the issue names, and the ones next to them --------------------------------------


def bad_inputs(account: int, inbox: int) -> list[tuple[list[str], str]]:
    """CLI arguments and what the one line must say."""
    return [
        (["create-account", "Acme", "--tier", "gold"], "tier: Input should be 'free'"),
        (
            ["create-account", "Acme", "--created-at", "yesterday"],
            "created_at: Value error, an ISO 8601 time",
        ),
        (["create-account", "Acme", "--created-at", "2025-01-01T00:00:00"], "timezone"),
        (["create-account", "", "--tier", "free"], "name: String should have at least 1"),
        (["create-owner", str(MISSING), "bob"], f"account {MISSING} not found"),
        (["create-token", str(MISSING)], f"account {MISSING} not found"),
        (["create-inbox", str(account), "x", "--provider", "nosuch"], "unknown provider 'nosuch'"),
        (["create-inbox", str(account), "x", "--channel", "fax"], "channel: Input should be"),
        (["create-inbox", str(MISSING), "x"], f"account {MISSING} not found"),
        (["create-inbox", str(account), "x", "--secret", "no-equals"], "--secret takes key=value"),
        (
            ["set-outbound", str(MISSING), "--via", "sendgrid", "--from", "s@a.test"]
            + ["--setting", "api_key=k"],
            f"inbox {MISSING} not found",
        ),
        (
            ["set-outbound", str(inbox), "--via", "pigeon", "--from", "s@a.test"],
            "invalid outbound setting: body: Input tag 'pigeon'",
        ),
        (
            ["set-outbound", str(inbox), "--via", "sendgrid", "--from", "s@a.test"]
            + ["--setting", "api_key=k", "--setting", "api_url=ftp://x"],
            "must be an http(s) URL",
        ),
    ]


def test_each_bad_admin_input_exits_2_with_one_line_and_writes_nothing(db: None):
    acct = new_account()
    before = rows()
    for args, says in bad_inputs(acct["account"], acct["inbox"]):
        line = refused_in_one_line(run(*args))
        assert says in line, (args, line)
    assert rows() == before


def test_good_admin_input_writes_what_the_api_then_reads(client: TestClient):
    made = run(
        "create-account", "Acme", "--tier", "enterprise", "--created-at", "2025-01-01T00:00:00Z"
    )
    assert made.exit_code == 0, made.output
    account = int(made.stdout)
    inbox = run("create-inbox", str(account), "support", "--secret", "signing_secret=a=b")
    assert inbox.exit_code == 0, inbox.output
    inbox_id = int(inbox.stdout.split()[0])
    assert run("create-owner", str(account), "ana", "--email", "ana@acme.test").exit_code == 0
    token = run("create-token", str(account)).stdout.strip()
    auth = {"Authorization": f"Bearer {token}"}
    assert client.get(f"/accounts/{account}", headers=auth).json()["ticket_location"] == (
        "help_desk"
    )
    [listed] = client.get("/inboxes", headers=auth).json()
    assert (listed["id"], listed["provider"]) == (inbox_id, "generic")
    assert [o["name"] for o in client.get("/owners", headers=auth).json()] == ["ana"]
    configured = run(
        "set-outbound", str(inbox_id), "--via", "sendgrid", "--from", "s@acme.test",
        "--setting", "api_key=SG.x",
    )  # fmt: skip
    assert configured.exit_code == 0, configured.output
    assert client.get("/inboxes", headers=auth).json()[0]["replies_via"] == "sendgrid"


# The API refuses the same inputs, with the same words -----------------------------------------


def api_twins(account: int, inbox: int) -> list[tuple[list[str], str, str, dict[str, Any], int]]:
    """(CLI arguments, API method, path, body, status) that must be refused alike."""
    inbox_body = {"account_id": account, "name": "x", "channel": "email"}
    return [
        (
            ["create-account", "Acme", "--tier", "gold"],
            "POST", "/accounts", {"name": "Acme", "tier": "gold"}, 422,
        ),
        (
            ["create-account", "Acme", "--created-at", "yesterday"],
            "POST", "/accounts", {"name": "Acme", "tier": "free", "created_at": "yesterday"}, 422,
        ),
        (
            ["create-owner", str(MISSING), "bob"],
            "POST", "/owners", {"account_id": MISSING, "name": "bob"}, 404,
        ),
        (
            ["create-token", str(MISSING)],
            "POST", f"/accounts/{MISSING}/tokens", {}, 404,
        ),
        (
            ["create-inbox", str(account), "x", "--provider", "nosuch"],
            "POST", "/inboxes", {**inbox_body, "provider": "nosuch"}, 422,
        ),
        (
            ["create-inbox", str(MISSING), "x"],
            "POST", "/inboxes", {**inbox_body, "account_id": MISSING, "provider": "generic"}, 404,
        ),
        (
            ["set-outbound", str(MISSING), "--via", "sendgrid", "--from", "s@a.test",
             "--setting", "api_key=k"],
            "PUT", f"/inboxes/{MISSING}/outbound",
            {"via": "sendgrid", "from": "s@a.test", "api_key": "k"}, 404,
        ),
        (
            ["set-outbound", str(inbox), "--via", "sendgrid", "--from", "s@a.test",
             "--setting", "api_key=k", "--setting", "api_url=ftp://x"],
            "PUT", f"/inboxes/{inbox}/outbound",
            {"via": "sendgrid", "from": "s@a.test", "api_key": "k", "api_url": "ftp://x"}, 422,
        ),
    ]  # fmt: skip


def test_the_cli_and_the_api_refuse_the_same_inputs_the_same_way(client: TestClient):
    acct = new_account()
    before = rows()
    for args, method, path, body, status in api_twins(acct["account"], acct["inbox"]):
        answer = client.request(method, path, json=body, headers=ADMIN)
        assert answer.status_code == status, (path, answer.text)
        line = refused_in_one_line(run(*args))
        # The CLI's line is the API's message, give or take the API's "body." field prefix
        # and the CLI's "invalid <what>:" lead.
        problem = line.split(": ", 1)[1] if line.startswith("invalid ") else line
        assert problem in answer.json()["message"].replace("body.", ""), (line, answer.json())
    assert rows() == before


def test_an_api_refusal_writes_nothing_and_keeps_its_idempotency_key_free(client: TestClient):
    acct = new_account()
    before = rows()
    keyed = {**ADMIN, "Idempotency-Key": "owner-1"}
    missing = client.post("/owners", json={"account_id": MISSING, "name": "b"}, headers=keyed)
    assert missing.status_code == 404
    assert rows() == before
    # The key was not spent on the refusal: the corrected request is written under it.
    body = {"account_id": acct["account"], "name": "b"}
    assert client.post("/owners", json=body, headers=keyed).status_code == 201
    assert client.post("/owners", json=body, headers=keyed).status_code == 201  # the replay
    assert count(Owner) == before[3] + 1
