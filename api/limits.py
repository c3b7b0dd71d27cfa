"""What the HTTP edge refuses before any route runs (README: Ingestion, "Hostile input").

- ``BodyLimit``: a body over the limit is answered 413 before it is read into memory and before
  the caller is authenticated (FastAPI reads a route's body before its dependencies, auth among
  them). A declared ``Content-Length`` over the limit is refused before the app is called; a body
  without one (chunked) is counted as it arrives and refused at the first chunk past the limit.
  The limit is INBOXSYNC_MAX_API_BODY_BYTES, except on the webhook route, which keeps its own,
  INBOXSYNC_MAX_BODY_BYTES (its fast path, api/webhooks.py ``Ingress``, checks it without this).
- ``NoNul``: NUL in the path or the query string is a 422 naming where: no route takes one, and
  PostgreSQL cannot compare text with it (a 500 otherwise).

Both answer through the one mapping, api/errors.py, and read the settings per request. (FastAPI's
own ``max_body_size`` checks a declared length only once a route reads the body, and answers in
plain text where the app's handlers do not see it.)
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import errors
from api.errors import ApiError
from schemas.outbound import NUL_REFUSED
from settings import Settings

WEBHOOK_PREFIX = "/webhooks/"


class BodyTooLarge(ApiError):
    def __init__(self, limit: int) -> None:
        super().__init__(413, "too_large", f"body over {limit} bytes")


class BodyLimit:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app, self.settings = app, settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self._limit(scope["path"])
        declared = _header(scope, b"content-length")
        if declared.isdigit() and int(declared) > limit:
            await _refuse(send, BodyTooLarge(limit), {"Connection": "close"})
            return
        counted = _Counted(receive, send, limit)
        try:
            await self.app(scope, counted.receive, counted.send)
        except Exception:
            if not counted.tripped or counted.started:
                raise
        if counted.tripped and not counted.answered:
            await _refuse(send, BodyTooLarge(limit), {"Connection": "close"})

    def _limit(self, path: str) -> int:
        if path.startswith(WEBHOOK_PREFIX):
            return self.settings.max_body_bytes
        return self.settings.max_api_body_bytes


class _Counted:
    """The app's ``receive``, counting body bytes and raising ``BodyTooLarge`` past the limit;
    and its ``send``, which from then on answers the 413 in place of whatever the app answers
    (FastAPI turns any error while reading a body into a 400 of its own)."""

    def __init__(self, receive: Receive, send: Send, limit: int) -> None:
        self._receive, self._send, self.limit = receive, send, limit
        self.size = 0
        self.tripped = self.started = self.answered = False

    async def receive(self) -> Message:
        if self.tripped:  # the app asks again (to watch for a disconnect): there is no more
            return {"type": "http.disconnect"}
        message = await self._receive()
        if message["type"] == "http.request":
            self.size += len(message.get("body", b""))
            if self.size > self.limit:
                self.tripped = True
                raise BodyTooLarge(self.limit)
        return message

    async def send(self, message: Message) -> None:
        if not self.tripped or self.started:
            self.started = self.started or message["type"] == "http.response.start"
            await self._send(message)
        elif not self.answered:
            self.answered = True
            await _refuse(self._send, BodyTooLarge(self.limit), {"Connection": "close"})


class NoNul:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        where = _nul_in(scope) if scope["type"] == "http" else None
        if where is None:
            await self.app(scope, receive, send)
            return
        problem = [{"field": where, "problem": NUL_REFUSED}]
        await _refuse(send, ApiError(422, "invalid_request", f"{where}: {NUL_REFUSED}", problem))


def _nul_in(scope: Scope) -> str | None:
    """Where the request has a NUL: ``path``, ``query.<name>``, or None."""
    if "\x00" in scope["path"]:
        return "path"
    query: bytes = scope.get("query_string", b"")
    if b"%00" not in query and b"\x00" not in query:
        return None
    for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        if "\x00" in name:
            return "query"
        if "\x00" in value:
            return f"query.{name}"
    return None


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return ""


async def _refuse(send: Send, exc: Exception, extra: dict[str, str] | None = None) -> None:
    status, content, headers = errors.render(exc)
    await errors.send_json(send, status, content, {**headers, **(extra or {})})
