"""A stand-in for Slack on loopback: the Web API methods inboxsync calls, under ``/api/``
(``chat.postMessage``, ``conversations.replies``, ``conversations.history``), and private file
downloads under ``/files-pri/``, answered in Slack's own shapes (https://api.slack.com/web).

Slack answers 200 with ``{"ok": false, "error": …}`` for what it refuses, a wrong token included
(``invalid_auth``); and a file asked for without a good token is answered 200 with its HTML
sign-in page, not a 401. Scripted faults for ``chat.postMessage``, one per request, in order:

- ``"429"``: HTTP 429 with ``Retry-After: <retry_after>`` and ``{"ok": false, "error":
  "ratelimited"}``; nothing posted;
- ``"500"``: HTTP 500; nothing posted;
- any other Slack error name (``"channel_not_found"``, ``"not_in_channel"``,
  ``"service_unavailable"``, …): 200 with that error; nothing posted;
- ``"fatal_error"``: the message IS posted, then 200 with that error (Slack: "it's possible some
  aspect of the operation succeeded");
- ``"reset"``: the connection is closed before the request is read; nothing posted;
- ``"hang"``: posted, the answer comes after ``hang_s`` (the client timed out);
- ``"drop"``: posted, the connection closed without an answer;
- ``"block"``: posted, the answer waits until ``release`` is set.
"""

from __future__ import annotations

import base64
import itertools
import json
import time
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from tests.fakehttp import FakeHandler, FakeServer

BOT_TOKEN = "xoxb-6001122334-7002233445566-Fk4e3d2c1b0a9Z8y7X6w5V4u"
BOT_USER, BOT_ID, APP_ID = "U07BOTACME", "B07BOTACME", "A07INBX5YNC"
SIGN_IN_PAGE = b"<!DOCTYPE html><html><head><title>Slack</title></head><body>Sign in</body></html>"
POSTED_THEN_FAILED = frozenset({"fatal_error"})


class FakeSlack(FakeServer):
    # requests: (HTTP method, Web API method or "file")
    def __init__(self) -> None:
        # Every message in the workspace the fake knows, ours and others', as Slack keeps them.
        self.messages: list[dict[str, Any]] = []
        self.files: dict[str, tuple[bytes, str]] = {}  # path -> (content, content type)
        self.retry_after = 7
        self._seq = itertools.count(1)
        super().__init__(_handler)
        self.api_url = f"{self.url}/api"

    @property
    def posted(self) -> list[dict[str, Any]]:
        """What our bot posted (``chat.postMessage`` bodies Slack took, with their ``ts``)."""
        return [m for m in self.messages if m.get("bot_id") == BOT_ID]

    def add_file(self, path: str, content: bytes, content_type: str) -> str:
        """Serve ``content`` at ``path``; the URL to put in a fixture's ``url_private_download``."""
        self.files[path] = (content, content_type)
        return f"{self.url}{path}"

    def add_message(self, channel: str, text: str, thread_ts: str | None = None) -> dict[str, Any]:
        """Someone else's message (a customer's, a colleague's)."""
        return self._keep(
            {"type": "message", "user": "U05SOMEONE", "text": text}, channel, thread_ts
        )

    def _keep(self, message: dict[str, Any], channel: str, thread_ts: str | None) -> dict[str, Any]:
        with self.lock:
            # Slack's ts: unique and increasing in a channel; here across the workspace.
            kept = {
                **message,
                "channel": channel,
                "ts": f"{int(time.time())}.{next(self._seq):06d}",
            }
            if thread_ts:
                kept["thread_ts"] = thread_ts
            self.messages.append(kept)
            return kept


def _handler(fake: FakeSlack) -> type[BaseHTTPRequestHandler]:
    class Handler(FakeHandler):
        json_type = "application/json; charset=utf-8"

        def _authorized(self) -> bool:
            return bool(self.headers.get("Authorization") == f"Bearer {BOT_TOKEN}")

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            if url.path.startswith("/files-pri/"):
                fake.requests.append(("GET", "file"))
                if not self._authorized():
                    return self._bytes(SIGN_IN_PAGE, "text/html; charset=utf-8")
                if url.path not in fake.files:
                    return self._json(404, {"ok": False, "error": "file_not_found"})
                return self._bytes(*fake.files[url.path])
            method = url.path.removeprefix("/api/")
            fake.requests.append(("GET", method))
            if not self._authorized():
                return self._json(200, {"ok": False, "error": "invalid_auth"})
            query = dict(parse_qsl(url.query))
            if method == "conversations.replies":
                return self._page(query, lambda m: query.get("ts") in (m.get("thread_ts"), m["ts"]))
            if method == "conversations.history":
                return self._page(query, lambda m: m.get("thread_ts") in (None, m["ts"]))
            return self._json(200, {"ok": False, "error": "unknown_method"})

        def do_POST(self) -> None:
            method = urlsplit(self.path).path.removeprefix("/api/")
            fake.requests.append(("POST", method))
            fault = fake.next_fault() if method == "chat.postMessage" else None
            if fault == "reset":
                return self.drop()
            raw = self.body()
            if fault == "429":
                headers = {"Retry-After": str(fake.retry_after)}
                return self._json(429, {"ok": False, "error": "ratelimited"}, headers)
            if fault == "500":
                return self._json(500, {"ok": False, "error": "internal_server_error"})
            if (
                fault is not None
                and fault not in POSTED_THEN_FAILED
                and fault
                not in (
                    "hang",
                    "drop",
                    "block",
                )
            ):
                return self._json(200, {"ok": False, "error": fault})
            if not self._authorized():
                return self._json(200, {"ok": False, "error": "invalid_auth"})
            if method != "chat.postMessage":
                return self._json(200, {"ok": False, "error": "unknown_method"})
            try:
                body = json.loads(raw)
            except ValueError:
                return self._json(200, {"ok": False, "error": "invalid_json"})
            if not body.get("channel"):
                return self._json(200, {"ok": False, "error": "channel_not_found"})
            if not body.get("text"):
                return self._json(200, {"ok": False, "error": "no_text"})
            message = {
                "type": "message",
                "user": BOT_USER,
                "bot_id": BOT_ID,
                "app_id": APP_ID,
                "text": body["text"],
            }
            if body.get("metadata"):
                message["metadata"] = body["metadata"]
            kept = fake._keep(message, body["channel"], body.get("thread_ts"))
            if fault in POSTED_THEN_FAILED:
                return self._json(200, {"ok": False, "error": fault})
            if fake.hold(fault, self):
                return None
            answer = {k: v for k, v in kept.items() if k != "metadata"}
            return self._json(
                200, {"ok": True, "channel": kept["channel"], "ts": kept["ts"], "message": answer}
            )

        def _page(self, query: dict[str, str], wanted: Any) -> None:
            """Messages of the channel, oldest first, ``limit`` at a time after ``cursor``;
            metadata only when asked for (``include_all_metadata``)."""
            oldest = float(query.get("oldest") or 0)
            found = [
                m
                for m in fake.messages
                if m["channel"] == query.get("channel") and float(m["ts"]) > oldest and wanted(m)
            ]
            start = int(base64.b64decode(query["cursor"]).decode()) if query.get("cursor") else 0
            limit = int(query.get("limit") or 100)
            page = found[start : start + limit]
            if query.get("include_all_metadata") != "true":
                page = [{k: v for k, v in m.items() if k != "metadata"} for m in page]
            more = start + limit < len(found)
            cursor = base64.b64encode(str(start + limit).encode()).decode() if more else ""
            return self._json(
                200,
                {
                    "ok": True,
                    "messages": page,
                    "has_more": more,
                    "response_metadata": {"next_cursor": cursor},
                },
            )

    return Handler


def fake_slack() -> FakeSlack:
    return FakeSlack()
