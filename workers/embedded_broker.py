"""The embedded broker: a kombu transport that keeps its queues in one SQLite file.

``sqlq+sqlite:////abs/path/broker.sqlite`` is what inboxsync uses when ``CELERY_BROKER_URL`` is not
set, so that the embedded default needs no server and still keeps on disk every message it
accepted (WAL, ``synchronous=FULL``: a publish returns after its commit is durable).

A message is a row. A consumer claims it by moving its ``visible_at`` one visibility timeout into
the future under a fresh claim token; the acknowledgement deletes the row (if the claim is still
the consumer's); a rejection with requeue, or a channel closing with messages unacknowledged, makes
the row visible again. A worker killed outright leaves its claims to expire: the messages come back
after ``visibility_timeout`` seconds (transport option, default 60). Nothing is ever copied, so a
restore cannot duplicate a message.

Exchanges and bindings live in each process's memory, as in every kombu virtual transport: Celery
declares a task's queue before publishing to it, which is all inboxsync needs. Broadcasts (remote
control) and events do not cross processes on this broker; celeryconfig.py turns them off here.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import uuid
from queue import Empty
from typing import Any

from kombu.transport import TRANSPORT_ALIASES, virtual

TRANSPORT_ALIASES["sqlq"] = "workers.embedded_broker:Transport"

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    queue      TEXT    NOT NULL,
    payload    TEXT    NOT NULL,
    visible_at REAL    NOT NULL,
    claim      TEXT,
    deliveries INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS messages_by_queue ON messages (queue, visible_at, id);
"""

ROW_ID = "sqlq_row_id"
CLAIM = "sqlq_claim"


def database_path(url_host: str) -> str:
    """``sqlite:////abs/path`` (what kombu leaves after ``sqlq+``) → ``/abs/path``."""
    if not url_host.startswith("sqlite:///"):
        raise ValueError(f"the embedded broker wants sqlq+sqlite:///<path>, not {url_host!r}")
    return url_host[len("sqlite:///") :]


class Queues:
    """The SQL of the broker, over one connection shared by a channel's threads (Celery acks
    from its result-handler thread while the consumer thread polls)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._conn = self._connect()

    def _connect(self) -> sqlite3.Connection:
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=30000")
        conn.executescript(SCHEMA)
        return conn

    def _execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        with self._lock:
            if os.getpid() != self._pid:  # a forked child must not share the parent's handle
                self._pid, self._conn = os.getpid(), self._connect()
            return self._conn.execute(sql, params).fetchall()

    def put(self, queue: str, payload: str) -> None:
        self._execute(
            "INSERT INTO messages (queue, payload, visible_at) VALUES (?, ?, ?)",
            (queue, payload, time.time()),
        )

    def claim(self, queue: str, visibility_timeout: float) -> tuple[int, str, str] | None:
        now = time.time()
        # A plain read first: an idle poll must not take the write lock.
        if not self._execute(
            "SELECT 1 FROM messages WHERE queue = ? AND visible_at <= ? LIMIT 1", (queue, now)
        ):
            return None
        token = uuid.uuid4().hex
        with self._lock:
            if os.getpid() != self._pid:
                self._pid, self._conn = os.getpid(), self._connect()
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute(
                    "UPDATE messages SET visible_at = ?, claim = ?, deliveries = deliveries + 1"
                    " WHERE id = (SELECT id FROM messages WHERE queue = ? AND visible_at <= ?"
                    "             ORDER BY id LIMIT 1)"
                    " RETURNING id, payload",
                    (now + visibility_timeout, token, queue, now),
                ).fetchone()
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return None if row is None else (row[0], row[1], token)

    def delete(self, row_id: int, claim: str) -> None:
        self._execute("DELETE FROM messages WHERE id = ? AND claim = ?", (row_id, claim))

    def release(self, row_id: int, claim: str) -> None:
        self._execute(
            "UPDATE messages SET visible_at = ?, claim = NULL WHERE id = ? AND claim = ?",
            (time.time(), row_id, claim),
        )

    def size(self, queue: str) -> int:
        return int(self._execute("SELECT count(*) FROM messages WHERE queue = ?", (queue,))[0][0])

    def purge(self, queue: str) -> int:
        with self._lock:
            cursor = self._conn.execute("DELETE FROM messages WHERE queue = ?", (queue,))
            return cursor.rowcount

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class Channel(virtual.Channel):
    # Exchanges are per process (see the module docstring); a message no binding matches
    # (events, broadcasts) is dropped rather than parked in a queue nobody reads.
    deadletter_queue = None
    visibility_timeout: float = 60.0
    # kombu types it as a 2-tuple
    from_transport_options = (  # type: ignore[assignment]
        *virtual.Channel.from_transport_options,
        "visibility_timeout",
    )

    def __init__(self, connection: Any, **kwargs: Any) -> None:
        super().__init__(connection, **kwargs)
        self.queues = Queues(database_path(self.connection.client.hostname))

    def _new_queue(self, queue: str, **kwargs: Any) -> None:
        pass  # one table holds every queue

    def _has_queue(self, queue: str, **kwargs: Any) -> bool:
        return True

    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        self.queues.put(queue, json.dumps(message))

    def _get(self, queue: str, timeout: float | None = None) -> dict[str, Any]:
        claimed = self.queues.claim(queue, self.visibility_timeout)
        if claimed is None:
            raise Empty()
        row_id, payload, token = claimed
        message: dict[str, Any] = json.loads(payload)
        message["properties"][ROW_ID] = row_id
        message["properties"][CLAIM] = token
        return message

    def _size(self, queue: str) -> int:
        return self.queues.size(queue)

    def _purge(self, queue: str) -> int:
        return self.queues.purge(queue)

    def _delete(self, queue: str, *args: Any, **kwargs: Any) -> None:
        self.queues.purge(queue)

    def _row(self, delivery_tag: Any) -> tuple[int, str] | None:
        message = self.qos._delivered.get(delivery_tag)
        if message is None:
            return None
        props = message.properties
        return props.get(ROW_ID), props.get(CLAIM)

    def basic_ack(self, delivery_tag: Any, multiple: bool = False) -> None:
        row = self._row(delivery_tag)
        if row is not None:
            self.queues.delete(*row)
        super().basic_ack(delivery_tag, multiple)

    def basic_reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        row = self._row(delivery_tag)
        if row is not None and not requeue:
            self.queues.delete(*row)
        super().basic_reject(delivery_tag, requeue)  # requeue → _restore_at_beginning

    def _restore(self, message: Any) -> None:
        # Unacknowledged at channel close, or rejected with requeue: visible again, not copied.
        props = message.properties
        if props.get(ROW_ID) is not None:
            self.queues.release(props[ROW_ID], props[CLAIM])

    def _restore_at_beginning(self, message: Any) -> None:
        self._restore(message)

    def close(self) -> None:
        super().close()  # restores what is unacknowledged first
        self.queues.close()


class Transport(virtual.Transport):
    Channel = Channel
    polling_interval = 0.02
    driver_type = "sql"
    driver_name = "sqlite"
    # kombu types these as 1-tuples; a locked or unreachable file is a connection error.
    connection_errors = (  # type: ignore[assignment]
        *virtual.Transport.connection_errors,
        sqlite3.OperationalError,
    )
    channel_errors = (  # type: ignore[assignment]
        *virtual.Transport.channel_errors,
        sqlite3.OperationalError,
    )

    def driver_version(self) -> str:
        return sqlite3.sqlite_version
