"""``inboxsync demo``: the whole pipeline on this machine, start to finish, in under a minute.

It starts the HTTP service and a Celery worker as real processes (on the embedded SQLite store
and broker unless ``DATABASE_URL`` / ``CELERY_BROKER_URL`` say otherwise), posts signed webhooks
as a provider would, acts as an agent through the API, and prints what came out: the rules on
generic webhooks, a mail answered by mail, and a WhatsApp chat answered from the API
(cli/demo_chat.py).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from handlers.channels.generic import sign
from settings import get_settings

console = Console(width=None if sys.stdout.isatty() else 140)
SECRET = "demo-signing-secret"
ACCOUNTS = [
    # name, tier, created_at: one account on each side of the R1/R2 line
    ("Acme (enterprise, 2025)", "enterprise", "2025-02-01T00:00:00+00:00"),
    ("Bolt (professional, 2023)", "professional", "2023-06-01T00:00:00+00:00"),
    ("Cora (free, 2025)", "free", "2025-03-10T00:00:00+00:00"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(stack: ExitStack, argv: list[str], env: dict[str, str], log: Path) -> None:
    out = stack.enter_context(log.open("w"))
    proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)

    def stop() -> None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()

    stack.callback(stop)


def _wait_until(what: str, check: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if result := check():
                return result
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


def run(*, keep: bool = False) -> int:
    settings = get_settings()
    env = dict(os.environ)
    # The demo's Postmark and WhatsApp Graph API are stand-ins on loopback, an address workers
    # otherwise refuse to take an inbox's credentials to (handlers/netguard.py).
    env["INBOXSYNC_OUTBOUND_ALLOW_PRIVATE"] = "true"
    # Outbound events go out every half second here, not every 2.
    env["INBOXSYNC_EVENTS_INTERVAL_S"] = "0.5"
    embedded = settings.database_url is None and settings.celery_broker_url is None
    if embedded:
        data_dir = settings.data_dir.resolve() / "demo"
        if not keep:
            shutil.rmtree(data_dir, ignore_errors=True)
        data_dir.mkdir(parents=True, exist_ok=True)
        env["INBOXSYNC_DATA_DIR"] = str(data_dir)
    logs = (settings.data_dir / "logs").resolve()
    logs.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    admin = {"Authorization": f"Bearer {settings.admin_token}"}

    subprocess.run([sys.executable, "-m", "cli.main", "migrate"], env=env, check=True)
    console.rule("[bold]inboxsync demo")
    store = "embedded SQLite" if settings.database_url is None else "DATABASE_URL"
    broker = "embedded SQLite queue" if settings.is_embedded_broker else "CELERY_BROKER_URL"
    console.print(f"store:  {store}\nbroker: {broker}\nlogs:   {logs}")
    with ExitStack() as stack:
        _start(
            stack,
            [sys.executable, "-m", "cli.main", "worker", "-c", "2", "--loglevel", "warning"],
            env,
            logs / "worker.log",
        )
        _start(
            stack,
            [sys.executable, "-m", "cli.main", "serve", "--port", str(port), "--no-migrate"],
            env,
            logs / "serve.log",
        )
        http = stack.enter_context(httpx.Client(base_url=base, timeout=30))
        _wait_until("the HTTP service", lambda: http.get("/healthz").status_code == 200)
        console.print(f"HTTP service on {base}, Celery worker started\n")
        scene = _setup(http, admin)
        _send_webhooks(http, scene)
        _agent_actions(http, scene)
        _print_state(http, scene)
        _email_round_trip(http, scene[2]["auth"], stack)
        from cli.demo_chat import whatsapp_round_trip  # imports this module

        whatsapp_round_trip(http, scene[2]["auth"], stack)
        from cli.demo_ops import operations_round_trip

        operations_round_trip(http, scene[0], stack)
    console.rule("[bold green]demo finished")
    return 0


def _setup(http: httpx.Client, admin: dict[str, str]) -> list[dict[str, Any]]:
    scene = []
    for name, tier, created in ACCOUNTS:
        account = http.post(
            "/accounts", json={"name": name, "tier": tier, "created_at": created}, headers=admin
        ).json()
        token = http.post(f"/accounts/{account['id']}/tokens", json={}, headers=admin).json()
        auth = {"Authorization": f"Bearer {token['token']}"}
        inbox = http.post(
            "/inboxes",
            json={
                "name": "support",
                "channel": "email",
                "provider": "generic",
                "secrets": {"signing_secret": SECRET},
            },
            headers=auth,
        ).json()
        owners = [
            http.post("/owners", json={"name": n}, headers=auth).json()["id"]
            for n in ("Ana", "Bruno")
        ]
        scene.append({"account": account, "auth": auth, "inbox": inbox, "owners": owners})
        console.print(
            f"account {account['id']} [bold]{name}[/]: new tickets go to "
            f"[cyan]{account['ticket_location']}[/] (R1/R2)"
        )
    return scene


def _post_webhook(http: httpx.Client, inbox_id: int, payload: dict[str, Any]) -> int:
    body = json.dumps(payload).encode()
    stamp = int(time.time())
    response = http.post(
        f"/webhooks/{inbox_id}",
        content=body,
        headers={
            "Content-Type": "application/json",
            "X-Inboxsync-Timestamp": str(stamp),
            "X-Inboxsync-Signature": sign(SECRET, stamp, body),
        },
    )
    return response.status_code


def _send_webhooks(http: httpx.Client, scene: list[dict[str, Any]]) -> None:
    t0 = datetime.now(UTC) - timedelta(hours=1)
    sent = 0
    for i, s in enumerate(scene):
        inbox = s["inbox"]["id"]
        for n, (sender, thread) in enumerate(
            [
                ("maria@example.com", "order-1001"),
                ("joao@example.com", "order-1002"),
                ("maria@example.com", "order-1001"),  # same thread: appended
            ]
        ):
            payload = {
                "external_id": f"msg-{i}-{n}",
                "sender": sender,
                "thread_key": f"{thread}-{i}",
                "text": f"Hello, about {thread} (#{n})",
                "sent_at": (t0 + timedelta(minutes=n)).isoformat(),
            }
            assert _post_webhook(http, inbox, payload) == 202
            sent += 1
        # The provider retries a delivery: deduplicated by its external id.
        assert _post_webhook(http, inbox, payload) == 202
        sent += 1
    console.print(f"posted {sent} signed webhooks (one redelivered per inbox)")
    for s in scene:
        convs = _wait_until(
            "the worker to store the conversations",
            lambda s=s: (
                (r := http.get("/conversations", headers=s["auth"]).json()["items"])
                and len(r) == 2
                and all(
                    len(http.get(f"/conversations/{c['id']}", headers=s["auth"]).json()["messages"])
                    == (2 if c["thread_key"].startswith("order-1001") else 1)
                    for c in r
                )
                and r
            ),
        )
        s["conversations"] = [c["id"] for c in convs]
    console.print("the worker stored 6 conversations, 9 messages: the redelivery was a no-op\n")


def _act(
    http: httpx.Client, s: dict[str, Any], method: str, path: str, body: Any = None, note: str = ""
) -> dict[str, Any]:
    response = http.request(method, path, json=body, headers=s["auth"])
    out = response.json()
    effects = ", ".join(
        f"{e['entity']} {e['id']} {e['field']}={e['value']} ({e['rule']})"
        for e in out.get("effects", [])
    )
    verdict = (
        f"[red]{response.status_code} {out.get('error')}[/]"
        if response.status_code >= 400
        else f"[green]{response.status_code}[/]"
    )
    console.print(f"  {method} {path} {note}→ {verdict} {effects}")
    return out


def _agent_actions(http: httpx.Client, scene: list[dict[str, Any]]) -> None:
    console.print("[bold]agents act through the API[/] (each line: the change and its effects)")
    for s in scene:
        a, b = s["conversations"]
        console.print(f"[bold]{s['account']['name']}[/]")
        ticket = _act(http, s, "POST", f"/conversations/{a}/ticket", {}, "(T1, R1/R2) ")
        tid = ticket["ticket"]["id"]
        s["ticket"] = tid
        _act(http, s, "POST", f"/tickets/{tid}/conversations", {"conversation_id": b}, "(T3) ")
        _act(http, s, "POST", f"/conversations/{a}/owner", {"owner_id": s["owners"][0]}, "(O1) ")
        _act(http, s, "POST", f"/tickets/{tid}/owner", {"owner_id": s["owners"][1]}, "(O2) ")
        _act(http, s, "POST", f"/tickets/{tid}/status", {"status": "closed"}, "(S1) ")
        _act(
            http,
            s,
            "POST",
            f"/tickets/{tid}/status",
            {"status": "waiting_on_us"},
            "(S2, two conversations) ",
        )
        _act(http, s, "DELETE", f"/tickets/{tid}/conversations/{b}", None, "(T2) ")
    # The last account shows deletion: trashing one conversation removes all (D1+D2), restore
    # brings back what that cascade removed.
    s = scene[-1]
    a, b = s["conversations"]
    _act(http, s, "POST", f"/conversations/{b}/trash", None, "(D1+D2) ")
    _act(http, s, "POST", f"/conversations/{b}/restore", None, "(restore) ")
    _act(http, s, "POST", f"/conversations/{a}/close", None, "(S3) ")
    console.print()


def _print_state(http: httpx.Client, scene: list[dict[str, Any]]) -> None:
    convs = Table(title="Conversations")
    for col in (
        "id",
        "account",
        "contact",
        "thread",
        "status",
        "owner",
        "location",
        "ticket",
        "messages",
        "trashed",
    ):
        convs.add_column(col)
    tickets = Table(title="Tickets")
    for col in ("id", "account", "status", "owner", "location", "conversations", "deleted"):
        tickets.add_column(col)
    for s in scene:
        name = s["account"]["name"].split(" ")[0]
        for cid in s["conversations"]:
            c = http.get(f"/conversations/{cid}", headers=s["auth"]).json()
            convs.add_row(
                str(c["id"]),
                name,
                c["contact"],
                c["thread_key"],
                c["status"],
                str(c["owner_id"] or "-"),
                c["location"],
                str(c["ticket_id"] or "-"),
                str(len(c["messages"])),
                "yes" if c["trashed"] else "no",
            )
        t = http.get(f"/tickets/{s['ticket']}", headers=s["auth"]).json()
        tickets.add_row(
            str(t["id"]),
            name,
            t["status"],
            str(t["owner_id"] or "-"),
            t["location"],
            ", ".join(map(str, t["conversation_ids"])),
            "yes" if t["deleted"] else "no",
        )
    console.print(convs)
    console.print(tickets)


MAIL = """From: Maria Souza <maria@example.com>
To: Support <support@cora.example>
Subject: Pedido 1001 =?utf-8?q?n=C3=A3o?= chegou
Date: {date}
Message-ID: <order1001.{run}@mail.example.com>
Content-Type: text/plain; charset=utf-8

O meu pedido 1001 ainda não chegou.
"""
ANSWER = """From: Maria Souza <maria@example.com>
To: support@cora.example
Subject: obrigada
Date: {date}
Message-ID: <thanks.{run}@mail.example.com>
In-Reply-To: <{ours}>
Content-Type: text/plain; charset=utf-8

Chegou hoje, obrigada!
"""


class StandIn:
    """A provider's API on loopback that answers JSON (the demo reaches no real provider):
    ``answer(path, headers, body)`` gives the status and payload of each POST; ``received``
    keeps what the provider was sent."""

    def __init__(self, answer: Callable[[str, Any, dict[str, Any]], tuple[int, Any]]) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.received: list[dict[str, Any]] = []
        self.raw: list[tuple[dict[str, str], bytes]] = []  # every POST's headers and bytes
        raw = self.raw

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers["content-length"]))
                raw.append((dict(self.headers.items()), data))
                status, payload = answer(self.path, self.headers, json.loads(data))
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _postmark_stand_in() -> StandIn:
    """Postmark's send API: keeps each mail, answers its MessageID."""

    def answer(path: str, headers: Any, body: dict[str, Any]) -> tuple[int, Any]:
        postmark.received.append(body)
        return 200, {"MessageID": f"pm-{len(postmark.received)}", "ErrorCode": 0}

    postmark = StandIn(answer)
    return postmark


def _email_round_trip(http: httpx.Client, auth: dict[str, str], stack: ExitStack) -> None:
    console.rule("email: a customer's mail, the agent's reply, the customer's answer")
    postmark = _postmark_stand_in()
    stack.callback(postmark.close)
    inbox = http.post(
        "/inboxes",
        json={
            "name": "mail",
            "channel": "email",
            "provider": "rfc822",
            "secrets": {"bearer_secret": "demo-relay-secret"},
            "outbound": {
                "via": "postmark",
                "from": "Cora Support <support@cora.example>",
                "server_token": "demo",
                "api_url": postmark.url,
            },
        },
        headers=auth,
    ).json()
    run, now = str(time.time_ns()), datetime.now(UTC)
    relay = {"Content-Type": "message/rfc822", "Authorization": "Bearer demo-relay-secret"}
    mail = MAIL.format(date=now.strftime("%a, %d %b %Y %H:%M:%S +0000"), run=run).encode()
    for _ in range(2):  # the relay delivers it twice
        assert http.post(f"/webhooks/{inbox['id']}", content=mail, headers=relay).is_success
    [conv] = _wait_until(
        "the mail to be stored",
        lambda: http.get(f"/conversations?inbox_id={inbox['id']}", headers=auth).json()["items"],
    )
    console.print(f"mail from maria@example.com, delivered twice → conversation {conv['id']}")
    reply = {"text": "Olá Maria, enviámos de novo hoje."}
    keyed = {**auth, "Idempotency-Key": f"demo-reply-{run}"}
    for _ in range(2):  # the agent's client retries
        queued = http.post(f"/conversations/{conv['id']}/replies", json=reply, headers=keyed)
        assert queued.status_code == 202, queued.text
    done = _wait_until(
        "the reply to be sent",
        lambda: (
            (r := http.get(queued.headers["location"], headers=auth).json())["state"]
            in ("sent", "failed")
            and r
        ),
    )
    [sent] = postmark.received
    headers = {h["Name"]: h["Value"] for h in sent["Headers"]}
    console.print(
        f"reply {done['id']} {done['state']}: {len(postmark.received)} request to Postmark's API"
        f" (stand-in on loopback) for 2 POSTs with one Idempotency-Key\n"
        f"  Subject: {escape(sent['Subject'])}\n  Message-ID: {headers['Message-ID']}\n"
        f"  In-Reply-To: {headers['In-Reply-To']}"
    )
    later = datetime.now(UTC) + timedelta(seconds=1)
    answer = ANSWER.format(
        date=later.strftime("%a, %d %b %Y %H:%M:%S +0000"), run=run, ours=done["rfc_message_id"]
    ).encode()
    assert http.post(f"/webhooks/{inbox['id']}", content=answer, headers=relay).is_success
    view = _wait_until(
        "the answer to be stored",
        lambda: (
            (v := http.get(f"/conversations/{conv['id']}", headers=auth).json())
            and len(v["messages"]) == 3
            and v
        ),
    )
    for m in view["messages"]:
        state = f" ({m['delivery']})" if m["delivery"] else ""
        line = f"  {m['direction']:8} {m['sender']:22} {m['text'].strip()[:40]}{state}"
        console.print(escape(line))
    console.print(f"Maria's answer threaded to conversation {conv['id']} by In-Reply-To\n")
