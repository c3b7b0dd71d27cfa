"""A subscriber's receiver of outbound events on loopback: checks every request's signature
with the ``standardwebhooks`` package, as a subscriber would, and keeps what it accepted.

Faults (``FakeServer.faults``, one per request in order): ``"503"`` answers 503, ``"drop"``
closes the connection without an answer (a receiver that is down); ``"hang"`` answers late.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

from standardwebhooks import Webhook, WebhookVerificationError

from tests.fakehttp import FakeHandler, FakeServer


@dataclass(frozen=True)
class Received:
    webhook_id: str
    type: str
    body: dict[str, Any]
    signature: str
    verified_by: frozenset[str]  # the secrets that verify it


class Receiver(FakeServer):
    def __init__(self) -> None:
        self.secrets: list[str] = []  # what it verifies with; set by the test
        self.accepted: list[Received] = []  # answered 200, in order
        self.refused = 0  # answered otherwise (a fault, or a bad signature)
        super().__init__(_handler)

    def ids(self) -> list[str]:
        with self.lock:
            return [r.webhook_id for r in self.accepted]

    def verify(self, raw: bytes, headers: dict[str, str]) -> frozenset[str]:
        ok = set()
        for secret in self.secrets:
            try:
                Webhook(secret).verify(raw, headers)
            except WebhookVerificationError:
                continue
            ok.add(secret)
        return frozenset(ok)


def _handler(server: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(FakeHandler):
        def do_POST(self) -> None:  # noqa: N802
            raw = self.body()
            fault = server.next_fault()
            headers = {k.lower(): v for k, v in self.headers.items()}
            if fault == "503":
                with server.lock:
                    server.refused += 1
                self._json(503, {"error": "down"})
                return
            if server.hold(fault, self):
                with server.lock:
                    server.refused += 1
                return
            verified = server.verify(raw, headers)
            with server.lock:
                if not verified:
                    server.refused += 1
                else:
                    payload = json.loads(raw)
                    server.accepted.append(
                        Received(
                            headers["webhook-id"],
                            payload["type"],
                            payload,
                            headers["webhook-signature"],
                            verified,
                        )
                    )
            self._json(200 if verified else 401, {})

    return Handler


@contextmanager
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r
