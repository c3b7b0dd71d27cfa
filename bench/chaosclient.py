"""The chaos run's clients: providers posting webhooks and agents using the API, as real ones do
while the services are being killed under them.

- A connection error, a timeout, a 5xx (503 included) or a 429 means "try again later": the
  same request again (a webhook re-signed, an action with its same Idempotency-Key), after an
  exponential, jittered pause. Only a 2xx answer (202 for a webhook; 200, 201 or 202 for an
  action) is a promise, and only promises are counted as what the store must hold.
- An action names a thread: the client finds the thread's conversation (``GET /messages``) and,
  for ticket actions, its ticket (``GET /conversations/{id}``) when it first sends it, once; its
  copies and retries send the same request with the same key. A ticket action on a
  conversation without a ticket creates the ticket instead (what an agent would do first).
- Plain HTTP/1.1 over asyncio streams with keep-alive, not an HTTP library: the chaos run shares
  two cores with everything it tests, and this costs a fraction of one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import random
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.chaostraffic import Action, Event, Message, Plan

REQUEST_TIMEOUT_S = 30.0
GIVE_UP_AFTER_S = 900.0  # a send still unanswered after this is reported, not retried forever
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
IDLE_S = 3.0


@dataclass(frozen=True)
class Directory:
    """What setup made: ids per account (in ACCOUNTS order) and the secrets to post with."""

    accounts: list[int]
    generic_inboxes: list[int]
    mail_inboxes: list[int]
    owners: list[list[int]]
    signing_secret: str
    bearer_secret: str
    admin_token: str


@dataclass
class Answer:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


class Connection:
    """One keep-alive HTTP/1.1 connection to the service."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self.used = time.monotonic()

    async def request(
        self, method: str, path: str, headers: dict[str, str], body: bytes = b""
    ) -> Answer:
        if self.streams is None:
            self.streams = await asyncio.open_connection("127.0.0.1", self.port)
        reader, writer = self.streams
        head = f"{method} {path} HTTP/1.1\r\nHost: chaos\r\nContent-Length: {len(body)}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        writer.write(head.encode() + b"\r\n" + body)
        await writer.drain()
        status_line = await reader.readline()
        if not status_line:
            raise ConnectionResetError("connection closed before an answer")
        status = int(status_line.split(b" ")[1])
        length, close = 0, False
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "connection" and value.strip().lower() == "close":
                close = True
        answer = Answer(status, await reader.readexactly(length))
        self.used = time.monotonic()
        if close:
            self.close()
        return answer

    def close(self) -> None:
        if self.streams is not None:
            self.streams[1].close()
            self.streams = None


@dataclass
class Tally:
    """What the clients saw."""

    sends: int = 0
    attempts: int = 0
    retries: Counter[str] = field(default_factory=Counter)  # why a request was sent again
    refused: Counter[str] = field(default_factory=Counter)  # 4xx answers to webhooks
    acknowledged: set[tuple[int, str]] = field(default_factory=set)  # (inbox, external id)
    acked_by_thread: dict[str, list[str]] = field(default_factory=dict)
    delivery_ids: set[int] = field(default_factory=set)
    answers: dict[str, tuple[int, str | None]] = field(default_factory=dict)  # action → last
    promised: set[str] = field(default_factory=set)  # actions ever answered 200, 201 or 202
    action_statuses: Counter[str] = field(default_factory=Counter)
    refusals: Counter[str] = field(default_factory=Counter)  # 4xx answers to actions, by reason
    skipped: dict[str, str] = field(default_factory=dict)  # actions never sent, and why
    gave_up: list[str] = field(default_factory=list)
    client_errors: list[str] = field(default_factory=list)
    seconds: dict[str, list[float]] = field(default_factory=dict)  # per send, retries included
    done: int = 0


class Clients:
    """Sends a plan's events with ``concurrency`` requests in flight, in the plan's order."""

    def __init__(self, port: int, plan: Plan, directory: Directory, concurrency: int) -> None:
        self.port, self.plan, self.dir = port, plan, directory
        self.concurrency = concurrency
        self.tally = Tally()
        self.dispatched = 0
        self.finished = False
        self._idle: list[Connection] = []
        self._resolved: dict[str, asyncio.Task[tuple[str, str, bytes] | None]] = {}
        self._first_mail = {thread: ids[0] for thread, ids in plan.mail_threads.items()}

    @property
    def progress(self) -> float:
        return self.dispatched / max(1, len(self.plan.sends))

    async def run(self) -> None:
        """Dispatch the sends in order. Webhooks and actions have slots of their own: an
        action waits for its thread's conversation and for a worker to apply it (seconds while
        workers are being killed), and providers do not wait for agents."""
        webhooks = asyncio.Semaphore(self.concurrency)
        actions = asyncio.Semaphore(max(1, self.concurrency // 2))
        running: set[asyncio.Task[None]] = set()
        for event in self.plan.sends:
            slots = actions if isinstance(event, Action) else webhooks
            await slots.acquire()
            task = asyncio.create_task(self._send(event))
            running.add(task)
            task.add_done_callback(running.discard)
            task.add_done_callback(_releasing(slots))
            self.dispatched += 1
        await asyncio.gather(*running)
        for conn in self._idle:
            conn.close()
        self.finished = True

    async def _send(self, event: Event) -> None:
        self.tally.sends += 1
        began = time.monotonic()
        kind = "action" if isinstance(event, Action) else "mail" if event.mail else "webhook"
        try:
            if isinstance(event, Message):
                await self._deliver(event)
            else:
                await self._act(event)
        except Exception as exc:  # noqa: BLE001 - the client's own bug: reported, fails the run
            self.tally.client_errors.append(f"{event.id}: {exc!r}")
        self.tally.seconds.setdefault(kind, []).append(time.monotonic() - began)
        self.tally.done += 1

    # ---- HTTP with retries ---------------------------------------------------------------------

    async def call(
        self,
        method: str,
        path: str,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
        sign: bool = False,
        what: str = "",
    ) -> Answer | None:
        """The request until it is answered with anything but a retry status; None if it never
        was within GIVE_UP_AFTER_S. ``sign``: a fresh generic signature on every attempt."""
        started = time.monotonic()
        for attempt in range(10_000):
            conn = self._connection()
            sent_headers = dict(headers or {})
            if sign:
                sent_headers.update(self._signature(body))
            self.tally.attempts += 1
            try:
                answer = await asyncio.wait_for(
                    conn.request(method, path, sent_headers, body), REQUEST_TIMEOUT_S
                )
            except TimeoutError:
                conn.close()
                reason = "timeout"
            except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
                conn.close()
                reason = "connection error"
            else:
                self._idle.append(conn)
                if answer.status not in RETRY_STATUSES:
                    return answer
                reason = str(answer.status)
            self.tally.retries[reason] += 1
            if time.monotonic() - started > GIVE_UP_AFTER_S:
                break
            await asyncio.sleep(min(5.0, 0.05 * 2**attempt) * random.uniform(0.5, 1.0))
        self.tally.gave_up.append(what or f"{method} {path}")
        return None

    def _connection(self) -> Connection:
        """An idle connection, or a new one. One idle for longer than the server keeps it
        (uvicorn: 5 s) is dropped: its failure would count as a retry the faults did not cause."""
        while self._idle:
            conn = self._idle.pop()
            if time.monotonic() - conn.used < IDLE_S:
                return conn
            conn.close()
        return Connection(self.port)

    def _signature(self, body: bytes) -> dict[str, str]:
        """The generic provider's headers: HMAC-SHA256 of ``<unix time>.<body>`` (README)."""
        stamp = int(time.time())
        mac = hmac.new(self.dir.signing_secret.encode(), f"{stamp}.".encode() + body, "sha256")
        return {
            "X-Inboxsync-Timestamp": str(stamp),
            "X-Inboxsync-Signature": f"v1={mac.hexdigest()}",
        }

    def _admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.dir.admin_token}"}

    # ---- webhooks ------------------------------------------------------------------------------

    async def _deliver(self, m: Message) -> None:
        if m.mail:
            inbox = self.dir.mail_inboxes[m.account]
            headers = {
                "Content-Type": "message/rfc822",
                "Authorization": f"Bearer {self.dir.bearer_secret}",
            }
        else:
            inbox = self.dir.generic_inboxes[m.account]
            headers = {"Content-Type": "application/json"}
        answer = await self.call(
            "POST", f"/webhooks/{inbox}", headers, m.body, sign=not m.mail, what=m.id
        )
        if answer is None:
            return
        if answer.status != 202:
            self.tally.refused[f"{answer.status} {answer.body[:120]!r}"] += 1
            return
        self.tally.delivery_ids.update(answer.json().get("deliveries") or [])
        if (inbox, m.external_id) not in self.tally.acknowledged:
            self.tally.acknowledged.add((inbox, m.external_id))
            self.tally.acked_by_thread.setdefault(m.thread, []).append(m.external_id)

    # ---- actions -------------------------------------------------------------------------------

    def key(self, action: Action) -> str:
        return f"chaos-{self.plan.seed}-{action.id}"

    async def _act(self, action: Action) -> None:
        task = self._resolved.get(action.id)
        if task is None:
            task = self._resolved[action.id] = asyncio.create_task(self._resolve(action))
        request = await asyncio.shield(task)
        if request is None:
            return
        method, path, body = request
        headers = {**self._admin(), "Idempotency-Key": self.key(action)}
        if body:
            headers["Content-Type"] = "application/json"
        answer = await self.call(method, path, headers, body, what=action.id)
        if answer is None:
            return
        said: dict[str, Any] = {}
        with contextlib.suppress(ValueError, AttributeError, TypeError):
            said = dict(answer.json() or {})
        outcome = said.get("status")
        self.tally.action_statuses[f"{answer.status} {outcome}"] += 1
        if answer.status >= 400:
            why = str(said.get("error") or said.get("message") or answer.body[:120])
            rule = said.get("rule") or said.get("code") or ""
            self.tally.refusals[f"{answer.status} {rule} {re.sub(r'[0-9]+', '#', why)}"] += 1
        if answer.status in (200, 201, 202):
            self.tally.promised.add(action.id)
        previous = self.tally.answers.get(action.id)
        if previous is None or previous[0] == 202:  # keep the most final answer
            self.tally.answers[action.id] = (answer.status, outcome)

    async def _resolve(self, action: Action) -> tuple[str, str, bytes] | None:
        """(method, path, body) of the action, from the store's ids now; None if its thread's
        conversation never appeared (reported as skipped)."""
        conv = await self._conversation_of(action.thread, action.account)
        if conv is None:
            self.tally.skipped[action.id] = f"no conversation for thread {action.thread}"
            return None
        kind = action.kind
        owner = None
        if (
            kind in ("conversation_owner", "ticket_owner", "create_ticket")
            and action.value is not None
        ):
            owner = self.dir.owners[action.account][int(action.value)]
        if kind == "conversation_owner":
            return "POST", f"/conversations/{conv}/owner", _json({"owner_id": owner})
        if kind == "conversation_status":
            return "POST", f"/conversations/{conv}/status", _json({"status": action.value})
        if kind == "trash":
            return "POST", f"/conversations/{conv}/trash", b""
        if kind == "restore_conversation":
            return "POST", f"/conversations/{conv}/restore", b""
        ticket = await self._ticket_of(conv)
        if kind == "create_ticket" or ticket is None:
            return "POST", f"/conversations/{conv}/ticket", _json({"owner_id": owner})
        if kind == "ticket_owner":
            return "POST", f"/tickets/{ticket}/owner", _json({"owner_id": owner})
        if kind == "ticket_status":
            return "POST", f"/tickets/{ticket}/status", _json({"status": action.value})
        if kind == "delete_ticket":
            return "DELETE", f"/tickets/{ticket}", b""
        if kind == "restore_ticket":
            return "POST", f"/tickets/{ticket}/restore", b""
        if kind == "dissociate":
            return "DELETE", f"/tickets/{ticket}/conversations/{conv}", b""
        assert kind == "associate" and action.other is not None
        other = await self._conversation_of(action.other, action.account)
        if other is None:
            self.tally.skipped[action.id] = f"no conversation for thread {action.other}"
            return None
        return "POST", f"/tickets/{ticket}/conversations", _json({"conversation_id": other})

    async def _conversation_of(self, thread: str, account: int) -> int | None:
        """The conversation of the thread's first mail (mail: so that only the conversation
        holding it ever gets a ticket from us), or of its newest acknowledged message (generic:
        a trashed thread goes on in a new conversation), once it is stored."""
        mail = thread.startswith("m")
        inbox = (self.dir.mail_inboxes if mail else self.dir.generic_inboxes)[account]
        deadline = time.monotonic() + GIVE_UP_AFTER_S
        pause = 0.1
        while time.monotonic() < deadline:
            acked = self.tally.acked_by_thread.get(thread, [])
            anchor = self._first_mail[thread] if mail else (acked[-1] if acked else None)
            if anchor is not None and (inbox, anchor) in self.tally.acknowledged:
                found = await self.call(
                    "GET", f"/messages?inbox_id={inbox}&external_id={_quote(anchor)}", self._admin()
                )
                if found is not None and found.status == 200 and (rows := found.json()):
                    return int(rows[0]["conversation_id"])
            await asyncio.sleep(pause)
            pause = min(pause * 1.5, 2.0)
        return None

    async def _ticket_of(self, conv: int) -> int | None:
        found = await self.call("GET", f"/conversations/{conv}", self._admin())
        if found is None or found.status != 200:
            return None
        ticket = found.json().get("ticket_id")
        return None if ticket is None else int(ticket)


def _releasing(slots: asyncio.Semaphore) -> Callable[[asyncio.Task[None]], None]:
    """A done-callback giving the send's slot back."""
    return lambda _task: slots.release()


def _json(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _quote(value: str) -> str:
    from urllib.parse import quote

    return quote(value, safe="")
