"""A site's server on loopback, as schemas/widget.py ``WidgetReply`` asks it to behave: it takes
our replies at ``POST /chat/replies``, checks their Standard Webhooks signature with the
``standardwebhooks`` reference library (``Webhook.verify``), and shows each ``webhook-id`` once,
answering 2xx to a repeat. It also serves the files visitors uploaded (``GET /uploads/<name>``).

Scripted faults, one per reply post, in order: ``"429"`` (with ``Retry-After: retry_after``) /
``"500"`` / ``"400"``: that answer, nothing shown; ``"hang"`` / ``"drop"`` / ``"block"``: the
reply is shown, then the answer comes late / never / once ``release`` is set.
"""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tests.fakehttp import FakeHandler, FakeServer

SECRET = "whsec_c2l0ZS1yZXBseS1zZWNyZXQtMjAyNi0xMS0yNQ=="
REPLIES_PATH = "/chat/replies"


class FakeSite(FakeServer):
    def __init__(self) -> None:
        self.shown: dict[str, dict[str, Any]] = {}  # webhook-id -> the reply, in order shown
        self.posts: list[tuple[str, dict[str, Any]]] = []  # every authentic post: (id, body)
        self.refused: list[str] = []  # why posts were refused (signature)
        self.files: dict[str, tuple[str, bytes]] = {}  # name -> (content type, bytes)
        self.retry_after = 4
        super().__init__(_handler)
        self.reply_url = self.url + REPLIES_PATH


def _handler(site: FakeSite) -> type[BaseHTTPRequestHandler]:
    class Handler(FakeHandler):
        def do_GET(self) -> None:
            name = self.path.removeprefix("/uploads/")
            if not self.path.startswith("/uploads/") or name not in site.files:
                return self._json(404, {"error": "not found"})
            content_type, content = site.files[name]
            return self._bytes(content, content_type)

        def do_POST(self) -> None:
            raw = self.body()
            if self.path != REPLIES_PATH:
                return self._json(404, {"error": "not found"})
            try:
                body = Webhook(SECRET).verify(raw, dict(self.headers.items()))
            except WebhookVerificationError as exc:
                site.refused.append(str(exc))
                return self._json(401, {"error": "bad signature"})
            webhook_id = self.headers["webhook-id"]
            fault = site.next_fault()
            if fault == "429":
                return self._json(429, {"error": "slow down"}, {"Retry-After": site.retry_after})
            if fault in ("500", "400"):
                return self._json(int(fault), {"error": f"fault {fault}"})
            with site.lock:
                site.posts.append((webhook_id, body))
                site.shown.setdefault(webhook_id, body)  # a repeat is not shown again
            if site.hold(fault, self):
                return None
            return self._json(200, {"ok": True})

    return Handler


def fake_site() -> FakeSite:
    return FakeSite()
