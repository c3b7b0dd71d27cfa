"""Amazon SES through SNS: signed with a certificate made here, fetched through an injected
fetcher (the machine cannot reach AWS; everything past the network edge is real)."""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from handlers.channels.base import Forbidden, PayloadError, SignatureError, WebhookRequest
from handlers.channels.ses import SesAdapter, string_to_sign
from tests.storehelp import at

FIXTURES = Path(__file__).parent / "fixtures" / "ses"
CERT_URL = "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-9c6465fa7f48f5cacd23014631ec1136.pem"
TOPIC = "arn:aws:sns:us-east-1:123456789012:acme-inbound"
SECRETS = {"topic_arns": [TOPIC]}


def make_certificate(days: int = 30) -> tuple[rsa.RSAPrivateKey, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    return key, certificate.public_bytes(serialization.Encoding.PEM)


KEY, PEM = make_certificate()


class Edge:
    """The network edge: certificate downloads and subscription confirmations, recorded."""

    def __init__(self, pem: bytes = PEM) -> None:
        self.pem, self.fetched, self.confirmed = pem, [], []

    def fetch(self, url: str) -> bytes:
        self.fetched.append(url)
        return self.pem

    def confirm(self, url: str) -> None:
        self.confirmed.append(url)


def signed(name: str, key: rsa.RSAPrivateKey = KEY, **changes: Any) -> dict[str, Any]:
    message = json.loads((FIXTURES / name).read_text())
    message.update(
        Timestamp=datetime.now(UTC).isoformat().replace("+00:00", "Z"), SigningCertURL=CERT_URL
    )
    message.update(changes)
    algorithm = hashes.SHA1() if message["SignatureVersion"] == "1" else hashes.SHA256()
    signature = key.sign(string_to_sign(message), padding.PKCS1v15(), algorithm)
    message["Signature"] = base64.b64encode(signature).decode()
    return message


def request(message: dict[str, Any]) -> WebhookRequest:
    return WebhookRequest(
        method="POST",
        url="https://x/webhooks/1",
        headers={},
        query={},
        body=json.dumps(message).encode(),
    )


def test_a_signed_notification_of_a_subscribed_topic_passes():
    edge = Edge()
    adapter = SesAdapter(fetch=edge.fetch, confirm=edge.confirm)
    adapter.verify(request(signed("notification.json")), SECRETS, time.time())
    adapter.verify(request(signed("notification.json")), SECRETS, time.time())
    assert edge.fetched == [CERT_URL]  # the certificate is fetched once


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"SigningCertURL": "http://sns.us-east-1.amazonaws.com/cert.pem"}, SignatureError, "SNS"),
        (
            {"SigningCertURL": "https://evil.example/sns.us-east-1.amazonaws.com.pem"},
            SignatureError,
            "SNS",
        ),
        ({"Timestamp": "2026-01-01T00:00:00Z"}, SignatureError, "older"),
        ({"SignatureVersion": "9"}, SignatureError, "SignatureVersion"),
    ],
)
def test_bad_certificate_urls_old_messages_and_unknown_versions_are_refused(change, error, match):
    adapter = SesAdapter(fetch=Edge().fetch, confirm=Edge().confirm)
    message = signed("notification.json")
    message.update(change)
    with pytest.raises(error, match=match):
        adapter.verify(request(message), SECRETS, time.time())


def test_a_forged_or_tampered_message_is_refused():
    other_key, _ = make_certificate()
    adapter = SesAdapter(fetch=Edge().fetch, confirm=Edge().confirm)
    with pytest.raises(SignatureError, match="does not match"):
        adapter.verify(request(signed("notification.json", key=other_key)), SECRETS, time.time())
    tampered = signed("notification.json")
    tampered["Message"] = tampered["Message"].replace("maria@example.com", "mallory@example.com")
    with pytest.raises(SignatureError, match="does not match"):
        adapter.verify(request(tampered), SECRETS, time.time())


def test_an_expired_certificate_is_refused():
    key, pem = make_certificate(days=-1)
    adapter = SesAdapter(fetch=Edge(pem).fetch, confirm=Edge().confirm)
    with pytest.raises(SignatureError, match="expired"):
        adapter.verify(request(signed("notification.json", key=key)), SECRETS, time.time())


def test_another_topic_is_forbidden_and_its_subscription_never_confirmed():
    edge = Edge()
    adapter = SesAdapter(fetch=edge.fetch, confirm=edge.confirm)
    with pytest.raises(Forbidden):
        adapter.verify(request(signed("subscription.json")), {"topic_arns": ["arn:other"]}, 0)
    assert edge.confirmed == []


def test_a_subscription_of_an_allowed_topic_is_confirmed():
    edge = Edge()
    adapter = SesAdapter(fetch=edge.fetch, confirm=edge.confirm)
    message = signed("subscription.json")
    adapter.verify(request(message), SECRETS, time.time())
    accepted = adapter.accept(request(message))
    assert accepted.payloads == [] and accepted.reply == {"confirmed": TOPIC}
    assert edge.confirmed == [message["SubscribeURL"]]
    foreign = signed("subscription.json", SubscribeURL="https://evil.example/confirm")
    with pytest.raises(PayloadError):
        adapter.accept(request(foreign))


def test_a_notification_becomes_the_mail_it_carries():
    adapter = SesAdapter(fetch=Edge().fetch, confirm=Edge().confirm)
    [payload] = adapter.accept(request(signed("notification.json"))).payloads
    [message] = adapter.normalize(1, at(0), payload)
    assert message.external_id == "mid:CAF=reply3@mail.example.com"
    assert message.thread_refs == ["CAF=reply2@mail.example.com", "CAF=order1001@mail.example.com"]
    assert message.reply_token == 7
    assert message.headers["email"]["provider_id"] == "o3vrnil0e2ic28trm7dfhrc2v0clambda4nbp0g1"


def test_http_forbidden_topic_is_403_and_confirmation_is_200(db, make_account, monkeypatch):
    from fastapi.testclient import TestClient

    from api.app import create_app
    from api.webhooks import Ingress
    from handlers import channels
    from store.db import transaction
    from store.models import Inbox

    edge = Edge()
    monkeypatch.setitem(
        channels.REGISTRY, "ses", SesAdapter(fetch=edge.fetch, confirm=edge.confirm)
    )
    acct = make_account()
    with transaction() as session:
        inbox = Inbox(
            account_id=acct["account"],
            name="ses",
            channel="email",
            provider="ses",
            secrets={"topic_arns": ["arn:aws:sns:us-east-1:123456789012:other"]},
        )
        session.add(inbox)
        session.flush()
        inbox_id = inbox.id
    with TestClient(Ingress(create_app())) as client:
        answer = client.post(f"/webhooks/{inbox_id}", json=signed("subscription.json"))
        assert answer.status_code == 403 and answer.json()["error"] == "forbidden"
        with transaction() as session:
            session.get_one(Inbox, inbox_id).secrets = SECRETS
        from api import webhooks

        webhooks._inboxes.clear()  # the ingress caches inboxes for a few seconds
        answer = client.post(f"/webhooks/{inbox_id}", json=signed("subscription.json"))
        assert answer.status_code == 200 and answer.json() == {"confirmed": TOPIC}
    assert len(edge.confirmed) == 1
