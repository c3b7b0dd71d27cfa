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
import json
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlsplit

ACCOUNT_SID = "AC4c122831efef10ac68b5223dccd6f614"  # the fixtures' AccountSid
AUTH_TOKEN = "tw-auth-token-0123456789abcdef"
# An API key (https://www.twilio.com/docs/iam/api-keys), which media requests also take.
API_KEY_SID, API_KEY_SECRET = "SK" + "5e" * 16, "tw-api-key-secret"


class FakeTwilio:
    def __init__(self, cdn_host: str = "127.0.0.1") -> None:
        self.messages: list[dict[str, Any]] = []
        self.requests: list[tuple[str, str]] = []
        self.faults: deque[str] = deque()
        self.hang_s = 3.0
        self.retry_after = "7"
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.media: dict[str, tuple[bytes, str]] = {}
        self.media_auth: list[str | None] = []  # the Authorization header of each media request
        self.cdn_auth: list[str | None] = []  # … and of each CDN request
        self.cdn_host = cdn_host
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    def media_url(self, message_sid: str, media_sid: str, host: str = "127.0.0.1") -> str:
        return (
            f"http://{host}:{self.port}/2010-04-01/Accounts/{ACCOUNT_SID}"
            f"/Messages/{message_sid}/Media/{media_sid}"
        )

    def next_fault(self) -> str | None:
        with self.lock:
            return self.faults.popleft() if self.faults else None


def _handler(fake: FakeTwilio) -> type[BaseHTTPRequestHandler]:
    messages_path = f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"
    media_prefix = f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/"
    basic = "Basic " + base64.b64encode(f"{ACCOUNT_SID}:{AUTH_TOKEN}".encode()).decode()
    api_key = "Basic " + base64.b64encode(f"{API_KEY_SID}:{API_KEY_SECRET}".encode()).decode()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            fake.requests.append(("GET", url.path))
            if url.path.startswith("/cdn/"):
                fake.cdn_auth.append(self.headers.get("authorization"))
                served = fake.media.get(url.path.removeprefix("/cdn/"))
                if served is None:
                    return self._json(404, {"code": 20404, "message": "not found"})
                return self._bytes(200, *served)
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
            raw = self.rfile.read(int(self.headers.get("content-length", 0)))
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
            if fault == "hang":
                time.sleep(fake.hang_s)
            elif fault == "block":
                fake.release.wait(60)
            elif fault == "drop":
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return None
            answer = {k: v for k, v in message.items() if k != "status_callback"}
            self._json(201, answer)
            return None

        def _authorized(self, also: str | None = None) -> bool:
            if self.headers.get("authorization") in (basic, also):
                return True
            self._json(401, {"code": 20003, "message": "Authenticate"})
            return False

        def _json(self, status: int, payload: Any, extra: dict[str, str] | None = None) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            for name, value in (extra or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _bytes(self, status: int, data: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


@contextmanager
def fake_twilio(cdn_host: str = "127.0.0.1") -> Iterator[FakeTwilio]:
    fake = FakeTwilio(cdn_host)
    try:
        yield fake
    finally:
        fake.close()
