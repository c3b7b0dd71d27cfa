"""What the loopback stand-ins for providers (tests/fake_*.py, tests/fakeproviders.py) share: a
real HTTP server on a free port of 127.0.0.1, the requests it saw, scripted faults taken one per
request in order, and the faults that keep what was sent but hold the answer:

- ``"hang"``: the answer comes after ``hang_s`` (the client has timed out);
- ``"block"``: the answer waits until ``release`` is set (a worker killed meanwhile);
- ``"drop"``: the connection is closed without an answer.

A fake is a context manager: leaving it releases what is held and stops the server.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self


class FakeServer:
    def __init__(self, handler: Callable[[Any], type[BaseHTTPRequestHandler]]) -> None:
        """Serve at once, with the request handler class ``handler(self)`` makes."""
        self.requests: list[tuple[str, str]] = []
        self.faults: deque[str] = deque()
        self.hang_s = 3.0
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler(self))
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

    def hold(self, fault: str | None, handler: FakeHandler) -> bool:
        """After keeping what a request sent: play ``fault`` if it is one that holds the answer;
        True when the connection was dropped (nothing more to answer)."""
        if fault == "hang":
            time.sleep(self.hang_s)
        elif fault == "block":
            self.release.wait(60)
        elif fault == "drop":
            handler.drop()
            return True
        return False

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class FakeHandler(BaseHTTPRequestHandler):
    """HTTP/1.1, silent (request lines can hold tokens), with the answers every fake gives."""

    protocol_version = "HTTP/1.1"
    json_type = "application/json"

    def log_message(self, *args: Any) -> None:
        pass

    def body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("content-length", 0)))

    def drop(self) -> None:
        """Close the connection without an answer."""
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)

    def _json(self, status: int, payload: Any, headers: dict[str, Any] | None = None) -> None:
        self._bytes(json.dumps(payload).encode(), self.json_type, status, headers)

    def _bytes(
        self,
        content: bytes,
        content_type: str = "application/octet-stream",
        status: int = 200,
        headers: dict[str, Any] | None = None,
    ) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, str(value))
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)
