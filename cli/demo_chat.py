"""``inboxsync demo``, chat: a WhatsApp (Cloud API) conversation answered from the API.

Meta's side is played here: its subscription handshake, signed webhooks (a message delivered
twice, status callbacks, the customer's answer with a phone clock running late), and its Graph
API, a stand-in on loopback that the worker sends the agent's reply to.
"""

from __future__ import annotations

import json
import time
import uuid
from contextlib import ExitStack
from datetime import UTC, datetime
from typing import Any

import httpx
from rich.markup import escape

from cli.demo import StandIn, console
from cli.demo import _wait_until as wait_until
from handlers.channels.whatsapp import sign

APP_SECRET = "demo-whatsapp-app-secret"
VERIFY_TOKEN = "demo-verify-token"
ACCESS_TOKEN = "demo-graph-access-token"
PHONE_NUMBER_ID = "106540352242922"  # our business number, as Meta names it
DISPLAY_NUMBER = "15550783881"
MARIA = "351910000000"  # her wa_id: E.164 without the "+"


def graph_stand_in() -> StandIn:
    """WhatsApp Cloud API's ``POST /{phone_number_id}/messages`` on loopback: keeps each message
    and answers with its wamid, as Graph API does."""

    def answer(path: str, headers: Any, body: dict[str, Any]) -> tuple[int, Any]:
        if headers.get("authorization") != f"Bearer {ACCESS_TOKEN}":
            return 401, {"error": {"code": 190, "message": "Invalid token"}}
        wamid = f"wamid.demo{uuid.uuid4().hex}"
        graph.received.append({"path": path, "wamid": wamid, **body})
        return 200, {
            "messaging_product": "whatsapp",
            "contacts": [{"input": body["to"], "wa_id": body["to"]}],
            "messages": [{"id": wamid}],
        }

    graph = StandIn(answer)
    return graph


def _webhook(value: dict[str, Any]) -> dict[str, Any]:
    """One notification as Meta posts it (``entry[].changes[].value``)."""
    metadata = {"display_phone_number": DISPLAY_NUMBER, "phone_number_id": PHONE_NUMBER_ID}
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "102290129340398",
                "changes": [
                    {
                        "field": "messages",
                        "value": {"messaging_product": "whatsapp", "metadata": metadata, **value},
                    }
                ],
            }
        ],
    }


def _message(wamid: str, text: str, at: float) -> dict[str, Any]:
    return _webhook(
        {
            "contacts": [{"profile": {"name": "Maria Souza"}, "wa_id": MARIA}],
            "messages": [
                {
                    "from": MARIA,
                    "id": wamid,
                    "timestamp": str(int(at)),
                    "type": "text",
                    "text": {"body": text},
                }
            ],
        }
    )


def _status(wamid: str, state: str) -> dict[str, Any]:
    return _webhook(
        {
            "statuses": [
                {
                    "id": wamid,
                    "status": state,
                    "timestamp": str(int(time.time())),
                    "recipient_id": MARIA,
                }
            ]
        }
    )


def _post(http: httpx.Client, path: str, payload: dict[str, Any], secret: str = APP_SECRET) -> Any:
    raw = json.dumps(payload).encode()
    headers = {"Content-Type": "application/json", "X-Hub-Signature-256": sign(secret, raw)}
    return http.post(path, content=raw, headers=headers)


def _settled(http: httpx.Client, auth: dict[str, str], delivery_ids: list[int]) -> list[str]:
    """The states of deliveries once the worker has processed them all."""

    def states() -> list[str] | None:
        found = [http.get(f"/deliveries/{d}", headers=auth).json()["state"] for d in delivery_ids]
        return None if "journaled" in found else found

    settled: list[str] = wait_until("the worker to store the deliveries", states)
    return settled


def whatsapp_round_trip(http: httpx.Client, auth: dict[str, str], stack: ExitStack) -> None:
    console.rule("chat: a WhatsApp conversation, answered from the API")
    graph = graph_stand_in()
    stack.callback(graph.close)
    inbox = http.post(
        "/inboxes",
        json={
            "name": "whatsapp",
            "channel": "chat",
            "provider": "whatsapp",
            "secrets": {"app_secret": APP_SECRET, "verify_token": VERIFY_TOKEN},
            "outbound": {
                "via": "whatsapp",
                "access_token": ACCESS_TOKEN,
                "phone_number_id": PHONE_NUMBER_ID,
                "api_url": graph.url,
            },
        },
        headers=auth,
    ).json()
    path = inbox["webhook_path"]
    console.print(
        f"inbox {inbox['id']} (WhatsApp Cloud API): webhook {path}, replies via "
        f"{inbox['replies_via']} to Graph API (stand-in on loopback, {graph.url})"
    )
    hub = {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "1158201444"}
    shake = http.get(path, params=hub)
    console.print(
        f"  Meta subscribes: GET {path}?hub.challenge=… → {shake.status_code} {shake.text}"
    )
    forged = _post(http, path, _message("wamid.forged", "x", time.time()), secret="not-the-app")
    console.print(
        f"  a post signed with another secret → {forged.status_code} {forged.json()['error']}"
    )

    first = f"wamid.demo-in-{uuid.uuid4().hex}"
    hello = _message(first, "Olá! A encomenda 1001 ainda não chegou.", time.time())
    answers = [_post(http, path, hello) for _ in range(2)]  # Meta retries a webhook
    assert all(a.status_code == 200 for a in answers), answers[0].text
    deliveries = [d for a in answers for d in a.json()["deliveries"]]
    states = _settled(http, auth, deliveries)
    [conv] = http.get(f"/conversations?inbox_id={inbox['id']}", headers=auth).json()["items"]
    console.print(
        f"  Maria's message, posted twice (Meta retries) → deliveries "
        f"{', '.join(f'{d} {s}' for d, s in zip(deliveries, states, strict=True))}\n"
        f"  conversation {conv['id']}: contact {conv['contact']} (E.164), thread "
        f"{conv['thread_key']}, {conv['message_count']} message"
    )

    key = {**auth, "Idempotency-Key": f"demo-wa-{uuid.uuid4().hex}"}
    reply = {"text": "Olá Maria! Enviámos de novo hoje; chega amanhã."}
    for _ in range(2):  # the agent's client retries
        queued = http.post(f"/conversations/{conv['id']}/replies", json=reply, headers=key)
        assert queued.status_code == 202, queued.text
    done = wait_until(
        "the reply to be sent",
        lambda: (
            (r := http.get(queued.headers["location"], headers=auth).json())["state"]
            in ("sent", "failed")
            and r
        ),
    )
    if done["state"] != "sent":
        raise RuntimeError(f"reply {done['id']} {done['state']}: {done['error']}")
    [sent] = graph.received
    console.print(
        f"  POST /conversations/{conv['id']}/replies twice, one Idempotency-Key → reply "
        f"{done['id']} {done['state']}\n  Graph API got {len(graph.received)} request: POST "
        f"{sent['path']} to {sent['to']}, answered wamid {done['provider_message_id']}"
    )
    for state in ("delivered", "read"):
        assert _post(http, path, _status(done["provider_message_id"], state)).status_code == 200
    seen = wait_until(
        "the status callbacks",
        lambda: (
            (r := http.get(f"/replies/{done['id']}", headers=auth).json())["provider_status"]
            == "read"
            and r
        ),
    )
    console.print(
        f"  Meta's status callbacks (delivered, read) → provider_status {seen['provider_status']}"
    )

    # Her phone's clock runs 10 minutes late: the message is placed when we stored it.
    late = _message(f"wamid.demo-in-{uuid.uuid4().hex}", "Obrigada! 🙏", time.time() - 600)
    _settled(http, auth, _post(http, path, late).json()["deliveries"])
    view = http.get(f"/conversations/{conv['id']}", headers=auth).json()
    for m in view["messages"]:
        sent_at = datetime.fromisoformat(m["sent_at"]).astimezone(UTC).strftime("%H:%M:%S")
        state = f" ({m['delivery']})" if m["delivery"] else ""
        line = f"  {m['direction']:8} {m['sender']:14} sent {sent_at}  {m['text'][:48]}{state}"
        console.print(escape(line))
    console.print(
        "her answer, dated by her phone 10 minutes before our reply, is listed after it:\n"
        "a conversation's messages are in the order inboxsync stored them\n"
    )
