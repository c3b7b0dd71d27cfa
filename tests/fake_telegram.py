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
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

BOT_TOKEN = "7000111333:AAHf4k3-t0k3n_9f8e7d6c5b4a3f2e1d0c"
FAULT_ANSWERS = {
    "500": (500, "Internal Server Error"),
    "400": (400, "Bad Request: chat not found"),
    "403": (403, "Forbidden: bot was blocked by the user"),
}


class FakeTelegram:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []  # sendMessage bodies it took, with "message_id"
        self.requests: list[tuple[str, str]] = []  # (HTTP method, Bot API method or "file")
        self.files: dict[str, tuple[str, bytes]] = {}  # file_id -> (file_path, content)
        self.faults: deque[str] = deque()
        self.retry_after = 7
        self.hang_s = 3.0
        self.release = threading.Event()
        self.lock = threading.Lock()
        self._ids = itertools.count(500)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add_file(self, file_id: str, file_path: str, content: bytes) -> None:
        self.files[file_id] = (file_path, content)

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    def next_fault(self) -> str | None:
        with self.lock:
            return self.faults.popleft() if self.faults else None


def _handler(fake: FakeTelegram) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass  # the request line holds the bot token

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
            raw = self.rfile.read(int(self.headers.get("content-length", 0)))
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
            if fault == "hang":
                time.sleep(fake.hang_s)
            elif fault == "block":
                fake.release.wait(60)
            elif fault == "drop":
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
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

        def _json(self, status: int, payload: Any) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _bytes(self, content: bytes) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

    return Handler


@contextmanager
def fake_telegram() -> Iterator[FakeTelegram]:
    fake = FakeTelegram()
    try:
        yield fake
    finally:
        fake.close()
