"""``inboxsync demo``, operations: a subscriber hears signed events while a bulk job closes an
account's tickets, and a ticket's history says why it is closed.

The subscriber's receiver is a stand-in on loopback that verifies every signature with the
``standardwebhooks`` package, as any Standard Webhooks receiver would.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

import httpx
from rich.table import Table
from standardwebhooks import Webhook

from cli.demo import StandIn, console
from cli.demo import _wait_until as wait_until

TYPES = ["status.changed", "owner.changed", "bulk_job.finished"]


def operations_round_trip(http: httpx.Client, s: dict[str, Any], stack: ExitStack) -> None:
    console.rule("operations: signed events, a bulk job, a ticket's history")
    receiver = StandIn(lambda path, headers, body: (204, {}))
    stack.callback(receiver.close)
    auth = s["auth"]
    made = http.post(
        "/subscribers", json={"url": f"{receiver.url}/hooks", "types": TYPES}, headers=auth
    ).json()
    console.print(f"subscriber {made['id']} → {made['url']} for {', '.join(TYPES)}")

    job = http.post(
        "/bulk-jobs", json={"action": "close_tickets", "filter": {}}, headers=auth
    ).json()
    ended = wait_until(
        "the bulk job",
        lambda: (
            (j := http.get(f"/bulk-jobs/{job['id']}", headers=auth).json())["finished_at"] and j
        ),
    )
    console.print(
        f"bulk job {ended['id']}: close_tickets over {ended['total']} ticket(s) → "
        f"[green]{ended['state']}[/] ({ended['done']} done, {ended['failed']} failed)"
    )

    webhook = Webhook(made["secret"])
    wait_until(
        "bulk_job.finished at the subscriber",
        lambda: any(b'"bulk_job.finished"' in body for _, body in receiver.raw),
    )
    events = Table(title="events received (each signature verified with standardwebhooks)")
    for col in ("webhook-id", "type", "data"):
        events.add_column(col)
    for headers, body in receiver.raw:
        event = webhook.verify(body, {k.lower(): v for k, v in headers.items()})
        data = event["data"]
        what = (
            f"{data['entity']} {data['id']} {data['field']}={data['value']} ({data['rule']})"
            if "entity" in data
            else f"job {data['job_id']} {data['state']}: {data['done']}/{data['total']} done"
        )
        events.add_row(headers.get("webhook-id", ""), event["type"], what)
    console.print(events)

    history = http.get(f"/tickets/{s['ticket']}/history", headers=auth).json()
    table = Table(title=f"GET /tickets/{s['ticket']}/history: why it is closed")
    for col in ("event", "cause", "outcome", "effects"):
        table.add_column(col)
    for entry in history["entries"]:
        cause = entry["cause"]
        who = cause.get("via", "?") + (f" job {cause['job_id']}" if "job_id" in cause else "")
        effects = ", ".join(
            f"{e['entity']} {e['id']} {e['field']}={e['value']} ({e['rule']})"
            for e in entry["effects"]
        )
        rule = f" ({entry['rule']})" if entry.get("rule") else ""
        table.add_row(entry["kind"], who, entry["outcome"] + rule, effects or "-")
    console.print(table)
    last = history["last_set_by"].get("status", {})
    console.print(f"status last set by {last.get('event_id')} (rule {last.get('rule')})\n")
