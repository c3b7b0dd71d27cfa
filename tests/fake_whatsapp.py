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
import uuid
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import urlsplit

from tests.fakehttp import FakeHandler, FakeServer

ACCESS_TOKEN = "EAAG-wa-access-token"
PHONE_NUMBER_ID = "106540352242922"  # the fixtures' metadata.phone_number_id


class FakeWhatsApp(FakeServer):
    def __init__(self, cdn_host: str = "127.0.0.1") -> None:
        self.messages: list[dict[str, Any]] = []
        self.retry_after = "7"
        self.media: dict[str, tuple[bytes, str]] = {}
        self.auth_seen: list[tuple[str, str | None]] = []  # (path, Authorization) of media GETs
        self.cdn_host = cdn_host
        super().__init__(_handler)


def _error(code: int, message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "OAuthException", "code": code}}


def _handler(fake: FakeWhatsApp) -> type[BaseHTTPRequestHandler]:
    bearer = f"Bearer {ACCESS_TOKEN}"

    class Handler(FakeHandler):
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
                return self._bytes(*found)
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
            raw = self.body()
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
            if fake.hold(fault, self):
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

    return Handler


def fake_whatsapp(cdn_host: str = "127.0.0.1") -> FakeWhatsApp:
    return FakeWhatsApp(cdn_host)
