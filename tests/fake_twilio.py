"""A stand-in for Twilio's Messages API and its media on loopback: a real HTTP server.

- ``POST /2010-04-01/Accounts/{sid}/Messages.json`` (basic auth): keeps the message, answers 201
  with the Message resource, after the next scripted fault:
  ``"429"`` (with ``Retry-After: retry_after``), ``"500"``, ``"400"`` (Twilio's 21211): answer it
  and keep nothing; ``"hang"``: keep the message, answer after ``hang_s``; ``"drop"``: keep it and
  close the connection unanswered; ``"block"``: keep it and answer when ``release`` is set.
- ``GET`` of the same path: the kept messages, filtered by ``To`` and ``From``, newest first.
- ``GET /2010-04-01/Accounts/{sid}/Messages/{MM}/Media/{ME}`` (basic auth: the account's, or
  an API key's): 302 to
  ``http://{cdn_host}:{port}/cdn/{ME}``, as api.twilio.com redirects to its media CDN; the CDN
  serves ``media[ME]`` and notes whether it was sent credentials (it must not be).
"""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlsplit

from tests.fakehttp import FakeHandler, FakeServer

ACCOUNT_SID = "AC4c122831efef10ac68b5223dccd6f614"  # the fixtures' AccountSid
AUTH_TOKEN = "tw-auth-token-0123456789abcdef"
# An API key (https://www.twilio.com/docs/iam/api-keys), which media requests also take.
API_KEY_SID, API_KEY_SECRET = "SK" + "5e" * 16, "tw-api-key-secret"


class FakeTwilio(FakeServer):
    def __init__(self, cdn_host: str = "127.0.0.1") -> None:
        self.messages: list[dict[str, Any]] = []
        self.retry_after = "7"
        self.media: dict[str, tuple[bytes, str]] = {}
        self.media_auth: list[str | None] = []  # the Authorization header of each media request
        self.cdn_auth: list[str | None] = []  # … and of each CDN request
        self.cdn_host = cdn_host
        super().__init__(_handler)

    def media_url(self, message_sid: str, media_sid: str, host: str = "127.0.0.1") -> str:
        return (
            f"http://{host}:{self.port}/2010-04-01/Accounts/{ACCOUNT_SID}"
            f"/Messages/{message_sid}/Media/{media_sid}"
        )


def _handler(fake: FakeTwilio) -> type[BaseHTTPRequestHandler]:
    messages_path = f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"
    media_prefix = f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/"
    basic = "Basic " + base64.b64encode(f"{ACCOUNT_SID}:{AUTH_TOKEN}".encode()).decode()
    api_key = "Basic " + base64.b64encode(f"{API_KEY_SID}:{API_KEY_SECRET}".encode()).decode()

    class Handler(FakeHandler):
        def do_GET(self) -> None:
            url = urlsplit(self.path)
            fake.requests.append(("GET", url.path))
            if url.path.startswith("/cdn/"):
                fake.cdn_auth.append(self.headers.get("authorization"))
                served = fake.media.get(url.path.removeprefix("/cdn/"))
                if served is None:
                    return self._json(404, {"code": 20404, "message": "not found"})
                return self._bytes(*served)
            if url.path.startswith(media_prefix) and "/Media/" in url.path:
                fake.media_auth.append(self.headers.get("authorization"))
                if not self._authorized(also=api_key):
                    return None
                media_sid = url.path.rsplit("/", 1)[1]
                self.send_response(302)
                self.send_header("Location", f"http://{fake.cdn_host}:{fake.port}/cdn/{media_sid}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            if url.path == messages_path:
                if not self._authorized():
                    return None
                query = dict(parse_qsl(url.query))
                with fake.lock:
                    found = [
                        m
                        for m in reversed(fake.messages)
                        if m["to"] == query.get("To", m["to"])
                        and m["from"] == query.get("From", m["from"])
                    ]
                page = {"messages": found[:50], "next_page_uri": None, "page_size": 50}
                return self._json(200, page)
            self._json(404, {"code": 20404, "message": "not found"})

        def do_POST(self) -> None:
            url = urlsplit(self.path)
            fake.requests.append(("POST", url.path))
            raw = self.body()
            if url.path != messages_path:
                return self._json(404, {"code": 20404, "message": "not found"})
            if not self._authorized():
                return None
            fault = fake.next_fault()
            if fault == "429":
                extra = {"Retry-After": fake.retry_after}
                return self._json(429, {"code": 20429, "message": "Too Many Requests"}, extra)
            if fault in ("500", "400"):
                error = {"code": 21211, "message": "The 'To' number is not a valid phone number."}
                return self._json(int(fault), error)
            form = {k: v[0] for k, v in parse_qs(raw.decode(), keep_blank_values=True).items()}
            message = {
                "sid": "SM" + uuid.uuid4().hex,
                "account_sid": ACCOUNT_SID,
                "to": form["To"],
                "from": form["From"],
                "body": form["Body"],
                "status": "queued",
                "direction": "outbound-api",
                "date_created": format_datetime(datetime.now(UTC), usegmt=True),
                "date_sent": None,
                "status_callback": form.get("StatusCallback"),
            }
            with fake.lock:
                fake.messages.append(message)
            if fake.hold(fault, self):
                return None
            answer = {k: v for k, v in message.items() if k != "status_callback"}
            self._json(201, answer)
            return None

        def _authorized(self, also: str | None = None) -> bool:
            if self.headers.get("authorization") in (basic, also):
                return True
            self._json(401, {"code": 20003, "message": "Authenticate"})
            return False

    return Handler


def fake_twilio(cdn_host: str = "127.0.0.1") -> FakeTwilio:
    return FakeTwilio(cdn_host)
