"""A stand-in for the Telegram Bot API on loopback: ``sendMessage``, ``getFile`` and file
downloads, answered in the Bot API's own shapes (https://core.telegram.org/bots/api#making-requests),
with scripted faults for ``sendMessage``, one per request, in order:

- ``"429"``: ``{"ok": false, "error_code": 429, "parameters": {"retry_after": N}}`` and, as
  Telegram does, no ``Retry-After`` header; nothing is sent;
- ``"500"`` / ``"400"`` / ``"403"`` (the user blocked the bot): that answer, nothing sent;
- ``"hang"``: the message is sent, the answer comes after ``hang_s`` (the client timed out);
- ``"drop"``: the message is sent, the connection is closed without an answer;
- ``"block"``: the message is sent, the answer waits until ``release`` is set.

A request with another bot token is answered 401, as Telegram does.
"""

from __future__ import annotations

import itertools
import json
import time
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from tests.fakehttp import FakeHandler, FakeServer

BOT_TOKEN = "7000111333:AAHf4k3-t0k3n_9f8e7d6c5b4a3f2e1d0c"
FAULT_ANSWERS = {
    "500": (500, "Internal Server Error"),
    "400": (400, "Bad Request: chat not found"),
    "403": (403, "Forbidden: bot was blocked by the user"),
}


class FakeTelegram(FakeServer):
    # requests: (HTTP method, Bot API method or "file")
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []  # sendMessage bodies it took, with "message_id"
        self.files: dict[str, tuple[str, bytes]] = {}  # file_id -> (file_path, content)
        self.retry_after = 7
        self._ids = itertools.count(500)
        super().__init__(_handler)

    def add_file(self, file_id: str, file_path: str, content: bytes) -> None:
        self.files[file_id] = (file_path, content)


def _handler(fake: FakeTelegram) -> type[BaseHTTPRequestHandler]:
    class Handler(FakeHandler):
        def do_GET(self) -> None:
            url = urlsplit(self.path)
            if url.path.startswith("/file/bot"):
                fake.requests.append(("GET", "file"))
                token, _, file_path = url.path.removeprefix("/file/bot").partition("/")
                if token != BOT_TOKEN:
                    return self._error(401, "Unauthorized")
                for path, content in fake.files.values():
                    if path == file_path:
                        return self._bytes(content)
                return self._error(404, "Not Found")
            self._method("GET", url.path, dict(parse_qsl(url.query)))

        def do_POST(self) -> None:
            raw = self.body()
            try:
                body = json.loads(raw) if raw else {}
            except ValueError:
                return self._error(400, "Bad Request: can't parse JSON")
            self._method("POST", urlsplit(self.path).path, body)

        def _method(self, http_method: str, path: str, params: dict[str, Any]) -> None:
            token, _, method = path.removeprefix("/bot").partition("/")
            fake.requests.append((http_method, method))
            if not path.startswith("/bot") or token != BOT_TOKEN:
                return self._error(401, "Unauthorized")
            if method == "getFile":
                return self._get_file(str(params.get("file_id", "")))
            if method == "sendMessage":
                return self._send_message(params)
            return self._error(404, "Not Found: method not found")

        def _get_file(self, file_id: str) -> None:
            if file_id not in fake.files:
                return self._error(400, "Bad Request: invalid file_id")
            file_path, content = fake.files[file_id]
            result = {
                "file_id": file_id,
                "file_unique_id": f"u{file_id[-6:]}",
                "file_size": len(content),
                "file_path": file_path,
            }
            return self._json(200, {"ok": True, "result": result})

        def _send_message(self, body: dict[str, Any]) -> None:
            fault = fake.next_fault()
            if fault == "429":
                return self._error(
                    429,
                    f"Too Many Requests: retry after {fake.retry_after}",
                    parameters={"retry_after": fake.retry_after},
                )
            if fault in FAULT_ANSWERS:
                return self._error(*FAULT_ANSWERS[fault])
            if "chat_id" not in body or not body.get("text"):
                return self._error(400, "Bad Request: message text is empty")
            with fake.lock:
                message = {**body, "message_id": next(fake._ids)}
                fake.sent.append(message)
            if fake.hold(fault, self):
                return None
            result = {
                "message_id": message["message_id"],
                "from": {"id": 7000111333, "is_bot": True, "first_name": "Acme Suporte"},
                "chat": {"id": body["chat_id"], "type": "private"},
                "date": int(time.time()),
                "text": body["text"],
            }
            return self._json(200, {"ok": True, "result": result})

        def _error(self, status: int, description: str, **extra: Any) -> None:
            self._json(
                status, {"ok": False, "error_code": status, "description": description, **extra}
            )

    return Handler


def fake_telegram() -> FakeTelegram:
    return FakeTelegram()
