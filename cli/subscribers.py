"""``inboxsync subscribers list|create|show|deliveries|replay|enable|rotate-secret``: outbound
events' receivers, as the admin, through the API's service (handlers/subscribers.py). A table,
or ``--json``; a refusal is one line on stderr and exit code 2.

Registered on the ``inboxsync`` command by cli/main.py (``register``).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from cli.ops import AsJson, _echo_json, _print, _refusing, _when

subscribers = typer.Typer(
    no_args_is_help=True, help="Outbound events: subscribers, their delivery log, replays."
)
Types = Annotated[
    list[str], typer.Option("--type", help="an event type (repeat); see README Outbound events")
]


def register(app: typer.Typer) -> None:
    app.add_typer(subscribers, name="subscribers")


def _table(title: str, rows: list[dict[str, Any]], columns: tuple[str, ...]) -> None:
    from rich.table import Table

    table = Table(title=title)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*("" if row[c] is None else str(row[c]) for c in columns))
    _print(table)


def _show(found: Any, as_json: bool) -> None:
    out = found.model_dump(mode="json")
    if as_json:
        _echo_json(out)
        return
    _table(
        f"subscriber {out['id']}",
        [{"field": k, "value": v} for k, v in out.items()],
        ("field", "value"),
    )


@subscribers.command("list")
def list_subscribers(
    account: Annotated[int | None, typer.Option(help="one account's")] = None,
    as_json: AsJson = False,
) -> None:
    """Subscribers by id (every account's, or ``--account``'s)."""
    from handlers import subscribers as service

    found = [s.model_dump(mode="json") for s in service.listed(account, limit=10_000)]
    if as_json:
        _echo_json(found)
        return
    columns = ("id", "account_id", "url", "enabled", "pending", "failures", "disabled_reason")
    _table("subscribers", found, columns)


@subscribers.command("create")
def create(
    account: Annotated[int, typer.Option(help="the account whose events it gets")],
    url: Annotated[str, typer.Option(help="https://… where events are posted")],
    types: Types,
    as_json: AsJson = False,
) -> None:
    """Subscribe a URL; prints its signing secret (shown this once)."""
    from handlers import admin
    from handlers import subscribers as service
    from schemas.events import SubscriberIn

    def run() -> Any:
        body = admin.parse(SubscriberIn.model_validate, {"url": url, "types": types}, "subscriber")
        return service.create(account, body)

    _show(_refusing(run), as_json)


@subscribers.command("show")
def show(subscriber_id: int, as_json: AsJson = False) -> None:
    """One subscriber: its URL, types, state and how many events wait for it."""
    from handlers import subscribers as service

    _show(_refusing(lambda: service.get(subscriber_id, None)), as_json)


@subscribers.command("deliveries")
def deliveries(
    subscriber_id: int,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 50,
    as_json: AsJson = False,
) -> None:
    """The delivery log: each attempt, its answer or error, how long it took."""
    from handlers import subscribers as service

    found = _refusing(lambda: service.attempts(subscriber_id, None, limit=limit))
    rows = [a.model_dump(mode="json") for a in found]
    if as_json:
        _echo_json(rows)
        return
    columns = ("id", "at", "webhook_id", "type", "status_code", "error", "duration_ms")
    _table(f"deliveries of subscriber {subscriber_id}", rows, columns)


@subscribers.command("replay")
def replay(
    subscriber_id: int,
    event: Annotated[int | None, typer.Option(help="one event's id")] = None,
    since: Annotated[str | None, typer.Option("--from", help="ISO time: events made since")] = None,
    until: Annotated[str | None, typer.Option("--to", help="ISO time: events made before")] = None,
) -> None:
    """Send again one event (``--event``) or those made in ``[--from, --to)``."""
    from handlers import admin
    from handlers import subscribers as service
    from schemas.events import EventsReplayIn

    def run() -> int:
        raw = {"event_id": event, "from": _when("--from", since), "to": _when("--to", until)}
        body = admin.parse(EventsReplayIn.model_validate, raw, "replay")
        return service.replay(subscriber_id, body, None)

    typer.echo(f"subscriber {subscriber_id}: {_refusing(run)} events queued again")


@subscribers.command("enable")
def enable(subscriber_id: int) -> None:
    """Re-enable a disabled subscriber: it resumes in order from the event it stopped at."""
    from handlers import subscribers as service
    from schemas.events import SubscriberPatch

    found = _refusing(lambda: service.update(subscriber_id, SubscriberPatch(enabled=True), None))
    typer.echo(f"subscriber {subscriber_id} enabled; {found.pending} events pending")


@subscribers.command("rotate-secret")
def rotate_secret(subscriber_id: int) -> None:
    """A new signing secret (printed); the previous one signs too for the overlap setting."""
    from handlers import subscribers as service

    found = _refusing(lambda: service.rotate_secret(subscriber_id, None))
    typer.echo(found.secret)
