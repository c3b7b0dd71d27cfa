"""A site's server on loopback, as schemas/widget.py ``WidgetReply`` asks it to behave: it takes
our replies at ``POST /chat/replies``, checks their Standard Webhooks signature with the
``standardwebhooks`` reference library (``Webhook.verify``), and shows each ``webhook-id`` once,
answering 2xx to a repeat. It also serves the files visitors uploaded (``GET /uploads/<name>``).

Scripted faults, one per reply post, in order: ``"429"`` (with ``Retry-After: retry_after``) /
``"500"`` / ``"400"``: that answer, nothing shown; ``"hang"`` / ``"drop"`` / ``"block"``: the
reply is shown, then the answer comes late / never / once ``release`` is set.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

SECRET = "whsec_c2l0ZS1yZXBseS1zZWNyZXQtMjAyNi0xMS0yNQ=="
REPLIES_PATH = "/chat/replies"


class FakeSite:
    def __init__(self) -> None:
        self.shown: dict[str, dict[str, Any]] = {}  # webhook-id -> the reply, in order shown
        self.posts: list[tuple[str, dict[str, Any]]] = []  # every authentic post: (id, body)
        self.refused: list[str] = []  # why posts were refused (signature)
        self.files: dict[str, tuple[str, bytes]] = {}  # name -> (content type, bytes)
        self.faults: deque[str] = deque()
        self.retry_after = 4
        self.hang_s = 3.0
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.reply_url = self.url + REPLIES_PATH
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    def next_fault(self) -> str | None:
        with self.lock:
            return self.faults.popleft() if self.faults else None


def _handler(site: FakeSite) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            name = self.path.removeprefix("/uploads/")
            if not self.path.startswith("/uploads/") or name not in site.files:
                return self._answer(404, {"error": "not found"})
            content_type, content = site.files[name]
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)
            return None

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("content-length", 0)))
            if self.path != REPLIES_PATH:
                return self._answer(404, {"error": "not found"})
            try:
                body = Webhook(SECRET).verify(raw, dict(self.headers.items()))
            except WebhookVerificationError as exc:
                site.refused.append(str(exc))
                return self._answer(401, {"error": "bad signature"})
            webhook_id = self.headers["webhook-id"]
            fault = site.next_fault()
            if fault == "429":
                return self._answer(429, {"error": "slow down"}, {"Retry-After": site.retry_after})
            if fault in ("500", "400"):
                return self._answer(int(fault), {"error": f"fault {fault}"})
            with site.lock:
                site.posts.append((webhook_id, body))
                site.shown.setdefault(webhook_id, body)  # a repeat is not shown again
            if fault == "hang":
                time.sleep(site.hang_s)
            elif fault == "block":
                site.release.wait(60)
            elif fault == "drop":
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return None
            return self._answer(200, {"ok": True})

        def _answer(self, status: int, payload: Any, headers: dict[str, Any] | None = None) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, str(value))
            self.end_headers()
            self.wfile.write(data)

    return Handler


@contextmanager
def fake_site() -> Iterator[FakeSite]:
    site = FakeSite()
    try:
        yield site
    finally:
        site.close()
