"""Hostile input at the HTTP edge (issue 14): what a stranger can send before any credential is
checked, and what a signed sender can send past it, is refused with a 4xx JSON answer, cheaply,
before the work it would cost, and never with a bare 500.

The only timing assertion is the functional bound of item 1: Mailgun's ``verify`` of a
10,000-part form returns in well under a second, because it no longer parses the form.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import exc as sa_exc
from sqlalchemy import func, select

from api import errors
from api.app import create_app
from api.webhooks import Ingress
from handlers import channels
from handlers.channels import adapter_for
from handlers.channels.base import PayloadError, SignatureError, WebhookRequest
from handlers.channels.generic import sign as generic_sign
from handlers.channels.mailgun import sign as mailgun_sign
from handlers.channels.ses import SesAdapter
from schemas.inbound import GenericWebhook
from schemas.types import MAX_ID
from settings import get_settings
from store.db import reading
from store.models import Delivery
from tests.apihelp import ADMIN, message, post_webhook
from tests.storehelp import new_account
from tests.test_ses_inbound import SECRETS as SNS_SECRETS
from tests.test_ses_inbound import Edge, signed

MAILGUN_KEY = "key-mg-s3cret"
BOUNDARY = "----hostile7MA4YWxk"
FORM = f"multipart/form-data; boundary={BOUNDARY}"


@pytest.fixture
def client(db: None) -> Iterator[TestClient]:
    """The app as ``inboxsync serve`` runs it; 500s come back as answers, not exceptions."""
    with TestClient(Ingress(create_app()), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def acct(client: TestClient) -> dict[str, Any]:
    """An account (generic inbox, secret ``s3cret``) and a token for it."""
    made = new_account(secrets={"signing_secret": "s3cret"})
    token = client.post(f"/accounts/{made['account']}/tokens", json={}, headers=ADMIN).json()
    return {**made, "auth": {"Authorization": f"Bearer {token['token']}"}}


def inbox_of(provider: str, secrets: dict[str, Any]) -> int:
    return new_account(provider=provider, secrets=secrets)["inbox"]


def deliveries() -> int:
    with reading() as session:
        return session.scalar(select(func.count()).select_from(Delivery)) or 0


def assert_json_error(response: Any, status: int | tuple[int, ...]) -> dict[str, Any]:
    allowed = (status,) if isinstance(status, int) else status
    assert response.status_code in allowed, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["error"] and body["message"]
    return body


def multipart(parts: list[tuple[str, str]], *, extra_headers: str = "") -> bytes:
    """A multipart form as providers post it, each part a named text field."""
    out = [
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n{extra_headers}\r\n'
        f"{value}\r\n"
        for name, value in parts
    ]
    return ("".join(out) + f"--{BOUNDARY}--\r\n").encode()


def mailgun_parts(*, token: str = "tok-1", stamp: float | None = None) -> list[tuple[str, str]]:
    """A signed Mailgun route post in the parsed form, signature fields first."""
    timestamp = str(int(time.time() if stamp is None else stamp))
    return [
        ("timestamp", timestamp),
        ("token", token),
        ("signature", mailgun_sign(MAILGUN_KEY, timestamp, token)),
        ("from", "Maria <maria@example.com>"),
        ("subject", "Olá"),
        ("body-plain", "Hello"),
        ("message-headers", json.dumps([["Message-Id", "<hostile-1@example.com>"]])),
    ]


def webhook(body: bytes, content_type: str = FORM, inbox_id: int | None = None) -> WebhookRequest:
    return WebhookRequest(
        method="POST",
        url="https://x/webhooks/1",
        headers={"content-type": content_type},
        query={},
        body=body,
        inbox_id=inbox_id,
    )


# 1. Verify before parse, and bounded parsing --------------------------------------------------

TEN_THOUSAND = [(f"field-{i}", "x") for i in range(10_000)]


@pytest.mark.parametrize(
    "signature_fields",
    [
        [],  # none at all
        [("timestamp", "1"), ("token", "t"), ("signature", "0" * 64)],  # forged, up front
    ],
    ids=["unsigned", "forged"],
)
def test_mailgun_verify_of_a_10000_part_form_is_401_within_half_a_second(signature_fields):
    body = multipart([*signature_fields, *TEN_THOUSAND])
    adapter = adapter_for("mailgun")
    started = time.perf_counter()
    with pytest.raises(SignatureError):
        adapter.verify(webhook(body), {"signing_key": MAILGUN_KEY}, time.time())
    assert time.perf_counter() - started < 0.5


def test_http_unsigned_mailgun_post_of_10000_parts_is_401_and_nothing_is_journaled(client):
    inbox = inbox_of("mailgun", {"signing_key": MAILGUN_KEY})
    body = multipart(TEN_THOUSAND)
    answer = client.post(f"/webhooks/{inbox}", content=body, headers={"Content-Type": FORM})
    assert assert_json_error(answer, 401)["error"] == "bad_signature"
    assert deliveries() == 0


def test_signed_mailgun_post_over_the_parts_limit_is_413_with_a_clear_error(client, monkeypatch):
    monkeypatch.setattr(get_settings(), "max_form_parts", 50)
    inbox = inbox_of("mailgun", {"signing_key": MAILGUN_KEY})
    body = multipart([*mailgun_parts(token="tok-many"), *TEN_THOUSAND[:60]])
    answer = client.post(f"/webhooks/{inbox}", content=body, headers={"Content-Type": FORM})
    error = assert_json_error(answer, 413)
    assert error["error"] == "too_large"
    assert "50 parts" in error["message"] and "INBOXSYNC_MAX_FORM_PARTS" in error["message"]
    assert deliveries() == 0
    within = multipart([*mailgun_parts(token="tok-few"), *TEN_THOUSAND[:40]])
    answer = client.post(f"/webhooks/{inbox}", content=within, headers={"Content-Type": FORM})
    assert answer.status_code == 202, answer.text


def test_form_header_lines_over_the_limit_are_refused_before_parsing(monkeypatch):
    monkeypatch.setattr(get_settings(), "max_header_lines", 100)
    padding = "".join(f"X-Pad-{i}: y\r\n" for i in range(200))
    body = multipart(mailgun_parts(), extra_headers=padding)
    adapter = adapter_for("mailgun")
    adapter.verify(webhook(body), {"signing_key": MAILGUN_KEY}, time.time())
    with pytest.raises(channels.base.TooLarge, match="INBOXSYNC_MAX_HEADER_LINES"):
        adapter.accept(webhook(body))
    with pytest.raises(channels.base.TooLarge, match="INBOXSYNC_MAX_HEADER_LINES"):
        adapter_for("sendgrid").accept(webhook(body))


def test_sendgrid_headers_field_over_the_header_line_limit_is_413(monkeypatch):
    monkeypatch.setattr(get_settings(), "max_header_lines", 100)
    block = "".join(f"X-H-{i}: v\r\n" for i in range(101))
    with pytest.raises(channels.base.TooLarge, match="INBOXSYNC_MAX_HEADER_LINES"):
        adapter_for("sendgrid").accept(webhook(multipart([("headers", block), ("text", "hi")])))


def test_urlencoded_mailgun_verify_reads_only_the_signature_fields(monkeypatch):
    monkeypatch.setattr(get_settings(), "max_form_parts", 50)
    fields = "&".join(f"{name}={value}" for name, value in mailgun_parts())
    adapter = adapter_for("mailgun")
    kind = "application/x-www-form-urlencoded"
    adapter.verify(webhook(fields.encode(), kind), {"signing_key": MAILGUN_KEY}, time.time())
    flood = "&".join(f"f{i}=x" for i in range(10_000)) + "&" + fields
    with pytest.raises(SignatureError, match="first 50"):
        adapter.verify(webhook(flood.encode(), kind), {"signing_key": MAILGUN_KEY}, time.time())
    with pytest.raises(channels.base.TooLarge, match="INBOXSYNC_MAX_FORM_PARTS"):
        adapter.accept(webhook((fields + "&" + flood).encode(), kind))


def test_mailgun_form_with_two_tokens_is_refused_as_ambiguous():
    # Two "token" parts: which one was signed? A parser that keeps the last and a scanner that
    # keeps the first would disagree, and the replay key must be the token that was checked.
    body = multipart([*mailgun_parts(token="tok-a"), ("token", "tok-b")])
    with pytest.raises(SignatureError, match="more than one token"):
        adapter_for("mailgun").verify(webhook(body), {"signing_key": MAILGUN_KEY}, time.time())


def test_sendgrid_verifies_credentials_before_its_form_is_parsed(client):
    inbox = inbox_of("sendgrid", {"url_secret": "sg-s3cret"})
    body = multipart(TEN_THOUSAND)
    started = time.perf_counter()
    adapter_for("sendgrid").verify(
        WebhookRequest("POST", "u", {"content-type": FORM}, {"secret": "sg-s3cret"}, body),
        {"url_secret": "sg-s3cret"},
        time.time(),
    )
    assert time.perf_counter() - started < 0.5  # verify reads the URL, not the body
    answer = client.post(
        f"/webhooks/{inbox}?secret=nope", content=body, headers={"Content-Type": FORM}
    )
    assert assert_json_error(answer, 401)["error"] == "bad_signature"


# 2. NUL in API bodies and paths ---------------------------------------------------------------


def test_nul_in_any_api_body_string_is_422_naming_the_field(client, acct):
    auth = acct["auth"]
    cases = [
        ("/owners", {"name": "ana\u0000"}, auth, "body.name"),
        ("/accounts", {"name": "acme\u0000", "tier": "free"}, ADMIN, "body.name"),
        (
            "/inboxes",
            {"name": "support\u0000", "channel": "email", "provider": "generic"},
            auth,
            "body.name",
        ),
        (
            "/inboxes",
            {"name": "s", "channel": "email", "provider": "generic", "secrets": {"k\u0000": "v"}},
            auth,
            "body.secrets",
        ),
        (
            "/changes",
            {"id": "ch-\u0000", "action": {"kind": "trash_conversation", "conversation_id": 1}},
            auth,
            "body.id",
        ),
        (
            "/changes",
            {
                "action": {
                    "kind": "create_ticket",
                    "conversation_id": 1,
                    "properties": {"note": ["a", "b\u0000"]},
                }
            },
            auth,
            "body.action",
        ),
    ]
    for path, body, headers, field in cases:
        answer = client.post(path, json=body, headers=headers)
        error = assert_json_error(answer, 422)
        assert field in [d["field"] for d in error["details"]], (path, error)
        assert "NUL" in error["message"]


def test_text_that_is_not_unicode_is_422_even_as_a_key(client, acct):
    # JSON may spell a lone surrogate ("\\ud800"); neither orjson nor PostgreSQL takes one.
    inbox = {"name": "s", "channel": "email", "provider": "generic"}
    for secrets in ({"k": "\ud800"}, {"\ud800": "v"}, {"k\u0000": "v"}):
        body = json.dumps({**inbox, "secrets": secrets}).encode()  # escaped, as JSON may
        headers = {**acct["auth"], "Content-Type": "application/json"}
        answer = client.post("/inboxes", content=body, headers=headers)
        assert "body.secrets" in assert_json_error(answer, 422)["message"]


def test_nul_in_reply_and_outbound_bodies_is_422(client, acct):
    auth = acct["auth"]
    outbound = {"via": "smtp", "from": "Acme <support@acme.test>", "host": "smtp\u0000.example"}
    answer = client.put(f"/inboxes/{acct['inbox']}/outbound", json=outbound, headers=auth)
    assert "NUL" in assert_json_error(answer, 422)["message"]
    answer = client.post("/conversations/1/replies", json={"text": "hi\u0000"}, headers=auth)
    assert "body.text" in [d["field"] for d in assert_json_error(answer, 422)["details"]]


def test_nul_in_a_path_or_query_parameter_is_422_not_500(client, acct):
    for url, field in [
        ("/changes/%00", "path"),
        ("/changes/api%00x", "path"),
        ("/messages?message_id=%00", "query.message_id"),
        ("/contacts?handle=a%00b", "query.handle"),
    ]:
        error = assert_json_error(client.get(url, headers=acct["auth"]), 422)
        assert [d["field"] for d in error["details"]] == [field], url


# 4. Body size limit on every route, before auth -----------------------------------------------


def test_api_body_over_the_limit_is_413_before_auth(client, monkeypatch):
    monkeypatch.setattr(get_settings(), "max_api_body_bytes", 1000)
    big = {"name": "x" * 2000, "tier": "free"}
    wrong_token = {"Authorization": "Bearer wrong"}
    answer = client.post("/accounts", json=big, headers=wrong_token)
    assert assert_json_error(answer, 413)["error"] == "too_large"
    small = client.post("/accounts", json={"name": "x", "tier": "free"}, headers=wrong_token)
    assert small.status_code == 401


def test_a_streamed_api_body_is_cut_off_at_the_limit_before_it_is_read_whole(db, monkeypatch):
    """No Content-Length (chunked): the body is counted as it arrives, and reading stops at
    the limit; the app never holds more than the limit and a chunk."""
    monkeypatch.setattr(get_settings(), "max_api_body_bytes", 1000)
    status, pulled = asyncio.run(stream_post(create_app(), "/accounts", chunks=10_000, size=100))
    assert status == 413
    assert pulled <= 11


def test_webhooks_keep_their_own_larger_limit(client, acct, monkeypatch):
    monkeypatch.setattr(get_settings(), "max_api_body_bytes", 1000)
    big = message("m")
    big["text"] = "x" * 5000
    assert post_webhook(client, acct["inbox"], big).status_code == 202
    with TestClient(create_app()) as framework_only:  # the FastAPI route, no fast path
        assert post_webhook(framework_only, acct["inbox"], big, secret="no").status_code == 401
    monkeypatch.setattr(get_settings(), "max_body_bytes", 1000)
    status, pulled = asyncio.run(
        stream_post(create_app(), f"/webhooks/{acct['inbox']}", chunks=10_000, size=100)
    )
    assert (status, pulled <= 11) == (413, True)


async def stream_post(app: Any, path: str, *, chunks: int, size: int) -> tuple[int, int]:
    """POST ``chunks`` chunks of ``size`` bytes without a Content-Length, straight through the
    ASGI interface; the status answered and how many chunks the app pulled."""
    pulled = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        if pulled >= chunks:
            return {"type": "http.disconnect"}
        pulled += 1
        return {"type": "http.request", "body": b"x" * size, "more_body": pulled < chunks}

    async def send(event: dict[str, Any]) -> None:
        sent.append(event)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"host", b"test")],
        "client": ("127.0.0.1", 1),
        "server": ("test", 80),
        "state": {},
    }
    await app(scope, receive, send)
    [start] = [e for e in sent if e["type"] == "http.response.start"]
    return start["status"], pulled


# 5. Integers out of range ---------------------------------------------------------------------


def test_ids_past_bigint_in_bodies_are_422_not_500(client, acct):
    auth = acct["auth"]
    for big in (2**63, 2**64, 2**70):
        for path, body in [
            ("/changes", {"action": {"kind": "set_ticket_owner", "ticket_id": big, "owner_id": 1}}),
            ("/changes", {"action": {"kind": "trash_conversation", "conversation_id": big}}),
            ("/owners", {"name": "x", "account_id": big}),
            ("/conversations/1/owner", {"owner_id": big}),
        ]:
            error = assert_json_error(client.post(path, json=body, headers=auth), 422)
            assert "9223372036854775807" in error["message"], (path, big, error)


def test_integers_past_64_bits_and_non_json_numbers_in_free_form_fields_are_422(client, acct):
    auth = acct["auth"]
    inbox = {"name": "s", "channel": "email", "provider": "generic"}
    for secrets in ({"k": 2**64}, {"k": [1, {"deep": -(2**70)}]}):
        answer = client.post("/inboxes", json={**inbox, "secrets": secrets}, headers=auth)
        assert "body.secrets" in assert_json_error(answer, 422)["message"]
    not_json = b'{"name": "s", "channel": "email", "provider": "generic", "secrets": {"k": NaN}}'
    answer = client.post(
        "/inboxes", content=not_json, headers={**auth, "Content-Type": "application/json"}
    )
    assert "body.secrets" in assert_json_error(answer, 422)["message"]
    for depth in (100, 900):
        nested = b"[" * depth + b"]" * depth
        body = b'{"name": "s", "channel": "email", "provider": "generic", "secrets": {"k": '
        answer = client.post(
            "/inboxes",
            content=body + nested + b"}}",
            headers={**auth, "Content-Type": "application/json"},
        )
        assert "nested deeper" in assert_json_error(answer, 422)["message"]


def test_every_integer_id_of_every_route_is_bounded(client):
    """Every integer parameter or body field that names a row (``*_id``, ``index``, ``inbox``)
    is capped at the store's bigint, read from the OpenAPI spec of the whole app."""
    spec = client.get("/openapi.json").json()
    unbounded = []
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for param in operation.get("parameters", []):
                if not names_a_row(param["name"]):
                    continue
                for schema in integer_schemas(param["schema"], spec):
                    if not capped(schema):
                        unbounded.append(f"{method.upper()} {path} {param['name']}")
            body = operation.get("requestBody", {}).get("content", {}).get("application/json")
            if body:
                for name, schema in id_fields(body["schema"], spec, set()):
                    if not capped(schema):
                        unbounded.append(f"{method.upper()} {path} body {name}")
    assert unbounded == []


def names_a_row(name: str) -> bool:
    return name.endswith("_id") or name in ("index", "inbox")


def capped(schema: dict[str, Any]) -> bool:
    # The spec writes the cap as a float (9.223372036854776e18): compare as one.
    return float(schema.get("maximum", "inf")) == float(MAX_ID)


def integer_schemas(schema: dict[str, Any], spec: dict[str, Any]) -> list[dict[str, Any]]:
    schema = resolve(schema, spec)
    if schema.get("type") == "integer":
        return [schema]
    return [s for option in schema.get("anyOf", []) for s in integer_schemas(option, spec)]


def id_fields(
    schema: dict[str, Any], spec: dict[str, Any], seen: set[str]
) -> Iterator[tuple[str, dict[str, Any]]]:
    ref = schema.get("$ref")
    if ref in seen:
        return
    if ref:
        seen.add(ref)
    schema = resolve(schema, spec)
    for name, field in schema.get("properties", {}).items():
        if names_a_row(name):
            for integer in integer_schemas(field, spec):
                yield name, integer
        yield from id_fields(field, spec, seen)
    for key in ("anyOf", "oneOf", "allOf"):
        for option in schema.get(key, []):
            yield from id_fields(option, spec, seen)
    if "items" in schema:
        yield from id_fields(schema["items"], spec, seen)


def resolve(schema: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def test_webhook_ids_past_bigint_are_404_and_odd_digits_never_500(client):
    assert assert_json_error(client.post("/webhooks/9223372036854775808", content=b"{}"), 404)
    assert assert_json_error(client.post("/webhooks/" + "9" * 5000, content=b"{}"), 404)
    # "²" is a digit to str.isdigit, not to int(): the fast path leaves it to the route.
    assert assert_json_error(client.post("/webhooks/%C2%B2", content=b"{}"), 422)
    with TestClient(create_app()) as framework_only:
        answer = framework_only.post("/webhooks/9223372036854775808", content=b"{}")
        assert assert_json_error(answer, (404, 422))


def test_generic_webhook_inbox_past_bigint_is_refused_at_the_edge():
    body = json.dumps({**message("m"), "inbox": 2**64}).encode()
    with pytest.raises(PayloadError, match="inbox"):
        adapter_for("generic").accept(webhook(body, "application/json", inbox_id=1))
    assert GenericWebhook.model_json_schema()["properties"]["inbox"]["anyOf"][0]["maximum"] == (
        MAX_ID
    )


def test_a_value_the_store_refuses_is_422_not_500():
    refused = sa_exc.DataError("INSERT …", {}, Exception("value out of range for type bigint"))
    status, body, _ = errors.render(refused)
    assert status == 422 and body["error"] == "invalid_request"


# 6. SES: malformed SNS bodies without auth ----------------------------------------------------

DEEP = "[" * 100_000 + "]" * 100_000


def sns(**changes: Any) -> bytes:
    """A notification as an attacker would shape it: unsigned, fields as given."""
    fields: dict[str, Any] = json.loads(json.dumps(signed("notification.json")))
    fields.update(changes)
    return json.dumps(fields).encode()


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(sns(Timestamp=1764000000), id="numeric-Timestamp"),
        pytest.param(sns(SigningCertURL=12), id="numeric-SigningCertURL"),
        pytest.param(sns(Type=["Notification"]), id="Type-a-list"),
        pytest.param(sns(Type={"a": 1}), id="Type-an-object"),
        pytest.param(sns(Message=5), id="numeric-Message"),
        pytest.param(sns(Signature=None), id="null-Signature"),
        pytest.param(sns(SignatureVersion=1), id="numeric-SignatureVersion"),
        pytest.param(sns(TopicArn=["arn"]), id="TopicArn-a-list"),
        pytest.param(
            sns(MessageAttributes={"a": {"Type": "String", "Value": 1}}), id="odd-attribute"
        ),
        pytest.param(b'{"Type": "Notification", "Extra": ' + DEEP.encode() + b"}", id="deep"),
        pytest.param(DEEP.encode(), id="deep-array"),
        pytest.param(b"[]", id="an-array"),
        pytest.param(b"null", id="null"),
        pytest.param(b'"Notification"', id="a-string"),
        pytest.param(b"not json", id="not-json"),
        pytest.param(b"\xff\xfe", id="not-utf8"),
    ],
)
def test_malformed_sns_bodies_are_4xx_json_before_any_work(client, monkeypatch, body):
    edge = Edge()
    monkeypatch.setitem(
        channels.REGISTRY, "ses", SesAdapter(fetch=edge.fetch, confirm=edge.confirm)
    )
    inbox = inbox_of("ses", SNS_SECRETS)
    answer = client.post(f"/webhooks/{inbox}", content=body)
    assert 400 <= answer.status_code < 500, answer.text
    assert_json_error(answer, answer.status_code)
    assert edge.fetched == [] and edge.confirmed == []


@pytest.mark.parametrize(
    "inner",
    [
        DEEP,
        json.dumps({"notificationType": "Received", "content": 5}),
        json.dumps({"notificationType": "Received", "content": "x", "receipt": {"action": 1}}),
        json.dumps(["Received"]),
        "not json",
    ],
    ids=["deep", "content-not-text", "receipt-not-an-object", "a-list", "not-json"],
)
def test_a_signed_notification_whose_ses_message_is_malformed_is_422(inner):
    adapter = SesAdapter(fetch=Edge().fetch, confirm=Edge().confirm)
    request = WebhookRequest(
        "POST", "u", {}, {}, json.dumps(signed("notification.json", Message=inner)).encode()
    )
    adapter.verify(request, SNS_SECRETS, time.time())
    with pytest.raises(PayloadError) as refused:
        adapter.accept(request)
    assert refused.value.status == 422 and refused.value.field == "Message"


def test_a_signed_notification_still_becomes_its_mail_payload():
    adapter = SesAdapter(fetch=Edge().fetch, confirm=Edge().confirm)
    request = WebhookRequest("POST", "u", {}, {}, json.dumps(signed("notification.json")).encode())
    adapter.verify(request, SNS_SECRETS, time.time())
    [payload] = adapter.accept(request).payloads
    assert payload["ses"]["receipt"]["action"]["encoding"] == "BASE64"
    assert payload["ses"]["mail"]["messageId"] == "o3vrnil0e2ic28trm7dfhrc2v0clambda4nbp0g1"


# 7. Refused at the edge, not dead-lettered after a 202 ----------------------------------------


def test_generic_body_naming_another_inbox_is_422_at_the_edge(client, acct):
    other = new_account()["inbox"]
    answer = post_webhook(client, acct["inbox"], {**message("m"), "inbox": other})
    error = assert_json_error(answer, 422)
    assert error["details"] == [{"field": "inbox", "problem": error["message"]}]
    assert deliveries() == 0
    same = post_webhook(client, acct["inbox"], {**message("m"), "inbox": acct["inbox"]})
    assert same.status_code == 202, same.text


@pytest.mark.parametrize(
    "headers",
    [
        "not json",
        "{}",
        json.dumps([["Subject"]]),
        json.dumps([["Subject", 1]]),
        json.dumps([["Subject", ["nested"]]]),
        "[" * 100_000 + "]" * 100_000,
    ],
    ids=["not-json", "an-object", "half-a-pair", "value-not-text", "nested", "deep"],
)
def test_malformed_mailgun_message_headers_are_422_after_the_signature(client, headers):
    inbox = inbox_of("mailgun", {"signing_key": MAILGUN_KEY})
    parts = [p for p in mailgun_parts(token=f"tok-{hash(headers)}") if p[0] != "message-headers"]
    signed_body = multipart([*parts, ("message-headers", headers)])
    answer = client.post(f"/webhooks/{inbox}", content=signed_body, headers={"Content-Type": FORM})
    error = assert_json_error(answer, 422)
    assert error["details"][0]["field"] == "message-headers"
    unsigned = signed_body.replace(b'name="signature"', b'name="unsigned"')
    answer = client.post(f"/webhooks/{inbox}", content=unsigned, headers={"Content-Type": FORM})
    assert assert_json_error(answer, 401)["error"] == "bad_signature"
    assert deliveries() == 0


def test_mailgun_message_headers_over_the_header_line_limit_are_413(monkeypatch):
    monkeypatch.setattr(get_settings(), "max_header_lines", 100)
    many = json.dumps([[f"X-H-{i}", "v"] for i in range(101)])
    parts = [p for p in mailgun_parts() if p[0] != "message-headers"]
    with pytest.raises(channels.base.TooLarge, match="INBOXSYNC_MAX_HEADER_LINES"):
        adapter_for("mailgun").accept(webhook(multipart([*parts, ("message-headers", many)])))


# The tolerance window comes from the settings -------------------------------------------------


def test_lowering_the_tolerance_setting_refuses_a_request_older_than_the_new_window(monkeypatch):
    two_minutes_ago = time.time() - 120
    body = json.dumps(message("m")).encode()
    stamp = int(two_minutes_ago)
    generic = WebhookRequest(
        "POST",
        "u",
        {
            "x-inboxsync-timestamp": str(stamp),
            "x-inboxsync-signature": generic_sign("s", stamp, body),
        },
        {},
        body,
    )
    mailgun = webhook(multipart(mailgun_parts(stamp=two_minutes_ago)))
    adapter_for("generic").verify(generic, {"signing_secret": "s"}, time.time())
    adapter_for("mailgun").verify(mailgun, {"signing_key": MAILGUN_KEY}, time.time())
    monkeypatch.setattr(get_settings(), "webhook_tolerance_seconds", 60)
    with pytest.raises(SignatureError, match="60 s"):
        adapter_for("generic").verify(generic, {"signing_secret": "s"}, time.time())
    with pytest.raises(SignatureError, match="60 s"):
        adapter_for("mailgun").verify(mailgun, {"signing_key": MAILGUN_KEY}, time.time())


def test_a_timestamp_no_float_can_hold_is_401_not_500(client, acct):
    huge = "9" * 400
    body = json.dumps(message("m")).encode()
    headers = {"X-Inboxsync-Timestamp": huge, "X-Inboxsync-Signature": "v1=00"}
    answer = client.post(f"/webhooks/{acct['inbox']}", content=body, headers=headers)
    assert "unix time" in assert_json_error(answer, 401)["message"]
    mailgun = [("timestamp", huge), *mailgun_parts()[1:]]
    with pytest.raises(SignatureError, match="unix time"):
        adapter_for("mailgun").verify(
            webhook(multipart(mailgun)), {"signing_key": MAILGUN_KEY}, time.time()
        )
