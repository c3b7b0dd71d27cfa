"""The HTTP API fuzzed against its own OpenAPI schema (issue 14, "Keep it closed").

Schemathesis generates requests for every operation the service documents: valid and invalid
parameters and bodies, boundary values, and methods the path does not take. Each is sent in
process to the app as ``inboxsync serve`` runs it (the webhook fast path, ``Ingress``, in front of
the FastAPI app), once with the admin token and once with an account's token, while a worker
thread applies the writes. Half of the generated ids (in paths, queries and bodies) are swapped
for ids of real rows of that account, seeded first, so that requests get past the 404 into the
rules, the replies and the attachments.

Promised, for every operation and both callers:

- no answer is a 5xx, and every error is JSON with ``error`` and ``message`` (api/errors.py);
- an answer's content type, body and headers are what the schema documents for its status, and
  invalid input is refused;
- every status answered is one the schema documents for the operation, and a 405 names the
  methods the path takes (``Allow``, RFC 9110 15.5.6): a client generated from the schema can
  rely on it.

Bounded for CI: a fixed seed, derandomized, a few fuzzed examples per operation on top of
Schemathesis's deterministic boundary cases, no example database (tests/fuzzhelp.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    missing_required_header,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from api.app import create_app
from api.webhooks import Ingress
from handlers.channels.generic import sign
from schemas.types import MAX_ID
from tests import fuzzhelp, storehelp
from tests.apihelp import ADMIN, eventually, message
from tests.storehelp import new_account

EML = Path(__file__).parent / "fixtures" / "email" / "attachments.eml"

# The app as ``inboxsync serve`` runs it. Its lifespan (the batcher, the periodic round) starts
# with the first request and stops when this module's tests are done (fixture ``app``).
APP = Ingress(create_app())


def load_schema(**phases: dict[str, bool]) -> schemathesis.BaseSchema:
    """The service's own schema, sent to ``APP``, generating valid and invalid input alike."""
    config = schemathesis.Config.from_dict(
        {
            "seed": fuzzhelp.SEED,
            "generation": {"mode": "all", "deterministic": True, "database": "none"},
            "phases": phases,
        }
    )
    schema = schemathesis.openapi.from_dict(APP.app.openapi(), config=config)
    schema.app = APP
    for part in ("path_parameters", "query", "body"):
        schema.hook(f"flatmap_{part}")(_half_real)
    return schema


# Ids of real rows, by parameter name, filled in by the ``world`` fixture before any request is
# generated: the hooks below read them while drawing.
REAL: dict[str, Any] = {}


def _with_real_ids(value: Any) -> Any:
    """``value`` (parameters or a JSON body) with every valid id it names that has a real row
    swapped for that row's id, at any depth. Invalid ones (a string, -1, 2**63) stay: they are
    what makes a negative case negative."""
    if isinstance(value, dict):
        return {
            k: REAL[k] if k in REAL and _valid_id(v) else _with_real_ids(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_with_real_ids(v) for v in value]
    return value


def _valid_id(value: Any) -> bool:
    return type(value) is int and 0 <= value <= MAX_ID


def _half_real(_: Any, value: Any) -> st.SearchStrategy[Any]:
    return st.sampled_from([value, _with_real_ids(value)])


# Random cases (after the operation's examples): each phase runs once, in one of the two tests.
SCHEMA = load_schema(coverage={"enabled": False})
# Schemathesis's deterministic cases (boundary values, each constraint broken in turn, methods
# the path does not take): they are the ones that probe what the schema documents.
BOUNDARIES = load_schema(fuzzing={"enabled": False})


@schemathesis.check
def errors_are_json_with_error_and_message(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case
) -> None:
    problem = fuzzhelp.error_body_problem(
        response.status_code, response.headers.get("content-type", [None])[0], response.content
    )
    assert problem is None, problem


ERROR_CHECKS: list[schemathesis.CheckFunction] = [
    not_a_server_error,
    errors_are_json_with_error_and_message,
]
DOCUMENTED_CHECKS: list[schemathesis.CheckFunction] = [
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    unsupported_method,
    negative_data_rejection,
    missing_required_header,
]
# Not checked: ``positive_data_acceptance``. Bodies the schema allows are refused by the rules
# and the store on purpose (an owner of another account, an unknown provider, an Idempotency-Key
# reused with another body), and Schemathesis compares the bigint cap as a float, so it takes
# ids just past 2**63 - 1 for valid.


@pytest.fixture(scope="module")
def app(worker: None) -> Iterator[Any]:
    yield APP
    asgi.shutdown_lifespans()  # its periodic round must not outlive this module


@pytest.fixture(scope="module")
def world(app: Any) -> dict[str, Any]:
    """An account with a token, an inbox of each kind, an owner, a conversation with a ticket
    and a reply, a mail with attachments, their deliveries: every id a path can name."""
    with TestClient(app) as client:
        account = client.post(
            "/accounts",
            json={"name": "fuzz", "tier": "enterprise", "created_at": "2025-01-01T00:00:00Z"},
            headers=ADMIN,
        ).json()
        token = client.post(f"/accounts/{account['id']}/tokens", json={}, headers=ADMIN).json()
        auth = {"Authorization": f"Bearer {token['token']}"}
        generic = _made(client, "/inboxes", auth, _inbox("generic", signing_secret="s3cret"))
        raw = _made(client, "/inboxes", auth, _inbox("rfc822", bearer_secret="raw-s3cret"))
        owner = _made(client, "/owners", auth, {"name": "ana"})
        outbound = {"via": "smtp", "from": "Acme <support@acme.test>", "host": "smtp.acme.test"}
        client.put(f"/inboxes/{generic}/outbound", json=outbound, headers=auth).raise_for_status()

        delivery = _webhook(client, generic)
        mailed = _webhook(client, raw, body=EML.read_bytes(), headers=_bearer("raw-s3cret"))
        [stored] = _stored(client, delivery, auth)["messages"]
        [mail] = _stored(client, mailed, auth)["messages"]
        conversation = stored["conversation_id"]
        ticket = client.post(f"/conversations/{conversation}/ticket", json={}, headers=auth)
        assert ticket.status_code == 201, ticket.text
        reply = client.post(
            f"/conversations/{conversation}/replies",
            json={"text": "On its way.", "to": ["maria@example.com"]},
            headers=auth,
        )
        assert reply.status_code == 202, reply.text
        contact = client.get(f"/conversations/{conversation}", headers=auth).json()["contact_id"]
    REAL.update(
        account_id=account["id"],
        inbox_id=generic,
        owner_id=owner,
        conversation_id=conversation,
        ticket_id=ticket.json()["ticket"]["id"],
        change_id=ticket.json()["change_id"],
        reply_id=reply.json()["id"],
        message_id=mail["message_id"],
        index=0,
        contact_id=contact,
        delivery_id=delivery,
    )
    return {"account_id": account["id"]}


def _inbox(provider: str, **secrets: str) -> dict[str, Any]:
    return {"name": provider, "channel": "email", "provider": provider, "secrets": secrets}


def _made(client: TestClient, path: str, auth: dict[str, str], body: dict[str, Any]) -> int:
    answer = client.post(path, json=body, headers=auth)
    assert answer.status_code == 201, answer.text
    return int(answer.json()["id"])


def _bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}", "Content-Type": "message/rfc822"}


def _webhook(
    client: TestClient, inbox: int, body: bytes | None = None, headers: dict[str, str] | None = None
) -> int:
    if body is None:
        body = json.dumps(message("fuzz-1")).encode()
        stamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "X-Inboxsync-Timestamp": str(stamp),
            "X-Inboxsync-Signature": sign("s3cret", stamp, body),
        }
    answer = client.post(f"/webhooks/{inbox}", content=body, headers=headers)
    assert answer.status_code == 202, answer.text
    [delivery] = answer.json()["deliveries"]
    return int(delivery)


def _stored(client: TestClient, delivery: int, auth: dict[str, str]) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        found: dict[str, Any] = client.get(f"/deliveries/{delivery}", headers=auth).json()
        return found if found.get("state") == "stored" else None

    return eventually(done)


@pytest.fixture(params=["admin", "account"])
def caller(request: pytest.FixtureRequest, world: dict[str, Any]) -> dict[str, str]:
    """The admin's Authorization header, or a fresh token of the seeded account's: the fuzzer
    revokes tokens too (``DELETE /tokens/{id}``), its own among them."""
    if request.param == "admin":
        return ADMIN
    with asgi.get_client(APP) as client:
        made = client.post(f"/accounts/{world['account_id']}/tokens", json={}, headers=ADMIN)
        made.raise_for_status()
    return {"Authorization": f"Bearer {made.json()['token']}"}


@SCHEMA.parametrize()
@fuzzhelp.bounded(max_examples=2)
def test_no_answer_is_a_5xx_and_every_error_is_json_with_error_and_message(
    case: schemathesis.Case, caller: dict[str, str]
) -> None:
    case.call_and_validate(headers=caller, checks=ERROR_CHECKS)


@BOUNDARIES.parametrize()
@fuzzhelp.bounded(max_examples=1)
def test_every_answer_is_one_the_schema_documents(
    case: schemathesis.Case, caller: dict[str, str]
) -> None:
    """Its status, content type, body and headers; a 405 names the methods the path takes;
    input the schema calls invalid is refused; and, as for random cases, no 5xx and every error
    with ``error`` and ``message``."""
    case.call_and_validate(headers=caller, checks=[*ERROR_CHECKS, *DOCUMENTED_CHECKS])


# ---- what the fuzzing found --------------------------------------------------------------------
# Each failure the fuzzing found, as the smallest request that shows it (issue 14).


@pytest.fixture
def client(worker: None, db: None) -> Iterator[TestClient]:
    with TestClient(Ingress(create_app()), raise_server_exceptions=False) as served:
        yield served


def test_a_write_a_rule_refuses_answers_an_error_with_error_and_message(
    client: TestClient,
) -> None:
    """A refused change (here: a ticket for a trashed conversation, 409) answered the change's
    result, ``{"change_id", "status": "rejected", "error": <text>, ...}``: no ``message``, and an
    ``error`` that is a sentence, not a code, unlike every other error."""
    acct = new_account()
    token = client.post(f"/accounts/{acct['account']}/tokens", json={}, headers=ADMIN).json()
    auth = {"Authorization": f"Bearer {token['token']}"}
    conversation = storehelp.conversation(acct["inbox"], "refused")
    trashed = client.post(f"/conversations/{conversation}/trash", headers=auth)
    assert trashed.status_code == 200, trashed.text
    refused = client.post(f"/conversations/{conversation}/ticket", json={}, headers=auth)
    assert refused.status_code == 409, refused.text
    problem = fuzzhelp.error_body_problem(
        refused.status_code, refused.headers["content-type"], refused.content
    )
    assert problem is None, problem


def test_a_405_names_the_methods_the_path_takes(client: TestClient) -> None:
    """RFC 9110 15.5.6: a 405 carries ``Allow``. The error mapping dropped the router's header,
    and the webhook route's own 405 never had one."""
    wrong_method = client.patch("/healthz", headers=ADMIN)
    assert wrong_method.status_code == 405
    assert wrong_method.headers.get("allow") == "GET"
    inbox = new_account()["inbox"]  # a generic inbox
    no_handshake = client.get(f"/webhooks/{inbox}")
    assert no_handshake.status_code == 405
    assert no_handshake.headers.get("allow") == "POST"
    # A path two routes serve: the router named only the first one's methods.
    trace = client.request("TRACE", f"/webhooks/{inbox}")
    assert trace.status_code == 405
    assert trace.headers.get("allow") == "GET, POST"


def test_a_path_the_schema_names_is_not_read_as_another_paths_id(client: TestClient) -> None:
    """``GET /dead-letters/replay`` was routed to ``GET /dead-letters/{letter_id}`` and refused
    "replay" as an id (422): the schema has ``/dead-letters/replay`` take POST only."""
    answer = client.get("/dead-letters/replay", headers=ADMIN)
    assert answer.status_code == 405, answer.text
    assert answer.headers.get("allow") == "POST"


def test_an_id_in_a_body_is_never_a_boolean(client: TestClient) -> None:
    """JSON ``true`` is not an id; pydantic's lax mode read it as 1, so the admin's
    ``{"account_id": true}`` made an owner in account 1."""
    answer = client.post("/owners", json={"name": "ana", "account_id": True}, headers=ADMIN)
    assert answer.status_code == 422, answer.text
    assert "body.account_id" in [d["field"] for d in answer.json()["details"]]


def test_an_attachment_is_answered_in_a_content_type_the_schema_documents(
    client: TestClient,
) -> None:
    """The download answers with the attachment's own type (``image/png``); the schema says
    ``application/octet-stream`` only, so a client generated from it refuses the answer."""
    inbox = new_account(provider="rfc822", secrets={"bearer_secret": "raw-s3cret"})["inbox"]
    delivery = _webhook(client, inbox, body=EML.read_bytes(), headers=_bearer("raw-s3cret"))
    [mail] = _stored(client, delivery, ADMIN)["messages"]
    answer = client.get(f"/messages/{mail['message_id']}/attachments/0", headers=ADMIN)
    assert answer.status_code == 200, answer.text
    operation = APP.app.openapi()["paths"]["/messages/{message_id}/attachments/{index}"]["get"]
    documented = list(operation["responses"]["200"]["content"])
    kind = answer.headers["content-type"].split(";")[0]
    family = kind.split("/")[0] + "/*"
    assert {kind, family, "*/*"} & set(documented), (kind, documented)
