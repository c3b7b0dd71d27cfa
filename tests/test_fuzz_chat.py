"""Every chat provider's webhooks fuzzed from the HTTP edge to the store, as
tests/test_fuzz_providers.py does for mail: Slack Events API, Twilio, WhatsApp Cloud API,
Telegram Bot API and the widget (Standard Webhooks).

Hypothesis takes each provider's valid fixtures (tests/fixtures/<provider>/) and changes them
as tests/fuzzhelp.py ``mutated_json`` knows (Twilio's forms field by field here: wrong values,
fields dropped, added or given twice), posts them to the app as ``inboxsync serve`` runs it
(``Ingress`` in front), one to three posts an example, now and then the same post again (a
provider's retry), then processes what was journaled as a worker does, one batch an example
(``pipeline.process_deliveries``, no broker needed).

Promised for every example:

- signed as the provider signs: the edge answers 2xx or a 4xx JSON error (``error`` and
  ``message``), never a 5xx, and never refuses the signature; what it refuses it does not
  journal;
- the worker path never raises; every journaled delivery ends stored, duplicate, ignored (stored
  with no message: a status, an edit waiting for its message) or dead with its reason and its
  dead letter; the edge validates what it journals, so a dead one is the worker's judgement
  (a ``WebhookError``), never a crash; the journal is empty; nothing is half-written;
- unsigned or wrongly signed: 401 (403 for a WhatsApp handshake; Twilio, whose signature
  covers the form's fields, 413 for a form over 256 KB, judged before it is decoded), nothing
  journaled, and the body never reaches the adapter's ``accept`` (nothing parsed before the
  signature is checked): a 20 MB body of ``[`` is refused as fast as any other.

Bounded for CI: fixed examples per provider, derandomized (tests/fuzzhelp.py ``bounded``).
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.app import create_app
from api.webhooks import Ingress
from handlers import channels
from handlers.channels.slack import sign as slack_sign
from handlers.channels.twilio import sign as twilio_sign
from handlers.channels.whatsapp import sign as whatsapp_sign
from handlers.outbound.widget import sign as widget_sign
from settings import get_settings
from store.db import reading
from store.models import DeadLetter, DeliveryOutcome
from tests import fuzzhelp
from tests.fuzzhelp import any_text, tally
from tests.storehelp import new_account

Draw = Callable[[st.SearchStrategy[Any]], Any]
FIXTURES = Path(__file__).parent / "fixtures"
PROVIDERS = ["slack", "twilio", "whatsapp", "telegram", "widget"]
SECRETS: dict[str, dict[str, Any]] = {
    "slack": {"signing_secret": "5c1e9a7b3d2f4e6a8b0c1d2e3f4a5b6c"},
    "twilio": {"auth_token": "tw-auth-token-0123456789abcdef"},
    "whatsapp": {"app_secret": "wa-app-secret-0123456789", "verify_token": "wa-verify-token"},
    "telegram": {"secret_token": "tg-hook_s3cret-7Hq2"},
    "widget": {"signing_secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"},
}
# Not a webhook body: the providers' worked signing examples, WhatsApp's GET handshake.
NOT_BODIES = {"signed_request.json", "handshake.json"}
IDS = itertools.count()
URLENCODED = "application/x-www-form-urlencoded"
# The dead letters a worker writes when it judges a payload (handlers/channels/base.py), as
# opposed to a crash (OverflowError, a driver's DataError, …) buried by the pipeline.
JUDGED = {"WebhookError", "PayloadError"}


def _docs(provider: str) -> list[Any]:
    return [
        json.loads(p.read_text())
        for p in sorted((FIXTURES / provider).glob("*.json"))
        if p.name not in NOT_BODIES
    ]


DOCS = {p: _docs(p) for p in PROVIDERS if p != "twilio"}
FORMS = [
    parse_qsl(p.read_text().strip(), keep_blank_values=True)
    for p in sorted((FIXTURES / "twilio").glob("*.txt"))
]


@dataclass(frozen=True)
class Post:
    """One webhook request, and what its signature should earn at the edge."""

    provider: str
    body: bytes
    headers: dict[str, Any] = field(default_factory=dict)  # str, or bytes as sent
    query: dict[str, str] = field(default_factory=dict)
    method: str = "POST"
    refused: frozenset[int] | None = None  # the statuses a broken signature earns; None: signed


# ---- bodies ------------------------------------------------------------------------------------


def json_bodies(provider: str) -> st.SearchStrategy[bytes]:
    """A fixture as it is, or changed; now and then bytes that are no JSON at all."""
    docs = st.sampled_from(DOCS[provider])
    return st.one_of(
        docs.map(lambda d: json.dumps(d).encode()),
        docs.flatmap(fuzzhelp.mutated_json),
        docs.flatmap(fuzzhelp.mutated_json),
        docs.flatmap(fuzzhelp.mutated_json),
        fuzzhelp.odd_bytes,
    )


FORM_VALUES = st.one_of(
    st.sampled_from(fuzzhelp.ODD_STRINGS),
    st.sampled_from([str(n) for n in fuzzhelp.HUGE_INTS]),
    st.sampled_from(["11", "-1", "1.5", "10", "", "https://api.twilio.com/x", "javascript:x"]),
    st.sampled_from(["x" * 1_601, "é" * 50_000, "\x00" * 10]),
    any_text(max_size=30),
)
FORM_NAMES = st.one_of(
    st.sampled_from(
        ["MessageSid", "MessageStatus", "From", "To", "Body", "NumMedia", "MediaUrl0"]
        + ["MediaContentType0", "Latitude", "Longitude", "ErrorCode", "ProfileName", "WaId"]
    ),
    any_text(max_size=10),
)


@st.composite
def twilio_forms(draw: st.DrawFn) -> bytes:
    """A Twilio post's fields changed one to three times: a value replaced, a field dropped,
    added, or given twice; in UTF-8, or in bytes UTF-8 does not hold (a lone surrogate)."""
    pairs = list(draw(st.sampled_from(FORMS)))
    for _ in range(draw(st.integers(0, 3))):
        how = draw(st.sampled_from(["value", "value", "drop", "add", "twice"]))
        at = draw(st.integers(0, max(0, len(pairs) - 1)))
        if how == "value" and pairs:
            pairs[at] = (pairs[at][0], draw(FORM_VALUES))
        elif how == "drop" and pairs:
            del pairs[at]
        elif how == "add":
            pairs.append((draw(FORM_NAMES), draw(FORM_VALUES)))
        elif pairs:
            pairs.append((pairs[at][0], draw(st.one_of(st.just(pairs[at][1]), FORM_VALUES))))
    return urlencode(pairs, encoding="utf-8", errors="surrogatepass").encode()


# ---- signed as each provider signs -------------------------------------------------------------


def _slack_headers(body: bytes, secret: str, stamp: int) -> dict[str, Any]:
    return {
        "Content-Type": "application/json",
        "X-Slack-Request-Timestamp": str(stamp),
        "X-Slack-Signature": slack_sign(secret, str(stamp), body),
    }


def _twilio_headers(inbox: int, body: bytes, token: str) -> dict[str, Any]:
    """Signed as Twilio signs; a form that is not percent-encoded UTF-8 has no parameters to
    sign (its signature is then of the URL alone)."""
    try:
        text = body.decode("ascii")
        params = parse_qsl(text, keep_blank_values=True, encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        params = []
    signature = twilio_sign(token, f"http://testserver/webhooks/{inbox}", params)
    return {"Content-Type": URLENCODED, "X-Twilio-Signature": signature}


def _readable(form: bytes) -> bool:
    try:
        parse_qsl(form.decode("ascii"), encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        return False
    return True


def _whatsapp_headers(body: bytes, secret: str) -> dict[str, Any]:
    return {"Content-Type": "application/json", "X-Hub-Signature-256": whatsapp_sign(secret, body)}


def _telegram_headers(token: str) -> dict[str, Any]:
    return {"Content-Type": "application/json", "X-Telegram-Bot-Api-Secret-Token": token}


def _widget_headers(body: bytes, secret: str, webhook_id: str, stamp: int) -> dict[str, Any]:
    try:
        signature = widget_sign(secret, webhook_id, stamp, body)
    except ValueError:  # a body that is not UTF-8: no sender can sign it
        signature = "v1,bm90IFVURi04"
    return {
        "Content-Type": "application/json",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(stamp),
        "webhook-signature": signature,
    }


def signed(draw: Draw, provider: str, inbox: int) -> Post:
    """A hostile body with a good signature."""
    if provider == "twilio":
        body = draw(twilio_forms())
        headers = _twilio_headers(inbox, body, SECRETS["twilio"]["auth_token"])
        # A form that is not UTF-8 has no signature anyone can check: refused as unsigned (or
        # as too large, which is judged first).
        refused = None if _readable(body) else frozenset({401, 413})
        return Post(provider, body, headers, refused=refused)
    body = draw(json_bodies(provider))
    now = int(time.time())
    if provider == "slack":
        headers = _slack_headers(body, SECRETS["slack"]["signing_secret"], now)
    elif provider == "whatsapp":
        headers = _whatsapp_headers(body, SECRETS["whatsapp"]["app_secret"])
    elif provider == "telegram":
        headers = _telegram_headers(SECRETS["telegram"]["secret_token"])
    else:
        webhook_id = f"evt_fuzz_{next(IDS)}"
        headers = _widget_headers(body, SECRETS["widget"]["signing_secret"], webhook_id, now)
        try:
            body.decode("utf-8")
        except UnicodeDecodeError:  # signed as text by the standard: refused as unsigned
            return Post(provider, body, headers, refused=frozenset({401}))
    return Post(provider, body, headers)


BROKEN = ["missing", "wrong secret", "another body", "garbage header", "stale"]


def unsigned(draw: Draw, provider: str, inbox: int) -> Post:
    """A hostile body with no signature, a wrong one, or one of something else."""
    if provider == "twilio":
        body = draw(st.one_of(twilio_forms(), fuzzhelp.odd_bytes))
    else:
        body = draw(st.one_of(json_bodies(provider), fuzzhelp.odd_bytes))
    how = draw(st.sampled_from(BROKEN))
    secret = "wrong-" + draw(st.sampled_from(["x", ""]))
    signed_body = body
    if how == "another body":  # Twilio's form loses trailing whitespace: another field
        signed_body = body + (b"&Extra=1" if provider == "twilio" else b" ")
    now = int(time.time())
    stamp = now - 3_600 if how == "stale" else now
    if provider == "slack":
        key = secret if how == "wrong secret" else SECRETS["slack"]["signing_secret"]
        headers = _slack_headers(signed_body, key, stamp)
    elif provider == "twilio":
        token = secret if how in ("wrong secret", "stale") else SECRETS["twilio"]["auth_token"]
        headers = _twilio_headers(inbox, signed_body, token)
    elif provider == "whatsapp":
        key = secret if how in ("wrong secret", "stale") else SECRETS["whatsapp"]["app_secret"]
        headers = _whatsapp_headers(signed_body, key)
    elif provider == "telegram":
        headers = _telegram_headers(SECRETS["telegram"]["secret_token"] + "x")
    else:
        key = (
            "whsec_" + "d3Jvbmc=" if how == "wrong secret" else SECRETS["widget"]["signing_secret"]
        )
        headers = _widget_headers(signed_body, key, f"evt_fuzz_{next(IDS)}", stamp)
        if headers["webhook-signature"] == "v1,bm90IFVURi04" and how == "another body":
            headers["webhook-signature"] = "v1,b3RoZXI="
    if how == "another body" and provider == "telegram":
        headers = _telegram_headers("")
    if how == "missing":
        headers = {"Content-Type": headers["Content-Type"]}
    elif how == "garbage header":
        value = draw(st.one_of(st.sampled_from(fuzzhelp.ODD_STRINGS), any_text(max_size=40)))
        name = draw(st.sampled_from(sorted(h for h in headers if h != "Content-Type")))
        # As bytes on the wire: UTF-8 (the server reads latin-1), no line breaks.
        raw = value.encode("utf-8", "surrogatepass").replace(b"\r", b"").replace(b"\n", b"")
        headers[name] = raw
        if provider == "widget" and name == "webhook-id" and not raw.strip():
            headers[name] = b"evt\x7f"
    return Post(provider, body, headers, refused=frozenset({401}))


def handshakes(draw: Draw, provider: str, inbox: int) -> Post:
    """WhatsApp's GET subscription: a wrong verify token is a 403, a good one any challenge."""
    token = SECRETS["whatsapp"]["verify_token"]
    query = {
        "hub.mode": draw(st.sampled_from(["subscribe", "subscribe", "unsubscribe", ""])),
        "hub.verify_token": draw(st.sampled_from([token, token, token + "x", ""])),
        "hub.challenge": draw(
            st.one_of(st.sampled_from(fuzzhelp.ODD_STRINGS), any_text(max_size=600))
        ),
    }
    good = query["hub.mode"] == "subscribe" and query["hub.verify_token"] == token
    # The app refuses a NUL in any query parameter before a route reads it (api/errors.py).
    refused = frozenset({403, 422} if "\x00" in query["hub.challenge"] else {403})
    return Post(provider, b"", query=query, method="GET", refused=None if good else refused)


# ---- the path: edge, journal, worker -----------------------------------------------------------


@dataclass(frozen=True)
class Edge:
    client: TestClient
    account: int
    statuses: list[int] = field(default_factory=list)  # each answer's, in order

    def inbox(self, provider: str) -> int:
        """A new chat inbox of ``provider``'s: each example its own."""
        return fuzzhelp.new_inbox(self.account, provider, "chat", SECRETS[provider])

    def post(self, inbox: int, post: Post) -> list[int]:
        """Post at the edge and check its answer; the deliveries it journaled."""
        before = fuzzhelp.journal_ids()
        # The query as bytes on the wire: a lone surrogate is sent as a client would encode it.
        query = urlencode(post.query, encoding="utf-8", errors="surrogatepass")
        answer = self.client.request(
            post.method,
            f"/webhooks/{inbox}" + (f"?{query}" if query else ""),
            content=post.body if post.method == "POST" else None,
            headers=post.headers,
        )
        status = answer.status_code
        self.statuses.append(status)
        tally(f"{post.provider} edge: {status} {answer.text[:70] if status >= 400 else ''}")
        problem = fuzzhelp.error_body_problem(
            status, answer.headers.get("content-type"), answer.content
        )
        assert problem is None, problem
        journaled = sorted(fuzzhelp.journal_ids() - before)
        if post.refused is not None:
            assert status in post.refused, (status, answer.text)
        else:
            assert status not in (401, 403), answer.text
        if status >= 300:
            assert not journaled, "refused, and yet journaled"
            return []
        if answer.headers.get("content-type", "").startswith("application/json"):
            out = answer.json()
            if "deliveries" in out:
                assert sorted(out["deliveries"]) == journaled, (out, journaled)
        return journaled

    def deliver(self, inbox: int, posts: list[Post]) -> None:
        """Post each to ``inbox`` at the edge, then process what was journaled as one worker
        batch."""
        sent: dict[int, Post] = {}
        for post in posts:
            sent.update(dict.fromkeys(self.post(inbox, post), post))
        fuzzhelp.process_and_check(sent, _check_dead, _check_stored)


def _check_dead(session: Session, outcome: DeliveryOutcome, journaled_as: tuple[int, Any]) -> None:
    """The edge validated the payload: the worker may judge it (say, a Slack event whose kind
    needs a field), never crash on it."""
    kinds = set(
        session.scalars(
            select(DeadLetter.error_type).where(DeadLetter.inbox_id == outcome.inbox_id)
        )
    )
    tally(f"dead letter: {sorted(kinds)}")
    assert kinds <= JUDGED, f"the worker crashed on what the edge accepted: {outcome.error}"


def _check_stored(session: Session, outcome: DeliveryOutcome, post: Post) -> None:
    tally(f"{post.provider} worker: {outcome.state} ({len(outcome.messages)} messages)")


@pytest.fixture
def edge(db: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[Edge]:
    """An account to make inboxes in, and the app in front of them."""
    # The periodic round would publish this test's journal rows again, and on PostgreSQL lock
    # them while it does (a batch then skips them as another worker's): none get that old.
    monkeypatch.setattr(get_settings(), "sweep_after_s", 3_600)
    with TestClient(Ingress(create_app()), raise_server_exceptions=False) as client:
        yield Edge(client, new_account()["account"])


@pytest.fixture
def unparsed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The providers whose ``accept`` (the body's parsing) was called: none may be, for a
    request its signature refuses."""
    called: list[str] = []
    for name in PROVIDERS:
        adapter = channels.REGISTRY[name]

        def spy(request: Any, _name: str = name, _accept: Any = adapter.accept) -> Any:
            called.append(_name)
            return _accept(request)

        monkeypatch.setattr(adapter, "accept", spy)
    return called


def fuzz(
    edge: Edge, data: st.DataObject, build: Callable[[Draw, str, int], Post], provider: str
) -> None:
    """One to three posts to a new inbox, now and then one of them again (a retry), then their
    deliveries as a worker batch."""
    fuzzhelp.clear_journal()
    inbox = edge.inbox(provider)
    posts = [build(data.draw, provider, inbox) for _ in range(data.draw(st.integers(1, 3)))]
    if data.draw(st.integers(0, 3)) == 0:
        posts.append(data.draw(st.sampled_from(posts), label="retried"))
    edge.deliver(inbox, posts)


# ---- fuzzing -----------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
@fuzzhelp.bounded(max_examples=20)
@given(data=st.data())
def test_signed_hostile_payloads_are_stored_judged_or_refused_never_a_5xx(
    edge: Edge, provider: str, data: st.DataObject
) -> None:
    fuzz(edge, data, signed, provider)


@fuzzhelp.bounded(max_examples=30)  # every provider's: refusals are cheap
@given(data=st.data())
def test_unsigned_or_wrongly_signed_garbage_is_refused_before_it_is_parsed(
    edge: Edge, unparsed: list[str], data: st.DataObject
) -> None:
    fuzz(edge, data, unsigned, data.draw(st.sampled_from(PROVIDERS), label="provider"))
    assert unparsed == [], "parsed before its signature was checked"


@fuzzhelp.bounded(max_examples=8)
@given(data=st.data())
def test_whatsapp_handshakes_answer_the_challenge_or_refuse_never_a_5xx(
    edge: Edge, data: st.DataObject
) -> None:
    fuzz(edge, data, handshakes, "whatsapp")


# A body just under the ingress's limit that a recursive parser cannot read and a lenient one
# takes seconds over: refused on its signature alone, in about the time its HMAC takes.
HUGE = b"[" * (20 * 1024 * 1024)


def test_a_huge_unsigned_body_is_refused_fast_and_unparsed(edge: Edge, unparsed: list[str]) -> None:
    for provider, how in itertools.product(PROVIDERS, ("missing", "wrong")):
        inbox = edge.inbox(provider)
        kind = URLENCODED if provider == "twilio" else "application/json"
        headers = {"Content-Type": kind}
        if how == "wrong":
            headers |= {
                "slack": _slack_headers(
                    b"{}", SECRETS["slack"]["signing_secret"], int(time.time())
                ),
                "twilio": {"X-Twilio-Signature": "bm90IHNpZ25lZA=="},
                "whatsapp": _whatsapp_headers(b"{}", SECRETS["whatsapp"]["app_secret"]),
                "telegram": _telegram_headers("wrong"),
                "widget": _widget_headers(
                    b"{}", SECRETS["widget"]["signing_secret"], "evt_huge", int(time.time())
                ),
            }[provider]
            headers["Content-Type"] = kind
        started = time.monotonic()
        answer = edge.client.post(f"/webhooks/{inbox}", content=HUGE, headers=headers)
        took = time.monotonic() - started
        # Twilio signs the form's fields: one this large is refused before it is read (413).
        assert answer.status_code in ({401, 413} if provider == "twilio" else {401}), answer.text
        assert (
            fuzzhelp.error_body_problem(
                answer.status_code, answer.headers["content-type"], answer.content
            )
            is None
        )
        # Generous for a shared 2-core machine: reading and hashing 20 MB takes well under 1 s;
        # parsing it (or failing to, 10 million levels deep) would not.
        assert took < 10, f"{took:.1f} s to refuse an unsigned body"
    assert unparsed == [] and not fuzzhelp.journal_ids()


# ---- what the fuzzing found --------------------------------------------------------------------
# Each failure found, as the smallest request that shows it.


def _fixture(provider: str, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / provider / name).read_text())
    return data


def signed_json(provider: str, doc: dict[str, Any]) -> Post:
    body = json.dumps(doc).encode()
    if provider == "whatsapp":
        return Post(provider, body, _whatsapp_headers(body, SECRETS["whatsapp"]["app_secret"]))
    webhook_id, now = f"evt_pin_{next(IDS)}", int(time.time())
    return Post(
        provider, body, _widget_headers(body, SECRETS["widget"]["signing_secret"], webhook_id, now)
    )


def outcome_of(edge: Edge, post: Post) -> tuple[int, str | None]:
    """``post`` to a new inbox of its provider and its deliveries through the worker batch (every
    promise of the fuzzing checked): the edge's status, and the one delivery's final state."""
    fuzzhelp.clear_journal()
    inbox = edge.inbox(post.provider)
    journaled = edge.post(inbox, post)
    fuzzhelp.process_and_check(dict.fromkeys(journaled, post), _check_dead, _check_stored)
    with reading() as session:
        states = [
            o.state
            for o in session.scalars(
                select(DeliveryOutcome).where(DeliveryOutcome.inbox_id == inbox)
            )
        ]
    return edge.statuses[-1], (states[0] if states else None)


def test_a_whatsapp_error_code_past_64_bits_is_a_422_not_a_500(edge: Edge) -> None:
    """``statuses[].errors[].code`` was an unbounded int: 2**64 passed the schema and the
    journal's JSON encoder (64-bit integers only) refused the payload: a 500 at the edge."""
    doc = _fixture("whatsapp", "status_failed.json")
    doc["entry"][0]["changes"][0]["value"]["statuses"][0]["errors"][0]["code"] = 2**64
    assert outcome_of(edge, signed_json("whatsapp", doc)) == (422, None)


def test_a_whatsapp_media_type_with_nul_is_stored_on_every_store(edge: Edge) -> None:
    """``mime_type`` kept its NUL: on PostgreSQL (text and jsonb hold none) the worker failed on
    the message (a DataError dead letter for a message the edge had accepted)."""
    doc = _fixture("whatsapp", "media.json")
    message = doc["entry"][0]["changes"][0]["value"]["messages"][0]
    [kind] = [k for k in ("image", "video", "audio", "document", "sticker") if k in message]
    message[kind]["mime_type"] = "image/jpeg\x00"
    assert outcome_of(edge, signed_json("whatsapp", doc)) == (200, "stored")


def test_a_widget_attachment_with_nul_is_a_422_not_a_dead_letter(edge: Edge) -> None:
    """An attachment's ``url``, ``content_type`` or ``filename`` with a NUL was accepted; on
    PostgreSQL the worker then failed on the message (a DataError dead letter)."""
    for name in ("url", "content_type", "filename"):
        doc = _fixture("widget", "message_attachments.json")
        doc["data"]["attachments"][0][name] = "https://x/\x00" if name == "url" else "a\x00"
        assert outcome_of(edge, signed_json("widget", doc)) == (422, None), name


def test_a_widget_reply_status_of_a_client_id_with_nul_is_a_422(edge: Edge) -> None:
    """``reply.status`` of ``client_id`` "c\\x00" was accepted; on PostgreSQL the worker failed
    looking the reply up (DataError dead letter)."""
    doc = _fixture("widget", "reply_delivered.json")
    doc["data"]["client_id"] = "c\x00"
    assert outcome_of(edge, signed_json("widget", doc)) == (422, None)


WIDGET_TIMES = {
    "message.json": "sent_at",
    "message_edited.json": "edited_at",
    "message_deleted.json": "deleted_at",
    "reply_delivered.json": "at",
}


def test_a_widget_time_outside_years_1_to_9999_in_utc_is_a_422(edge: Edge) -> None:
    """A valid ISO 8601 time whose UTC is before year 1 or after 9999 was accepted: the worker
    crashed converting it (OverflowError dead letter) or, on PostgreSQL, stored a message at a
    time B.C. that no read of it could load again (psycopg DataError). Found as a reply.status
    at "9999-12-31T23:59:59-23:59"."""
    for (name, field_), time_ in itertools.product(
        WIDGET_TIMES.items(), ["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+01:00"]
    ):
        doc = _fixture("widget", name)
        doc["data"][field_] = time_
        assert outcome_of(edge, signed_json("widget", doc)) == (422, None), (name, time_)
