"""The HTTP service's access log, request ids and request counts, as one ASGI middleware.

Every request gets a request id (the caller's ``X-Request-Id``, or a new one), answered back in
``X-Request-Id`` and bound to every log line written while it is served; when it is answered, one
access line (method, path, status, time) and a count by route template and code. Webhooks are
counted and logged by their own handler (api/webhooks.py ``observed``), on the fast path too.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from observability import logs, metrics

access = logging.getLogger("inboxsync.access")
WEBHOOKS = "/webhooks/"


class Observed:
    def __init__(self, app: Any, access_log: bool = True) -> None:
        self.app, self.access_log = app, access_log

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path", "").startswith(WEBHOOKS):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        request_id = (headers.get(b"x-request-id") or b"").decode("latin-1")[:64]
        request_id = request_id or uuid.uuid4().hex
        started = time.monotonic()
        status = 500

        async def sending(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode()),
                ]
            await send(message)

        with logs.bind(request_id=request_id):
            try:
                await self.app(scope, receive, sending)
            finally:
                self._done(scope, status, started)

    def _done(self, scope: Any, status: int, started: float) -> None:
        route = getattr(scope.get("route"), "path", None) or "unmatched"
        if metrics.enabled():
            metrics.REQUESTS.labels(route, str(status)).inc()
        if self.access_log:
            took = (time.monotonic() - started) * 1000
            access.info("%s %s %s %.1fms", scope["method"], scope["path"], status, took)
