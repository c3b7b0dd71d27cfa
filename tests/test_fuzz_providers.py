"""Every provider's webhooks fuzzed from the HTTP edge to the store (issue 14, "Keep it closed").

For each provider and each form it posts in (generic JSON; Postmark JSON, split or with the raw
mail; Mailgun's parsed and MIME forms; SendGrid's parsed and raw forms; SES through SNS; raw
RFC 5322), Hypothesis draws payloads: plausible ones with anything in their fields, and mails
mangled every way tests/fuzzhelp.py knows. Each is posted, signed as the provider signs or with a
broken signature, to the app as ``inboxsync serve`` runs it (``Ingress`` in front); what the edge
accepts is then processed as a worker does, one batch per example
(``pipeline.process_deliveries``, no broker needed).

Promised for every example:

- the edge answers 2xx or a 4xx JSON error (``error`` and ``message``), never a 5xx; a broken
  signature is a 401 (a topic the inbox does not subscribe to, a 403) and journals nothing; a
  good signature is never refused;
- the worker path never raises: a payload it cannot read becomes a dead letter with the reason,
  and its delivery's outcome is ``dead``; and only a mail with nothing usable in it (no headers,
  no bytes) is one, as the README promises: a mail is parsed leniently;
- nothing is half-written: every journaled delivery ends stored (its messages, each in an
  existing conversation, and its outcome) or dead (its dead letter and its outcome); the journal
  is empty; no message lacks its conversation; no thread id is left without one.

SES's signing certificate is made here and fetched through an injected fetcher: the network
edge, as in tests/test_ses_inbound.py. Bounded for CI: fixed examples per form, derandomized.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.orm import Session

from api.app import create_app
from api.webhooks import Ingress
from handlers import channels
from handlers.channels.generic import sign as generic_sign
from handlers.channels.mailgun import sign as mailgun_sign
from handlers.channels.ses import SesAdapter, string_to_sign
from settings import get_settings
from store.models import (
    DeliveryOutcome,
    Message,
)
from tests import fuzzhelp
from tests.fuzzhelp import (
    addresses,
    any_text,
    dates,
    header_values,
    mostly,
    msg_ids,
    raw_mails,
)
from tests.storehelp import new_account
from tests.test_ses_inbound import CERT_URL, KEY, TOPIC
from tests.test_ses_inbound import Edge as SnsNetwork

Draw = Callable[[st.SearchStrategy[Any]], Any]

SECRETS: dict[str, dict[str, Any]] = {
    "generic": {"signing_secret": "s3cret"},
    "postmark": {"basic_username": "postmark", "basic_password": "pm-s3cret"},
    "mailgun": {"signing_key": "key-mg-s3cret"},
    "sendgrid": {"url_secret": "sg-s3cret"},
    "ses": {"topic_arns": [TOPIC]},
    "rfc822": {"bearer_secret": "raw-s3cret"},
}
BOUNDARY = "----fuzzForm7MA4YWxkTrZu0gW"
# The one reason a delivery may be dead: its mail has nothing a parser can use (no headers, no
# bytes). Parsing is lenient about everything else (handlers/email/parse.py).
UNUSABLE = "unparseable mail:"
FORM = f"multipart/form-data; boundary={BOUNDARY}"
# Mailgun remembers each token for the signature window: every post gets its own.
TOKENS = itertools.count()
# Most posts are signed as the provider signs; about one in five is not.
AUTHENTIC = st.integers(0, 4).map(bool)
# Offsets as senders' clocks write them: whole minutes, within a day.
OFFSETS = st.integers(-1439, 1439).map(lambda m: timezone(timedelta(minutes=m)))


Part = tuple[str, bytes, dict[str, str]]  # a form part: its name, its bytes, its other headers


@dataclass(frozen=True)
class Post:
    """One webhook request, and what its signature should earn at the edge."""

    provider: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    query: dict[str, str] = field(default_factory=dict)
    refused: int | None = None  # 401/403 for a broken signature; None if authentic
    # The bytes of each attachment it carries, in order, where the provider sends them apart.
    attachments: tuple[bytes, ...] | None = None


# ---- the providers' forms ----------------------------------------------------------------------


def generic(draw: Draw, inbox: int) -> Post:
    payload = draw(
        st.fixed_dictionaries(
            {
                "external_id": any_text(min_size=1, max_size=40),
                "sender": mostly(any_text(min_size=1, max_size=60), addresses),
                "text": any_text(max_size=300),
                "sent_at": mostly(st.datetimes(timezones=OFFSETS).map(datetime.isoformat), dates),
            },
            optional={
                "thread_key": st.one_of(st.none(), any_text(max_size=40)),
                "inbox": mostly(st.just(inbox), st.one_of(st.none(), st.integers(-1, 2**64))),
            },
        )
    )
    body = draw(mostly(st.just(json.dumps(payload).encode()), fuzzhelp.odd_bytes))
    stamp = int(time.time())
    secret, refused = "s3cret", None
    if not draw(AUTHENTIC):
        refused = 401
        broken = draw(st.sampled_from(["secret", "stale", "missing"]))
        secret = "wrong" if broken == "secret" else secret
        stamp = stamp - 3_600 if broken == "stale" else stamp
        if broken == "missing":
            return Post("generic", body, {"Content-Type": "application/json"}, refused=401)
    headers = {
        "Content-Type": "application/json",
        "X-Inboxsync-Timestamp": str(stamp),
        "X-Inboxsync-Signature": generic_sign(secret, stamp, body),
    }
    return Post("generic", body, headers, refused=refused)


def _basic(draw: Draw, provider: str) -> tuple[dict[str, str], int | None]:
    user, password = SECRETS[provider]["basic_username"], SECRETS[provider]["basic_password"]
    if draw(AUTHENTIC):
        refused = None
    else:
        refused, password = 401, draw(st.sampled_from(["", "wrong", password + "x"]))
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}", "Content-Type": "application/json"}, refused


def _postmark_fields(draw: Draw) -> dict[str, Any]:
    address = st.fixed_dictionaries({"Email": addresses, "Name": header_values})
    attachment = st.fixed_dictionaries(
        {
            "Name": any_text(max_size=30),
            "Content": mostly(
                st.binary(max_size=200).map(lambda b: base64.b64encode(b).decode()),
                any_text(max_size=40),  # not base64
            ),
            "ContentType": st.sampled_from(["image/png", "text/plain", "message/rfc822", ""]),
        },
        optional={
            "ContentLength": st.integers(-1, 2**40),
            "ContentID": st.one_of(st.just(""), msg_ids),
        },
    )
    header = st.fixed_dictionaries(
        {
            "Name": st.one_of(
                st.sampled_from(["Message-ID", "In-Reply-To", "References", "Auto-Submitted"]),
                any_text(max_size=20),
            ),
            "Value": st.one_of(msg_ids, header_values),
        }
    )
    return {
        "MessageID": draw(any_text(min_size=1, max_size=40)),
        "FromFull": draw(address),
        "ToFull": draw(st.lists(address, max_size=3)),
        "CcFull": draw(st.lists(address, max_size=2)),
        "ReplyTo": draw(addresses),
        "Subject": draw(header_values),
        "Date": draw(dates),
        "TextBody": draw(any_text(max_size=300)),
        "HtmlBody": draw(st.one_of(any_text(max_size=200), st.just("<p>hi<script>x()</script>"))),
        "Headers": draw(st.lists(header, max_size=6)),
        "Attachments": draw(st.lists(attachment, max_size=3)),
    }


def postmark(draw: Draw, inbox: int) -> Post:
    fields = _postmark_fields(draw)
    # A field of the wrong JSON type now and then: a 422 at the edge.
    if draw(st.integers(0, 9)) == 0:
        fields[draw(st.sampled_from(sorted(fields)))] = draw(
            st.one_of(st.integers(), st.none(), st.just({"a": [1]}))
        )
    headers, refused = _basic(draw, "postmark")
    body = json.dumps(fields).encode()
    return Post("postmark", body, headers, refused=refused, attachments=_postmark_files(fields))


def _postmark_files(fields: dict[str, Any]) -> tuple[bytes, ...] | None:
    """The bytes of the attachments, if each one's Content is base64 (as Postmark sends it)."""
    try:
        return tuple(base64.b64decode(a["Content"], validate=True) for a in fields["Attachments"])
    except (ValueError, TypeError, KeyError):
        return None


def postmark_raw(draw: Draw, inbox: int, mails: st.SearchStrategy[bytes] = raw_mails) -> Post:
    raw = draw(mails)
    fields = {
        "MessageID": draw(any_text(min_size=1, max_size=40)),
        "FromFull": {"Email": "maria@example.com"},
        "RawEmail": raw.decode(draw(st.sampled_from(["utf-8", "latin-1"])), "replace"),
    }
    headers, refused = _basic(draw, "postmark")
    return Post("postmark", json.dumps(fields).encode(), headers, refused=refused)


def _text_part(draw: Draw, name: str, text: str) -> tuple[str, bytes, dict[str, str]]:
    """A text field, now and then in a charset its part declares, now and then in bytes that
    charset does not hold."""
    shape = draw(st.sampled_from(["utf-8", "declared", "lying"]))
    if shape == "utf-8":
        return (name, text.encode("utf-8"), {})
    if shape == "lying":
        lying = draw(fuzzhelp.tricky_charsets)
        return (name, draw(fuzzhelp.odd_bytes), {"Content-Type": f"text/plain; charset={lying}"})
    charset = draw(fuzzhelp.charsets)
    return (
        name,
        fuzzhelp.encoded(text, charset),
        {"Content-Type": f"text/plain; charset={charset}"},
    )


def _mailgun_signature(draw: Draw) -> tuple[list[tuple[str, bytes, dict[str, str]]], int | None]:
    stamp, token = str(int(time.time())), f"fuzz-{next(TOKENS)}"
    key, refused = SECRETS["mailgun"]["signing_key"], None
    extra: list[tuple[str, bytes, dict[str, str]]] = []
    if not draw(AUTHENTIC):
        refused = 401
        broken = draw(st.sampled_from(["key", "stale", "twice", "garbage"]))
        key = "wrong" if broken == "key" else key
        stamp = str(int(stamp) - 3_600) if broken == "stale" else stamp
        if broken == "twice":
            extra = [("token", b"fuzz-other", {})]
        if broken == "garbage":
            stamp = draw(any_text(max_size=10))
    signature = mailgun_sign(key, stamp, token)
    parts = [
        ("timestamp", stamp.encode(), {}),
        ("token", token.encode(), {}),
        ("signature", signature.encode(), {}),
        *extra,
    ]
    return parts, refused


def mailgun(draw: Draw, inbox: int) -> Post:
    signed, refused = _mailgun_signature(draw)
    pairs = draw(st.lists(st.tuples(header_values, st.one_of(msg_ids, header_values)), max_size=8))
    message_headers = draw(
        mostly(
            st.just(json.dumps([["Message-Id", draw(msg_ids)], *pairs])),
            any_text(max_size=40),  # not the JSON Mailgun sends: a 422 at the edge
        )
    )
    texts = {
        "from": draw(addresses),
        "subject": draw(header_values),
        "body-plain": draw(any_text(max_size=300)),
        "stripped-text": draw(any_text(max_size=100)),
        "body-html": draw(any_text(max_size=200)),
    }
    parts = [*signed, ("message-headers", message_headers.encode(), {})]
    parts += [_text_part(draw, name, text) for name, text in texts.items()]
    files = draw(st.lists(fuzzhelp.form_files(), max_size=2))
    body = fuzzhelp.form(parts + files, BOUNDARY)
    attached = tuple(f[1] for f in files)
    return Post("mailgun", body, {"Content-Type": FORM}, refused=refused, attachments=attached)


def mailgun_mime(draw: Draw, inbox: int, mails: st.SearchStrategy[bytes] = raw_mails) -> Post:
    signed, refused = _mailgun_signature(draw)
    parts = [*signed, ("recipient", b"support@acme.test", {}), ("body-mime", draw(mails), {})]
    return Post("mailgun", fuzzhelp.form(parts, BOUNDARY), {"Content-Type": FORM}, refused=refused)


def _sendgrid_secret(draw: Draw) -> tuple[dict[str, str], int | None]:
    if draw(AUTHENTIC):
        return {"secret": SECRETS["sendgrid"]["url_secret"]}, None
    return draw(st.sampled_from([{}, {"secret": ""}, {"secret": "sg-s3cre"}])), 401


def sendgrid(draw: Draw, inbox: int) -> Post:
    query, refused = _sendgrid_secret(draw)
    head = [
        ("From", draw(addresses)),
        ("Message-ID", draw(msg_ids)),
        ("Subject", draw(header_values)),
    ]
    head += draw(
        st.lists(st.tuples(st.sampled_from(["In-Reply-To", "X-Odd"]), msg_ids), max_size=3)
    )
    texts = {"text": draw(any_text(max_size=300)), "html": draw(any_text(max_size=200))}
    charsets = {name: draw(fuzzhelp.charsets) for name in texts if draw(st.booleans())}
    parts: list[Part] = [
        ("headers", fuzzhelp.header_block(head), {}),
        ("from", draw(addresses).encode(), {}),
        ("to", b"support@acme.test", {}),
    ]
    for name, text in texts.items():
        if draw(st.integers(0, 3)) == 0:  # bytes that are not in the charset declared for them
            charsets[name] = draw(fuzzhelp.tricky_charsets)
            parts.append((name, draw(fuzzhelp.odd_bytes), {}))
        else:
            parts.append((name, fuzzhelp.encoded(text, charsets.get(name, "utf-8")), {}))
    parts.append(("charsets", json.dumps(charsets).encode(), {}))
    files = draw(st.lists(fuzzhelp.form_files(), max_size=2))
    body = fuzzhelp.form(parts + files, BOUNDARY)
    attached = tuple(f[1] for f in files)
    return Post("sendgrid", body, {"Content-Type": FORM}, query, refused, attached)


def sendgrid_raw(draw: Draw, inbox: int, mails: st.SearchStrategy[bytes] = raw_mails) -> Post:
    query, refused = _sendgrid_secret(draw)
    parts: list[Part] = [
        ("email", draw(mails), {}),
        ("to", b"support@acme.test", {}),
        ("charsets", b"{}", {}),
    ]
    body = fuzzhelp.form(parts, BOUNDARY)
    return Post("sendgrid", body, {"Content-Type": FORM}, query, refused=refused)


def ses(draw: Draw, inbox: int, mails: st.SearchStrategy[bytes] = raw_mails) -> Post:
    raw = draw(mails)
    encoding = draw(st.sampled_from(["BASE64", "UTF8"]))
    content = (
        base64.b64encode(raw).decode() if encoding == "BASE64" else raw.decode("utf-8", "replace")
    )
    ses_message = {
        "notificationType": draw(st.sampled_from(["Received", "Received", "Received", "Bounce"])),
        "mail": {"messageId": draw(any_text(min_size=1, max_size=40))},
        "receipt": {"action": {"type": "SNS", "topicArn": TOPIC, "encoding": encoding}},
        "content": content,
    }
    message = {
        "Type": "Notification",
        "MessageId": f"fuzz-{next(TOKENS)}",
        "TopicArn": TOPIC,
        "Subject": "Amazon SES Email Receipt Notification",
        "Message": json.dumps(ses_message),
        "Timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "SignatureVersion": draw(st.sampled_from(["1", "2"])),
        "SigningCertURL": CERT_URL,
    }
    refused = None if draw(AUTHENTIC) else 401
    if refused and draw(st.booleans()):
        message["TopicArn"] = "arn:aws:sns:us-east-1:123456789012:another"  # signed, not ours
        refused = 403
    algorithm = hashes.SHA1() if message["SignatureVersion"] == "1" else hashes.SHA256()
    signature = KEY.sign(string_to_sign(message), padding.PKCS1v15(), algorithm)
    message["Signature"] = base64.b64encode(signature).decode()
    if refused == 401:
        broken = draw(st.sampled_from(["tampered", "signature", "stale", "certificate"]))
        if broken == "tampered":
            message["Message"] = message["Message"].replace("Received", "Receivee", 1) + " "
        elif broken == "signature":
            message["Signature"] = base64.b64encode(signature[::-1]).decode()
        elif broken == "stale":
            message["Timestamp"] = "2020-01-01T00:00:00.000Z"
        else:
            message["SigningCertURL"] = "https://sns.example.com/cert.pem"
    body = json.dumps(message).encode()
    return Post("ses", body, {"Content-Type": "text/plain; charset=UTF-8"}, refused=refused)


def rfc822(draw: Draw, inbox: int, mails: st.SearchStrategy[bytes] = raw_mails) -> Post:
    secret, refused = SECRETS["rfc822"]["bearer_secret"], None
    scheme = "Bearer"
    if not draw(AUTHENTIC):
        refused = 401
        scheme, secret = draw(st.sampled_from([("Bearer", "raw-s3cre"), ("Basic", secret)]))
    kind = draw(
        st.sampled_from(["message/rfc822", "message/rfc822", "text/plain", "application/json"])
    )
    headers = {"Authorization": f"{scheme} {secret}", "Content-Type": kind}
    return Post("rfc822", draw(mails), headers, refused=refused)


FORMS: dict[str, Callable[[Draw, int], Post]] = {
    "generic": generic,
    "postmark": postmark,
    "postmark-raw": postmark_raw,
    "mailgun-parsed": mailgun,
    "mailgun-mime": mailgun_mime,
    "sendgrid-parsed": sendgrid,
    "sendgrid-raw": sendgrid_raw,
    "ses": ses,
    "rfc822": rfc822,
}
# The forms that carry a whole mail, and so can carry a malformed one.
Carrier = Callable[[Draw, int, st.SearchStrategy[bytes]], Post]
CARRIERS: dict[str, Carrier] = {
    "postmark-raw": postmark_raw,
    "mailgun-mime": mailgun_mime,
    "sendgrid-raw": sendgrid_raw,
    "ses": ses,
    "rfc822": rfc822,
}


# ---- the path: edge, journal, worker -----------------------------------------------------------


@dataclass(frozen=True)
class Edge:
    client: TestClient
    account: int

    def inbox(self, provider: str) -> int:
        """A new inbox of ``provider``'s: each example its own, so that a mail an example stored
        is not a duplicate when another (or the same, replayed to report it) sends it again."""
        return fuzzhelp.new_inbox(self.account, provider, "email", SECRETS[provider])

    def post(self, inbox: int, post: Post) -> list[int]:
        """Post at the edge and check its answer; the deliveries it journaled."""
        before = journaled()
        answer = self.client.post(
            f"/webhooks/{inbox}",
            content=post.body,
            headers=post.headers,
            params=post.query,
        )
        tally(f"edge: {answer.status_code} {answer.text[:80] if answer.status_code >= 400 else ''}")
        problem = fuzzhelp.error_body_problem(
            answer.status_code, answer.headers.get("content-type"), answer.content
        )
        assert problem is None, problem
        if post.refused is not None:
            assert answer.status_code == post.refused, answer.text
        else:
            assert answer.status_code not in (401, 403), answer.text
        if answer.status_code != 202:
            assert journaled() == before, "refused, and yet journaled"
            return []
        out = answer.json()
        assert out["accepted"] == len(out["deliveries"]) and not out["replay"], out
        return [int(i) for i in out["deliveries"]]

    def deliver(self, inbox: int, *posts: Post) -> None:
        """Post each to ``inbox`` at the edge, then process what was journaled as one worker
        batch."""
        sent: dict[int, Post] = {}
        for post in posts:
            sent.update(dict.fromkeys(self.post(inbox, post), post))
        process_and_check(sent)

    def send(self, *posts: Post) -> None:
        """Post each to a new inbox of its provider, then process them as one worker batch."""
        sent: dict[int, Post] = {}
        for post in posts:
            sent.update(dict.fromkeys(self.post(self.inbox(post.provider), post), post))
        process_and_check(sent)


@pytest.fixture
def edge(db: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[Edge]:
    """An account to make inboxes in, and the app in front of them."""
    network = SnsNetwork()
    monkeypatch.setitem(
        channels.REGISTRY, "ses", SesAdapter(fetch=network.fetch, confirm=network.confirm)
    )
    # The periodic round would publish this test's journal rows again, and on PostgreSQL lock
    # them while it does (a batch then skips them as another worker's): none get that old.
    monkeypatch.setattr(get_settings(), "sweep_after_s", 3_600)
    with TestClient(Ingress(create_app()), raise_server_exceptions=False) as client:
        yield Edge(client, new_account()["account"])


tally = fuzzhelp.tally
clear_journal = fuzzhelp.clear_journal


def journaled() -> int:
    return len(fuzzhelp.journal_ids())


def process_and_check(sent: dict[int, Post]) -> None:
    """Process the journaled deliveries (``sent``: each with the post that made it) as a worker
    does, in one batch (tests/fuzzhelp.py): each is stored whole or dead with its reason."""
    fuzzhelp.process_and_check(sent, _check_dead, _check_stored)


def _check_dead(session: Session, outcome: DeliveryOutcome, journaled_as: tuple[int, Any]) -> None:
    # README, Email: "only a mail with no headers at all is a dead letter".
    assert outcome.error and outcome.error.startswith(UNUSABLE), (
        f"a usable mail is dead: {outcome.error}"
    )


def _check_stored(session: Session, outcome: DeliveryOutcome, post: Post) -> None:
    assert outcome.messages, outcome.state
    if outcome.state == "stored" and post.attachments is not None:
        [stored] = outcome.messages
        message = session.get_one(Message, stored["message_id"])
        listed = [a["sha256"] for a in message.headers["email"]["attachments"]]
        sent = [hashlib.sha256(a).hexdigest() for a in post.attachments]
        assert listed == sent, "an attachment's bytes were lost or changed"


def fuzz(
    edge: Edge, data: st.DataObject, build: Callable[[Draw, int], Post], provider: str
) -> None:
    """One to three posts of one form to a new inbox, then their deliveries as a worker batch."""
    clear_journal()
    inbox = edge.inbox(provider)
    count = data.draw(st.integers(1, 3), label="posts")
    edge.deliver(inbox, *[build(data.draw, inbox) for _ in range(count)])


# ---- fuzzing -----------------------------------------------------------------------------------


@pytest.mark.parametrize("form", list(FORMS))
@fuzzhelp.bounded(max_examples=8)
@given(data=st.data())
def test_every_provider_form_is_stored_whole_or_dead_and_never_a_5xx(
    edge: Edge, form: str, data: st.DataObject
) -> None:
    fuzz(edge, data, FORMS[form], provider=form.split("-")[0])


@pytest.mark.parametrize("carrier", list(CARRIERS))
@fuzzhelp.bounded(max_examples=6)  # mangled mail: the largest examples
@given(data=st.data())
def test_malformed_mime_in_every_carrier_is_stored_whole_or_dead_and_never_a_5xx(
    edge: Edge, carrier: str, data: st.DataObject
) -> None:
    def build(draw: Draw, inbox: int) -> Post:
        return CARRIERS[carrier](draw, inbox, fuzzhelp.malformed())

    fuzz(edge, data, build, provider=carrier.split("-")[0])


# ---- what the fuzzing found --------------------------------------------------------------------
# Each failure the fuzzing found, as the smallest request that shows it (issue 14).

FORWARDED = fuzzhelp.FIXTURE_MAILS[0]  # a whole mail, attached as a file (a forward as .eml)
HEADERS = b"From: Maria <maria@example.com>\r\nMessage-ID: <pin@example.com>\r\n"


def signed_form(provider: str, parts: list[Part], attachments: tuple[bytes, ...] = ()) -> Post:
    """A Mailgun route post signed with the inbox's key, or a SendGrid post with its URL secret,
    of a mail with ``parts``."""
    query: dict[str, str] = {}
    if provider == "mailgun":
        stamp, token = str(int(time.time())), f"pin-{next(TOKENS)}"
        signature = mailgun_sign(SECRETS["mailgun"]["signing_key"], stamp, token)
        headers = [["Message-Id", "<pin@example.com>"], ["From", "Maria <maria@example.com>"]]
        parts = [
            ("timestamp", stamp.encode(), {}),
            ("token", token.encode(), {}),
            ("signature", signature.encode(), {}),
            ("message-headers", json.dumps(headers).encode(), {}),
            *parts,
        ]
    else:
        parts = [("headers", HEADERS, {}), *parts]
        query = {"secret": SECRETS["sendgrid"]["url_secret"]}
    body = fuzzhelp.form(parts, BOUNDARY)
    return Post(provider, body, {"Content-Type": FORM}, query, attachments=attachments or None)


def signed_generic(payload: dict[str, Any]) -> Post:
    body = json.dumps(payload).encode()
    stamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "X-Inboxsync-Timestamp": str(stamp),
        "X-Inboxsync-Signature": generic_sign(SECRETS["generic"]["signing_secret"], stamp, body),
    }
    return Post("generic", body, headers)


def signed_postmark(fields: dict[str, Any]) -> Post:
    """Postmark's JSON with the inbox's basic-auth credentials."""
    user, password = SECRETS["postmark"]["basic_username"], SECRETS["postmark"]["basic_password"]
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    headers = {"Authorization": f"Basic {token}", "Content-Type": "application/json"}
    return Post("postmark", json.dumps(fields).encode(), headers)


def raw_mail(raw: bytes) -> Post:
    secret = SECRETS["rfc822"]["bearer_secret"]
    headers = {"Authorization": f"Bearer {secret}", "Content-Type": "message/rfc822"}
    return Post("rfc822", raw, headers)


FORM_PROVIDERS = pytest.mark.parametrize("provider", ["mailgun", "sendgrid"])


@FORM_PROVIDERS
def test_a_signed_form_with_a_part_nested_a_thousand_levels_deep_is_not_a_500(
    edge: Edge, provider: str
) -> None:
    """The edge parses a form's parts with the stdlib's recursive MIME parser: a 60 KB post whose
    file part is a multipart nested 1,100 deep ran it out of stack (RecursionError, a 500)."""
    kind, nested = fuzzhelp.nested(1_100, b"hello")
    part = ("attachment-1", nested, {"filename": "deep.bin", "Content-Type": kind})
    edge.send(signed_form(provider, [part]))


@FORM_PROVIDERS
def test_a_form_field_whose_charset_decodes_to_a_lone_surrogate_is_not_a_500(
    edge: Edge, provider: str
) -> None:
    """UTF-7 decodes ``+2AA-`` to a lone surrogate; the form kept it, and the journal's JSON
    encoder refused the payload (TypeError, a 500)."""
    if provider == "mailgun":
        parts = [("body-plain", b"+2AA-", {"Content-Type": "text/plain; charset=utf-7"})]
    else:
        parts = [("text", b"+2AA-", {}), ("charsets", b'{"text": "utf-7"}', {})]
    edge.send(signed_form(provider, parts))


@FORM_PROVIDERS
def test_a_form_attachment_keeps_its_bytes_whatever_its_content_type(
    edge: Edge, provider: str
) -> None:
    """A file part of type message/rfc822 (a mail forwarded as an attachment) or multipart/* was
    parsed as MIME, and its bytes were lost: the attachment was stored empty."""
    multipart = b"--q\r\n\r\nzz\r\n--q--\r\n"
    files: list[Part] = [
        ("attachment-1", FORWARDED, {"filename": "fwd.eml", "Content-Type": "message/rfc822"}),
        (
            "attachment-2",
            multipart,
            {"filename": "p.bin", "Content-Type": "multipart/mixed; boundary=q"},
        ),
    ]
    edge.send(signed_form(provider, files, attachments=(FORWARDED, multipart)))


def test_a_postmark_mail_from_an_internationalized_address_is_stored(edge: Edge) -> None:
    """Postmark's split form: the From header was rebuilt with ``formataddr``, which refuses a
    non-ASCII address (RFC 6531, ``joão@exämple.com``); the mail became a dead letter."""
    fields = {"MessageID": "pm-eai-1", "FromFull": {"Email": "joão@exämple.com", "Name": "João"}}
    edge.send(signed_postmark(fields))


def test_a_mail_nested_deeper_than_the_parser_recurses_is_stored_not_dead(edge: Edge) -> None:
    """A mail whose body is a multipart nested 1,100 deep has headers: it is stored (README: only
    a mail with no headers at all is a dead letter). The recursive parser ran out of stack and
    the mail became a dead letter."""
    kind, nested = fuzzhelp.nested(1_100, b"hello")
    edge.send(raw_mail(f"Content-Type: {kind}\r\n".encode() + HEADERS + b"\r\n" + nested))


def test_a_message_with_nul_in_its_text_is_stored_on_every_store(edge: Edge) -> None:
    """PostgreSQL's text holds no NUL (nor does json_to_recordset read ``\\u0000``): a message
    with one in its text or headers became a dead letter there, and was stored on SQLite."""
    edge.send(
        signed_generic(
            {
                "external_id": "nul-1",
                "sender": "maria@example.com",
                "text": "before\x00after",
                "sent_at": "2026-11-25T10:00:00Z",
            }
        ),
        raw_mail(HEADERS + b"Subject: a\x00b\r\n\r\nbody with a \x00 in it\r\n"),
    )


def test_a_time_at_any_offset_a_sender_may_write_is_stored_on_every_store(edge: Edge) -> None:
    """ISO 8601 and RFC 5322 allow offsets up to 23:59; PostgreSQL's timestamptz takes 15:59 at
    most. A message sent at +23:10 was a dead letter there, and stored on SQLite."""
    edge.send(
        signed_generic(
            {
                "external_id": "offset-1",
                "sender": "maria@example.com",
                "text": "hello",
                "sent_at": "2026-11-25T10:00:00+23:10",
            }
        ),
        raw_mail(HEADERS + b"Date: Wed, 25 Nov 2026 10:00:00 +2300\r\n\r\nhello\r\n"),
    )


@pytest.mark.parametrize("content", ["not base64!", "não é base64"])
def test_a_postmark_attachment_not_in_base64_is_judged_at_the_edge_not_dead_lettered(
    edge: Edge, content: str
) -> None:
    """README: what the edge can judge it judges, rather than answering 202 and dead-lettering
    later. A Postmark attachment whose ``Content`` is not base64 was accepted, then the worker
    dead-lettered the whole mail (a 422 at the edge, or the mail kept without that attachment
    and a ``problems`` line, would both keep the promise). Text that is not ASCII was a 500
    once the edge judged it (``b64decode`` raises ValueError, not binascii.Error)."""
    fields = {
        "MessageID": "pm-bad-attachment",
        "FromFull": {"Email": "maria@example.com"},
        "Attachments": [{"Name": "nota.txt", "Content": content}],
    }
    edge.send(signed_postmark(fields))
