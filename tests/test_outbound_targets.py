"""Where workers may take an inbox's credentials (handlers/netguard.py): public addresses only,
checked when the outbound setting is saved and again when a worker connects, and the connection
made to the checked address (handlers/outbound/transport.py).

The suite runs with private targets allowed (tests/conftest.py: the fake providers listen on
loopback); ``private_refused`` puts back the production default. DNS is the network edge:
``netguard.resolve`` is replaced where a test needs a name to resolve somewhere in particular.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from aiosmtpd.controller import Controller
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from api.app import create_app
from cli.main import app as cli_app
from handlers import netguard
from handlers.outbound import replies, transport
from settings import get_settings
from store.db import reading
from store.models import Conversation
from tests.apihelp import ADMIN, setup_account
from tests.fakeproviders import FakeProviders, fake_providers, fake_smtp
from tests.test_replies import customer_conversation, outbound, queue, reply, smtp_config

PUBLIC = "93.184.215.14"  # a globally routable address (nothing connects to it here)


@pytest.fixture
def private_refused() -> Iterator[None]:
    """The production default: private targets refused."""
    before = os.environ.get(netguard.SETTING)
    os.environ[netguard.SETTING] = "false"
    get_settings.cache_clear()
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(netguard.SETTING, None)
        else:
            os.environ[netguard.SETTING] = before
        get_settings.cache_clear()


@pytest.fixture
def fake(db: None) -> Iterator[FakeProviders]:
    with fake_providers() as providers:
        yield providers


@pytest.fixture
def client(db: None) -> Iterator[TestClient]:
    with TestClient(create_app()) as c:
        yield c


class Dns:
    """A resolver playing given answers per name, in turn (the last one repeats)."""

    def __init__(self, **answers: list[list[str]]) -> None:
        self.answers = {name.replace("_", "."): list(seq) for name, seq in answers.items()}
        self.asked: list[str] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append(host)
        if host not in self.answers:
            raise netguard.Unresolvable(f"cannot resolve {host!r}")
        turns = self.answers[host]
        return turns.pop(0) if len(turns) > 1 else turns[0]


# The rule -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fc00::1", "private"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("100.64.0.1", "CGNAT"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("192.0.2.1", "private"),  # documentation range
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
        ("64:ff9b::a9fe:a9fe", "link-local"),  # NAT64 of 169.254.169.254
        ("2002:7f00:1::1", "loopback"),  # 6to4 of 127.0.0.1
    ],
)
def test_non_public_addresses_are_refused_with_their_reason(address: str, reason: str):
    assert reason in (netguard.refusal(address) or "")


@pytest.mark.parametrize("address", [PUBLIC, "8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses_pass(address: str):
    assert netguard.refusal(address) is None


def test_a_name_with_one_refused_address_among_public_ones_is_refused(monkeypatch):
    monkeypatch.setattr(netguard, "resolve", Dns(api_mixed_test=[[PUBLIC, "10.0.0.7"]]))
    with pytest.raises(netguard.TargetRefused, match="10.0.0.7, which is private"):
        netguard.resolve_checked("api.mixed.test", 443, allow_private=False)


# Save time: the API and the CLI answer 422 / exit 2 ---------------------------------------------


def mailgun_at(url: str) -> dict[str, Any]:
    return {"via": "mailgun", "from": "s@acme.test", "api_key": "k", "domain": "d", "api_url": url}


def smtp_at(host: str) -> dict[str, Any]:
    return {"via": "smtp", "from": "s@acme.test", "host": host, "security": "none"}


@pytest.mark.parametrize(
    ("setting", "reason"),
    [
        (mailgun_at("http://127.0.0.1:8080"), "127.0.0.1, which is loopback"),
        (mailgun_at("https://10.0.0.5"), "10.0.0.5, which is private"),
        (mailgun_at("http://169.254.169.254/latest"), "169.254.169.254, which is link-local"),
        (mailgun_at("http://[::1]:25"), "::1, which is loopback"),
        (smtp_at("localhost"), "localhost resolves to "),
        (smtp_at("100.64.1.1"), "CGNAT"),
    ],
)
def test_saving_an_outbound_aimed_at_a_refused_address_is_422(
    client: TestClient, private_refused: None, setting: dict[str, Any], reason: str
):
    acct = setup_account(client)
    answer = client.put(f"/inboxes/{acct['inbox']}/outbound", json=setting, headers=acct["auth"])
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"] == "invalid_request"
    assert reason in answer.json()["message"]
    assert netguard.SETTING in answer.json()["message"]
    inbox = client.get("/inboxes", headers=acct["auth"]).json()[0]
    assert inbox["replies_via"] is None  # nothing was saved


def test_a_new_inbox_whose_outbound_is_refused_is_not_created(
    client: TestClient, private_refused: None
):
    acct = setup_account(client)
    body = {
        "name": "mail",
        "channel": "email",
        "provider": "rfc822",
        "secrets": {"bearer_secret": "x"},
        "outbound": mailgun_at("http://169.254.169.254"),
    }
    answer = client.post("/inboxes", json=body, headers=acct["auth"])
    assert answer.status_code == 422
    assert answer.json()["message"].startswith("outbound.api_url: 169.254.169.254")
    assert len(client.get("/inboxes", headers=acct["auth"]).json()) == 1


def test_a_name_that_resolves_to_metadata_is_refused_at_save_time(
    client: TestClient, private_refused: None, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(netguard, "resolve", Dns(evil_example=[["169.254.169.254"]]))
    acct = setup_account(client)
    answer = client.put(
        f"/inboxes/{acct['inbox']}/outbound",
        json=mailgun_at("https://evil.example"),
        headers=acct["auth"],
    )
    assert answer.status_code == 422
    assert "evil.example resolves to 169.254.169.254" in answer.json()["message"]


def test_public_targets_and_names_that_do_not_resolve_yet_are_saved(
    client: TestClient, private_refused: None, monkeypatch: pytest.MonkeyPatch
):
    # Not resolving now is no evidence of a private target: the worker checks when it connects.
    monkeypatch.setattr(netguard, "resolve", Dns(api_mailgun_net=[[PUBLIC]]))
    acct = setup_account(client)
    for setting in (mailgun_at("https://api.mailgun.net"), smtp_at("smtp.nowhere.test")):
        answer = client.put(
            f"/inboxes/{acct['inbox']}/outbound", json=setting, headers=acct["auth"]
        )
        assert answer.status_code == 200, answer.text


def test_the_cli_refuses_the_same_targets_as_the_api(client: TestClient, private_refused: None):
    acct = setup_account(client)
    setting = mailgun_at("http://169.254.169.254")
    api = client.put(f"/inboxes/{acct['inbox']}/outbound", json=setting, headers=ADMIN)
    args = ["set-outbound", str(acct["inbox"]), "--via", "mailgun", "--from", "s@acme.test"]
    for key in ("api_key", "domain", "api_url"):
        args += ["--setting", f"{key}={setting[key]}"]
    cli = CliRunner().invoke(cli_app, args)
    assert cli.exit_code == 2
    assert cli.stderr.strip() == api.json()["message"]


@pytest.mark.parametrize(
    "url", ["ftp://api.example", "https://user:pw@api.example", "https://api.example/?x=1"]
)
def test_an_api_url_that_is_not_a_plain_http_url_is_422(client: TestClient, url: str):
    acct = setup_account(client)
    answer = client.put(f"/inboxes/{acct['inbox']}/outbound", json=mailgun_at(url), headers=ADMIN)
    assert answer.status_code == 422 and "api_url" in answer.json()["message"]


# Connect time: the worker checks again, and connects where it checked --------------------------


def test_with_private_targets_refused_a_reply_to_loopback_fails_at_once_and_sends_nothing(
    fake: FakeProviders, private_refused: None
):
    # Saved while allowed (or written to the store by hand): the worker's check still stands.
    conv = customer_conversation(outbound("postmark", fake.url))
    rid = queue(conv)
    assert replies.attempt(rid).outcome == "failed"
    failed = reply(rid)
    assert failed.attempts == 1 and failed.next_attempt_at is None  # permanent: not retried
    assert "refused target" in (failed.error or "") and "loopback" in (failed.error or "")
    assert fake.requests == []


def test_with_private_targets_refused_an_smtp_reply_to_loopback_fails_and_sends_nothing(
    db: None, private_refused: None
):
    with fake_smtp() as smtp:
        conv = customer_conversation(smtp_config(smtp))
        rid = queue(conv)
        assert replies.attempt(rid).outcome == "failed"
        assert "refused target" in (reply(rid).error or "")
        assert smtp.envelopes == []


def test_a_name_rebound_to_metadata_after_saving_is_refused_when_the_worker_connects(
    client: TestClient, private_refused: None, monkeypatch: pytest.MonkeyPatch
):
    dns = Dns(api_rebind_test=[[PUBLIC], ["169.254.169.254"]])
    monkeypatch.setattr(netguard, "resolve", dns)
    conv = customer_conversation(None)
    setting = outbound("postmark", "https://api.rebind.test")
    saved = client.put(f"/inboxes/{inbox_of(conv)}/outbound", json=setting, headers=ADMIN)
    assert saved.status_code == 200, saved.text  # public when saved
    rid = queue(conv)
    assert replies.attempt(rid).outcome == "failed"  # the metadata address when connecting
    assert "api.rebind.test resolves to 169.254.169.254" in (reply(rid).error or "")
    assert reply(rid).attempts == 1


def test_the_worker_connects_to_the_address_it_resolved_not_to_a_second_lookup(
    fake: FakeProviders, monkeypatch: pytest.MonkeyPatch
):
    # ``api.provider.test`` exists only in this resolver (.test never resolves in real DNS): the
    # mail reaching the fake on loopback means the connection went to the address resolved
    # here, once, and not to a lookup of the HTTP library's own that DNS could have rebound.
    port = fake.url.rsplit(":", 1)[1]
    dns = Dns(api_provider_test=[["127.0.0.1"], ["169.254.169.254"]])
    monkeypatch.setattr(netguard, "resolve", dns)
    conv = customer_conversation(outbound("postmark", f"http://api.provider.test:{port}"))
    rid = queue(conv)
    assert replies.attempt(rid).outcome == "sent"
    assert len(fake.sends("postmark")) == 1
    assert dns.asked == ["api.provider.test"]


def test_a_redirect_is_not_followed_with_the_credentials(fake: FakeProviders):
    # A 307 keeps the method, body and X-Postmark-Server-Token: following it would take the
    # credentials to an address nobody checked. Here it points at a fake that would take them.
    class Redirect(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            self.send_response(307)
            self.send_header("Location", f"{fake.url}/email")
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = serve(Redirect)
    try:
        conv = customer_conversation(outbound("postmark", f"http://127.0.0.1:{port_of(server)}"))
        rid = queue(conv)
        assert replies.attempt(rid).outcome == "failed"
        assert "HTTP 307" in (reply(rid).error or "")
        assert fake.sends("postmark") == []
    finally:
        server.shutdown()
        server.server_close()


# TLS still verifies the name when the socket goes to an address ---------------------------------


def serve(handler: type[BaseHTTPRequestHandler], context: ssl.SSLContext | None = None) -> Any:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def port_of(server: ThreadingHTTPServer) -> int:
    return int(server.server_address[1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def inbox_of(conversation_id: int) -> int:
    with reading() as session:
        conv = session.get(Conversation, conversation_id)
        assert conv is not None
        return conv.inbox_id


class Tls:
    """A CA and a server certificate for ``api.provider.test`` (and nothing else)."""

    def __init__(self, directory: Path, name: str = "api.provider.test") -> None:
        now = dt.datetime.now(dt.UTC)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "inboxsync test CA")])
        ca = (
            self._builder(ca_name, ca_name, ca_key, now)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        key = ec.generate_private_key(ec.SECP256R1())
        leaf = (
            self._builder(
                x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]), ca_name, key, now
            )
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        self.ca_file = directory / "ca.pem"
        self.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        chain, key_file = directory / "server.pem", directory / "server.key"
        chain.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        self.server_names: list[str | None] = []
        self.server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.server.load_cert_chain(chain, key_file)
        self.server.sni_callback = lambda _sock, sni, _ctx: self.server_names.append(sni)

    @staticmethod
    def _builder(subject: x509.Name, issuer: x509.Name, key: Any, now: dt.datetime) -> Any:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
        )


@pytest.fixture
def tls(tmp_path: Path) -> Tls:
    return Tls(tmp_path)


def https_server(tls: Tls) -> tuple[ThreadingHTTPServer, list[str]]:
    hosts: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            hosts.append(self.headers.get("host", ""))
            self.send_response(204)
            self.end_headers()

    return serve(Handler, tls.server), hosts


def test_https_to_the_checked_address_still_sends_the_name_and_verifies_its_certificate(
    tls: Tls, monkeypatch: pytest.MonkeyPatch
):
    dns = Dns(api_provider_test=[["127.0.0.1"]], other_provider_test=[["127.0.0.1"]])
    monkeypatch.setattr(netguard, "resolve", dns)
    server, hosts = https_server(tls)
    port = port_of(server)
    try:
        http = transport.session()
        answer = http.get(f"https://api.provider.test:{port}/", verify=str(tls.ca_file))
        assert answer.status_code == 204
        assert tls.server_names[-1] == "api.provider.test"  # SNI: the name, not 127.0.0.1
        assert hosts == [f"api.provider.test:{port}"]
        # Same address, another name: the certificate does not name it, so no connection.
        with pytest.raises(requests.exceptions.SSLError, match="certificate"):
            http.get(f"https://other.provider.test:{port}/", verify=str(tls.ca_file))
        assert len(hosts) == 1
    finally:
        server.shutdown()
        server.server_close()


class Mailbox:
    def __init__(self) -> None:
        self.count = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.count += 1
        return "250 2.0.0 queued"


def test_smtp_starttls_to_the_checked_address_verifies_the_servers_name(
    db: None, tls: Tls, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("SSL_CERT_FILE", str(tls.ca_file))  # ssl.create_default_context trusts it
    dns = Dns(api_provider_test=[["127.0.0.1"]], other_provider_test=[["127.0.0.1"]])
    monkeypatch.setattr(netguard, "resolve", dns)
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port, tls_context=tls.server)
    controller.start()
    try:
        good = smtp_at("api.provider.test") | {"port": port, "security": "starttls"}
        assert replies.attempt(queue(customer_conversation(good))).outcome == "sent"
        assert tls.server_names[-1] == "api.provider.test"  # SNI: the name, not 127.0.0.1
        wrong = good | {"host": "other.provider.test"}
        rid = queue(customer_conversation(wrong))
        assert replies.attempt(rid).outcome == "retry"
        assert "certificate" in (reply(rid).error or "")
        assert mailbox.count == 1
    finally:
        controller.stop()


def test_an_ip_literal_is_its_own_address_and_needs_no_lookup(monkeypatch: pytest.MonkeyPatch):
    dns = Dns()
    monkeypatch.setattr(netguard, "resolve", dns)
    assert netguard.resolve_checked("[2606:4700:4700::1111]", 443, allow_private=False) == [
        str(ipaddress.ip_address("2606:4700:4700::1111"))
    ]
    assert dns.asked == []
