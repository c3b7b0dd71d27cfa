"""``make bench`` chat rows: each chat provider's webhooks, signed as the provider signs them,
from many contacts, through the same processes and load generator as the generic rows
(bench/harness.py), the generic provider first for comparison.

Per provider: the ingress alone (accepted webhooks/s, no worker running); then one worker
process drains what that queued (not timed); then end to end with that worker running (webhook
sent → message committed, stored messages/s). The bodies are the providers' documented shapes,
those of tests/fixtures/<provider>/, with ids, contacts and texts varied; every webhook is one
new message of one of ``CONTACTS`` contacts (a conversation each: DMs, phone numbers, chats,
widget sessions).
"""

from __future__ import annotations

import base64
import copy
import hashlib
import itertools
import json
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode

from bench.harness import (
    ROOT,
    Pipeline,
    cpu_line,
    cpu_snapshot,
    generic_requests,
    http_request,
    wait_stored,
)

sys.path.insert(0, str(ROOT))

from handlers.channels import slack, twilio, whatsapp  # noqa: E402
from handlers.outbound import widget  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures"
CONTACTS = 5000
WARM = 300  # per provider, before its clock: the inbox in the ingress's cache, the worker up
PROVIDERS = ("generic", "slack", "twilio", "whatsapp", "telegram", "widget")
FORMATS = {
    "generic": "our signed JSON",
    "slack": "Events API, v0 signature",
    "twilio": "SMS form, X-Twilio-Signature",
    "whatsapp": "Cloud API, X-Hub-Signature-256",
    "telegram": "Bot API, secret token",
    "widget": "Standard Webhooks",
}
SLACK_SECRET = "bench-slack-signing-secret"
TWILIO_TOKEN = "bench-twilio-auth-token"
WA_SECRET = "bench-whatsapp-app-secret"
TG_SECRET = "bench-telegram-secret-token"
WIDGET_SECRET = "whsec_" + base64.b64encode(b"bench-widget-signing-key-0123456").decode()
TEXT = "message {i} of the benchmark; a few words like a short chat message."
_runs = itertools.count(1)

Build = Callable[[int, int, str], list[bytes]]


def _fixture(provider: str, name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((FIXTURES / provider / name).read_text())
    return loaded


def slack_requests(inbox: int, n: int, run: str) -> list[bytes]:
    """DMs from ``CONTACTS`` users (one conversation each); a ``ts`` unique per channel."""
    template, serial, stamp = (
        _fixture("slack", "message_dm.json"),
        next(_runs),
        str(int(time.time())),
    )
    out = []
    for i in range(n):
        body = copy.deepcopy(template)
        contact, event = i % CONTACTS, body["event"]
        ts = f"{1795600000 + i}.{serial:06d}"
        event.update(
            user=f"U{contact:09d}",
            channel=f"D{contact:09d}",
            ts=ts,
            event_ts=ts,
            client_msg_id=f"{run}-{i}",
            text=TEXT.format(i=i),
        )
        body["event_id"] = f"Ev{run}x{i}"
        raw = json.dumps(body).encode()
        headers = {
            "Content-Type": "application/json",
            "X-Slack-Request-Timestamp": stamp,
            "X-Slack-Signature": slack.sign(SLACK_SECRET, stamp, raw),
        }
        out.append(http_request(f"/webhooks/{inbox}", raw, headers))
    return out


# The inbox's ``public_url``: the URL Twilio is told to call, which it signs (behind a proxy,
# not the one the request arrives at).
TWILIO_URL = "https://support.bench.example/webhooks/twilio"


def twilio_requests(inbox: int, n: int, run: str) -> list[bytes]:
    """SMS from ``CONTACTS`` numbers to ours, signed over the inbox's ``public_url``."""
    template = dict(parse_qsl((FIXTURES / "twilio" / "sms.txt").read_text().strip()))
    out = []
    for i in range(n):
        sid = "SM" + hashlib.md5(f"{run}-{i}".encode()).hexdigest()
        fields = {
            **template,
            "MessageSid": sid,
            "SmsMessageSid": sid,
            "SmsSid": sid,
            "From": f"+3519100{i % CONTACTS:05d}",
            "Body": TEXT.format(i=i),
        }
        raw = urlencode(fields).encode()
        headers = {
            "Content-Type": twilio.URLENCODED,
            "X-Twilio-Signature": twilio.sign(TWILIO_TOKEN, TWILIO_URL, fields.items()),
        }
        out.append(http_request(f"/webhooks/{inbox}", raw, headers))
    return out


def whatsapp_requests(inbox: int, n: int, run: str) -> list[bytes]:
    """One message a notification, from ``CONTACTS`` wa_ids to one business number."""
    template, stamp = _fixture("whatsapp", "text.json"), str(int(time.time()))
    out = []
    for i in range(n):
        body = copy.deepcopy(template)
        value = body["entry"][0]["changes"][0]["value"]
        wa_id = f"3519100{i % CONTACTS:05d}"
        value["contacts"][0]["wa_id"] = wa_id
        message = value["messages"][0]
        message.update(
            {"from": wa_id, "id": f"wamid.{run}-{i}", "timestamp": stamp},
            text={"body": TEXT.format(i=i)},
        )
        raw = json.dumps(body).encode()
        headers = {
            "Content-Type": "application/json",
            "X-Hub-Signature-256": whatsapp.sign(WA_SECRET, raw),
        }
        out.append(http_request(f"/webhooks/{inbox}", raw, headers))
    return out


def telegram_requests(inbox: int, n: int, run: str) -> list[bytes]:
    """Private chats of ``CONTACTS`` users with the bot; message ids unique per chat."""
    template, serial = _fixture("telegram", "message.json"), next(_runs)
    out = []
    for i in range(n):
        body = copy.deepcopy(template)
        user = 5120000000 + i % CONTACTS
        body["update_id"] = serial * 10_000_000 + i
        message = body["message"]
        message["message_id"] = serial * 10_000_000 + i
        message["from"]["id"] = message["chat"]["id"] = user
        message["date"] = int(time.time())
        message["text"] = TEXT.format(i=i)
        raw = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", "X-Telegram-Bot-Api-Secret-Token": TG_SECRET}
        out.append(http_request(f"/webhooks/{inbox}", raw, headers))
    return out


def widget_requests(inbox: int, n: int, run: str) -> list[bytes]:
    """Sessions of ``CONTACTS`` visitors (anonymous: no email), signed with Standard Webhooks."""
    template, stamp = _fixture("widget", "message.json"), int(time.time())
    out = []
    for i in range(n):
        body = copy.deepcopy(template)
        contact, data = i % CONTACTS, body["data"]
        data.update(
            session_id=f"ses_{contact}",
            message_id=f"{run}-{i}",
            visitor={"id": f"vis_{contact}", "name": f"Visitor {contact}"},
            text=TEXT.format(i=i),
            sent_at=datetime.now(UTC).isoformat(),
        )
        raw = json.dumps(body).encode()
        webhook_id = f"msg_{run}-{i}"
        headers = {
            "Content-Type": "application/json",
            widget.ID_HEADER: webhook_id,
            widget.TIMESTAMP_HEADER: str(stamp),
            widget.SIGNATURE_HEADER: widget.sign(WIDGET_SECRET, webhook_id, stamp, raw),
        }
        out.append(http_request(f"/webhooks/{inbox}", raw, headers))
    return out


BUILDERS: dict[str, Build] = {
    "generic": generic_requests,
    "slack": slack_requests,
    "twilio": twilio_requests,
    "whatsapp": whatsapp_requests,
    "telegram": telegram_requests,
    "widget": widget_requests,
}


def make_inboxes(p: Pipeline) -> dict[str, int]:
    """One chat inbox per provider (the generic rows' inbox for ``generic``)."""
    account = p.cli("create-account", "bench-chat", "--tier", "free")
    secrets = {
        "slack": [f"signing_secret={SLACK_SECRET}"],
        "twilio": [f"auth_token={TWILIO_TOKEN}", f"public_url={TWILIO_URL}"],
        "whatsapp": [f"app_secret={WA_SECRET}", "verify_token=bench"],
        "telegram": [f"secret_token={TG_SECRET}"],
        "widget": [f"signing_secret={WIDGET_SECRET}"],
    }
    inboxes = {"generic": p.inbox}
    for provider, pairs in secrets.items():
        args = ["create-inbox", account, provider, "--channel", "chat", "--provider", provider]
        for pair in pairs:
            args += ["--secret", pair]
        inboxes[provider] = int(p.cli(*args).split()[0])
    return inboxes


def _only_2xx(codes: dict[str, int], n: int, provider: str) -> None:
    if len(codes) != 1 or not next(iter(codes)).startswith("2") or sum(codes.values()) != n:
        raise RuntimeError(f"{provider}: answers {codes} for {n} webhooks")


def measure(p: Pipeline, n: int, report: Any) -> None:
    inboxes = make_inboxes(p)
    for provider in PROVIDERS:
        build, inbox = BUILDERS[provider], inboxes[provider]
        before = p.stored()
        _only_2xx(p.send(build(inbox, WARM, f"{provider}-warm"))[1], WARM, provider)
        requests = build(inbox, n, f"{provider}-ingress")
        elapsed, codes = p.send(requests)
        _only_2xx(codes, n, provider)
        accepted = n / elapsed
        # One worker drains the ingress run (untimed), and is warm for the end-to-end run.
        worker = p._spawn(
            ["worker", "--pool", "solo", "--loglevel", "warning"], p.logs / f"worker-{provider}.log"
        )
        p.workers.append(worker)
        wait_stored(p, before + WARM + n)
        before = p.stored()
        requests = build(inbox, n, f"{provider}-e2e")
        cpu0 = cpu_snapshot(p)
        started = time.perf_counter()
        _, codes = p.send(requests)
        _only_2xx(codes, n, provider)
        done = wait_stored(p, before + n)
        cpu1 = cpu_snapshot(p)
        p.stop_workers()
        report.row(
            f"chat {provider} ({FORMATS[provider]}), {CONTACTS:,} contacts: accepted/s at the "
            "ingress, no worker / stored/s end to end, 1 worker process, Redis + PostgreSQL",
            f"{accepted:,.0f} / {n / (done - started):,.0f}",
            n,
        )
        report.note(cpu_line(f"chat {provider} end to end", cpu0, cpu1, n))
