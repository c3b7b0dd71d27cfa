"""Real network peers on loopback for outbound tests: the send APIs of Postmark, Mailgun and
SendGrid on one HTTP server, and an SMTP server (aiosmtpd). Both record what they accepted and
play scripted faults, one per request, in order:

- ``"500"`` / ``"429"`` / ``"422"``: answer that status and keep nothing;
- ``"hang"`` / ``"drop"`` / ``"block"``: keep the mail, then hold the answer (tests/fakehttp.py);
- SMTP ``"451"`` / ``"550"``: refuse the mail with that code.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import uuid
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlsplit

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.fakehttp import FakeHandler, FakeServer

POSTMARK_TOKEN = "pm-server-token"
MAILGUN_KEY = "mg-api-key"
SENDGRID_KEY = "SG.test-key"


class FakeProviders(FakeServer):
    def __init__(self) -> None:
        self.accepted: list[dict[str, Any]] = []  # {"provider", "to", "headers", "body", ...}
        super().__init__(_handler)

    def sends(self, provider: str) -> list[dict[str, Any]]:
        return [a for a in self.accepted if a["provider"] == provider]


def _handler(fake: FakeProviders) -> type[BaseHTTPRequestHandler]:
    class Handler(FakeHandler):
        def do_GET(self) -> None:
            url = urlsplit(self.path)
            fake.requests.append(("GET", url.path))
            query = dict(parse_qsl(url.query))
            if url.path == "/messages/outbound" and self._postmark_auth():
                hits = [
                    {"MessageID": a["id"], "Recipients": a["to"], "Metadata": a["metadata"]}
                    for a in fake.sends("postmark")
                    if query.get("recipient") in a["to"]
                    and all(
                        a["metadata"].get(k.removeprefix("metadata_")) == v
                        for k, v in query.items()
                        if k.startswith("metadata_")
                    )
                ]
                return self._json(200, {"TotalCount": len(hits), "Messages": hits})
            if url.path.endswith("/events") and self._mailgun_auth():
                items = [
                    {
                        "event": "accepted",
                        "recipient": query.get("recipient"),
                        "message": {"headers": {"message-id": a["id"]}},
                        "user-variables": a["metadata"],
                    }
                    for a in fake.sends("mailgun")
                    if query.get("recipient") in a["to"]
                ]
                return self._json(200, {"items": items, "paging": {}})
            self._json(404, {"message": "not found"})

        def do_POST(self) -> None:
            url = urlsplit(self.path)
            fake.requests.append(("POST", url.path))
            raw = self.body()
            fault = fake.next_fault()
            if fault in ("500", "429", "422"):
                return self._json(int(fault), {"ErrorCode": 500, "message": f"fault {fault}"})
            if url.path == "/email":
                if not self._postmark_auth():
                    return None
                body = json.loads(raw)
                mail = {
                    "provider": "postmark",
                    "id": str(uuid.uuid4()),
                    "to": [body["To"].rpartition("<")[2].rstrip(">")],
                    "subject": body["Subject"],
                    "text": body["TextBody"],
                    "headers": {h["Name"]: h["Value"] for h in body.get("Headers", [])},
                    "metadata": body.get("Metadata") or {},
                }
                answer: tuple[int, Any] = (
                    200,
                    {"To": body["To"], "MessageID": mail["id"], "ErrorCode": 0, "Message": "OK"},
                )
            elif url.path.endswith("/messages") and url.path.startswith("/v3/"):
                if not self._mailgun_auth():
                    return None
                form = parse_qs(raw.decode())
                headers = {k[2:]: v[0] for k, v in form.items() if k.startswith("h:")}
                mail = {
                    "provider": "mailgun",
                    "id": headers["Message-ID"].strip("<>"),
                    "to": [t.rpartition("<")[2].rstrip(">") for t in form["to"]],
                    "subject": form["subject"][0],
                    "text": form["text"][0],
                    "headers": headers,
                    "metadata": {k[2:]: v[0] for k, v in form.items() if k.startswith("v:")},
                }
                answer = (200, {"id": f"<{mail['id']}>", "message": "Queued. Thank you."})
            elif url.path == "/v3/mail/send":
                if self.headers.get("authorization") != f"Bearer {SENDGRID_KEY}":
                    return self._json(401, {"errors": [{"message": "bad key"}]})
                body = json.loads(raw)
                mail = {
                    "provider": "sendgrid",
                    "id": uuid.uuid4().hex,
                    "to": [t["email"] for t in body["personalizations"][0]["to"]],
                    "subject": body["subject"],
                    "text": body["content"][0]["value"],
                    "headers": body.get("headers") or {},
                    "metadata": body.get("custom_args") or {},
                }
                answer = (202, None)
            else:
                return self._json(404, {"message": "not found"})
            with fake.lock:
                fake.accepted.append(mail)
            if fake.hold(fault, self):
                return None
            status, payload = answer
            if payload is None:
                self.send_response(status)
                self.send_header("X-Message-Id", mail["id"])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            return self._json(status, payload)

        def _postmark_auth(self) -> bool:
            if self.headers.get("x-postmark-server-token") == POSTMARK_TOKEN:
                return True
            self._json(401, {"ErrorCode": 10, "Message": "bad or missing server token"})
            return False

        def _mailgun_auth(self) -> bool:
            expected = "Basic " + base64.b64encode(f"api:{MAILGUN_KEY}".encode()).decode()
            if self.headers.get("authorization") == expected:
                return True
            self._json(401, {"message": "Invalid private key"})
            return False

    return Handler


def fake_providers() -> FakeProviders:
    return FakeProviders()


class FakeSmtp:
    """An aiosmtpd server on loopback; ``mails`` are the messages it accepted, parsed."""

    def __init__(self) -> None:
        self.mails: list[EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self.faults: deque[str] = deque()
        self.hang_s = 3.0
        port = _free_port()
        self.controller = Controller(self, hostname="127.0.0.1", port=port)
        self.port = port

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        fault = self.faults.popleft() if self.faults else None
        if fault in ("451", "550"):
            return f"{fault} {'4.3.0 try again later' if fault == '451' else '5.7.1 refused'}"
        content = envelope.original_content or envelope.content or b""
        assert isinstance(content, bytes)
        self.mails.append(message_from_bytes(content, policy=policy.default))  # type: ignore[arg-type]
        self.envelopes.append((str(envelope.mail_from), list(envelope.rcpt_tos)))
        if fault == "hang":
            await asyncio.sleep(self.hang_s)
        return f"250 2.0.0 Ok: queued as Q{len(self.mails)}"


@contextmanager
def fake_smtp() -> Iterator[FakeSmtp]:
    smtp = FakeSmtp()
    smtp.controller.start()
    try:
        yield smtp
    finally:
        smtp.controller.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
