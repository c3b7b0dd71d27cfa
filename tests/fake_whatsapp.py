"""A stand-in for WhatsApp Cloud API (Meta's Graph API) on loopback: a real HTTP server.

- ``POST /{phone_number_id}/messages`` (bearer token): keeps the message and answers with its
  wamid, after the next scripted fault: ``"429"`` (HTTP 429, ``Retry-After: retry_after``),
  ``"throttled"`` (HTTP 400 with Meta's code 130429, as Graph API answers throughput limits),
  ``"400"`` (131047: the 24-hour window is closed), ``"500"``: answer it and keep nothing;
  ``"hang"``: keep it, answer after ``hang_s``; ``"drop"``: keep it, close the connection
  unanswered; ``"block"``: keep it, answer when ``release`` is set.
- ``GET /{media id}`` (bearer): where the file is: ``http://{cdn_host}:{port}/lookaside/{id}``, as
  Graph API answers a URL on lookaside.fbsbx.com; ``GET /lookaside/{id}`` (bearer) serves it.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

ACCESS_TOKEN = "EAAG-wa-access-token"
PHONE_NUMBER_ID = "106540352242922"  # the fixtures' metadata.phone_number_id


class FakeWhatsApp:
    def __init__(self, cdn_host: str = "127.0.0.1") -> None:
        self.messages: list[dict[str, Any]] = []
        self.requests: list[tuple[str, str]] = []
        self.faults: deque[str] = deque()
        self.hang_s = 3.0
        self.retry_after = "7"
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.media: dict[str, tuple[bytes, str]] = {}
        self.auth_seen: list[tuple[str, str | None]] = []  # (path, Authorization) of media GETs
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

    def next_fault(self) -> str | None:
        with self.lock:
            return self.faults.popleft() if self.faults else None


def _error(code: int, message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "OAuthException", "code": code}}


def _handler(fake: FakeWhatsApp) -> type[BaseHTTPRequestHandler]:
    bearer = f"Bearer {ACCESS_TOKEN}"

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            fake.requests.append(("GET", path))
            fake.auth_seen.append((path, self.headers.get("authorization")))
            if not self._authorized():
                return None
            if path.startswith("/lookaside/"):
                found = fake.media.get(path.removeprefix("/lookaside/"))
                if found is None:
                    return self._json(404, _error(100, "Unsupported get request"))
                data, content_type = found
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return None
            media_id = path.strip("/").rsplit("/", 1)[-1]
            if media_id not in fake.media:
                return self._json(400, _error(100, "Unsupported get request"))
            return self._json(
                200,
                {
                    "messaging_product": "whatsapp",
                    "url": f"http://{fake.cdn_host}:{fake.port}/lookaside/{media_id}",
                    "mime_type": fake.media[media_id][1],
                    "sha256": "0" * 64,
                    "file_size": str(len(fake.media[media_id][0])),
                    "id": media_id,
                },
            )

        def do_POST(self) -> None:
            path = urlsplit(self.path).path
            fake.requests.append(("POST", path))
            raw = self.rfile.read(int(self.headers.get("content-length", 0)))
            if not path.endswith("/messages"):
                return self._json(404, _error(100, "Unknown path"))
            if not self._authorized():
                return None
            fault = fake.next_fault()
            if fault == "429":
                extra = {"Retry-After": fake.retry_after}
                return self._json(429, _error(130429, "Rate limit hit"), extra)
            if fault == "throttled":
                return self._json(400, _error(130429, "Rate limit hit"))
            if fault == "400":
                return self._json(400, _error(131047, "Re-engagement message"))
            if fault == "500":
                return self._json(500, _error(1, "An unknown error occurred"))
            body = json.loads(raw)
            message = {
                "id": "wamid." + uuid.uuid4().hex,
                "phone_number_id": path.strip("/").split("/")[-2],
                "to": body["to"],
                "type": body["type"],
                "text": body["text"]["body"],
                "opaque": body.get("biz_opaque_callback_data"),
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
            self._json(
                200,
                {
                    "messaging_product": "whatsapp",
                    "contacts": [{"input": body["to"], "wa_id": body["to"]}],
                    "messages": [{"id": message["id"]}],
                },
            )
            return None

        def _authorized(self) -> bool:
            if self.headers.get("authorization") == bearer:
                return True
            self._json(401, _error(190, "Invalid OAuth access token"))
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

    return Handler


@contextmanager
def fake_whatsapp(cdn_host: str = "127.0.0.1") -> Iterator[FakeWhatsApp]:
    fake = FakeWhatsApp(cdn_host)
    try:
        yield fake
    finally:
        fake.close()
