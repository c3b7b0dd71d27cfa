"""Operating commands: ``inboxsync status``, ``inboxsync dead-letters list|show|replay|discard``,
tokens (``list-tokens``, ``revoke-token``) and inbox secrets (``rotate-secrets``,
``retire-secrets``). The same handlers as the API (handlers/deadletter_replay.py,
handlers/admin.py, workers/status.py), as the admin; a table, or ``--json``.

Registered on the ``inboxsync`` command by cli/main.py (``register``).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from handlers.deadletter_replay import Filter, Replayed
    from schemas.ops import Status
    from store.models import DeadLetter

dead_letters = typer.Typer(
    no_args_is_help=True,
    help="Dead letters: what workers could not process; see, replay, discard.",
)

AsJson = Annotated[bool, typer.Option("--json", help="JSON instead of a table")]
Task = Annotated[str | None, typer.Option(help="ingest_batch, apply_change, send_reply")]
Inbox = Annotated[int | None, typer.Option("--inbox", help="an inbox's letters")]
Reason = Annotated[str | None, typer.Option(help="a substring of the error")]
OlderThan = Annotated[str | None, typer.Option(help="ISO time: letters made before it")]
NewerThan = Annotated[str | None, typer.Option(help="ISO time: letters made after it")]


def register(app: typer.Typer) -> None:
    app.add_typer(dead_letters, name="dead-letters")
    app.command("status")(status)
    app.command("list-tokens")(list_tokens)
    app.command("revoke-token")(revoke_token)
    app.command("rotate-secrets")(rotate_secrets)
    app.command("retire-secrets")(retire_secrets)


def _echo_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, ensure_ascii=False))


def _print(table: Any) -> None:
    from rich.console import Console

    Console(width=160).print(table)


# ---- status ----------------------------------------------------------------------------------


def status(as_json: AsJson = False) -> None:
    """Queues (depth, oldest work), backlogs, workers, dead letters, replies due, who runs the
    periodic work."""
    from workers.status import gather

    found = gather()
    if as_json:
        _echo_json(found.model_dump(mode="json"))
    else:
        _print_status(found)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _print_status(found: Status) -> None:
    from rich.table import Table

    queues = Table(title="queues")
    for column in ("queue", "depth", "oldest work", "of"):
        queues.add_column(column)
    for q in found.queues:
        depth = "?" if q.depth is None else str(q.depth)
        queues.add_row(q.name, depth, _age(q.oldest_age_s), q.oldest_of)
    _print(queues)
    if found.broker_error:
        typer.echo(f"broker: {found.broker_error}")
    if found.broker_note:
        typer.echo(f"note: {found.broker_note}")
    if found.workers_alive is None:
        workers = found.workers_note or "n/a"
    else:
        workers = f"{len(found.workers_alive)} " + (", ".join(found.workers_alive) or "")
    lease = found.periodic
    if lease is None:
        periodic = "nobody yet"
    elif lease.expires_in_s < 0:
        periodic = f"{lease.holder} (lease expired {_age(-lease.expires_in_s)} ago: no one now)"
    else:
        periodic = f"{lease.holder} ({lease.rounds} rounds)"
    turn = found.reconcile
    if turn is None:
        reconciliation = "never run"
    else:
        due = "due now" if turn.expires_in_s <= 0 else f"next in {_age(turn.expires_in_s)}"
        reconciliation = f"last by {turn.holder} ({turn.rounds} turns; {due})"
    facts = Table(title="deployment", show_header=False)
    facts.add_column("what")
    facts.add_column("value")
    for what, value in (
        ("journal backlog", f"{found.journal.count} (oldest {_age(found.journal.oldest_age_s)})"),
        (
            "pending changes",
            f"{found.pending_changes.count} (oldest {_age(found.pending_changes.oldest_age_s)})",
        ),
        ("workers alive", workers.strip()),
        ("dead letters waiting", str(found.dead_letters_waiting)),
        ("replies due", str(found.replies_due)),
        (
            "events pending",
            f"{found.events_pending.count} (oldest {_age(found.events_pending.oldest_age_s)})",
        ),
        ("subscribers disabled", str(found.subscribers_disabled)),
        ("periodic lease", periodic),
        ("reconciliation", reconciliation),
    ):
        facts.add_row(what, value)
    _print(facts)


# ---- dead letters ----------------------------------------------------------------------------


def _when(option: str, value: str | None) -> datetime | None:
    from pydantic import TypeAdapter

    from handlers import admin
    from schemas.ops import IsoTime

    if value is None:
        return None
    return admin.parse(TypeAdapter(IsoTime).validate_python, value, option)


def _filter(
    task: str | None,
    inbox: int | None,
    reason: str | None,
    older_than: str | None,
    newer_than: str | None,
    state: str | None,
) -> Filter:
    from handlers import admin
    from handlers.deadletter_replay import Filter

    if state not in (None, "waiting", "replayed", "discarded"):
        raise admin.Invalid(f"--state is waiting, replayed or discarded, not {state!r}")
    return Filter(
        task,
        inbox,
        reason,
        _when("--older-than", older_than),
        _when("--newer-than", newer_than),
        state,
    )


def _refusing(run: Any) -> Any:
    """Run ``run()``; a refusal is one line on stderr and exit code 2 (as cli/main.py's)."""
    from cli.main import _fail
    from handlers import admin
    from handlers import deadletter_replay as letters

    try:
        return run()
    except (admin.AdminError, letters.NotFound, letters.Refused) as exc:
        _fail(str(exc))


def _letter(letter: DeadLetter, *, payload: bool = False) -> dict[str, Any]:
    from api.deadletters import letter_out  # what the API answers, to the field

    return letter_out(letter, payload=payload)


@dead_letters.command("list")
def list_letters(
    task: Task = None,
    inbox: Inbox = None,
    reason: Reason = None,
    older_than: OlderThan = None,
    newer_than: NewerThan = None,
    state: Annotated[str | None, typer.Option(help="waiting, replayed or discarded")] = None,
    after_id: Annotated[int, typer.Option(help="the last id of the previous page")] = 0,
    limit: int = 50,
    as_json: AsJson = False,
) -> None:
    """Dead letters, oldest first."""
    from rich.table import Table

    from handlers import deadletter_replay as letters

    where = _refusing(lambda: _filter(task, inbox, reason, older_than, newer_than, state))
    found = [
        _letter(x) for x in letters.find(where, account_id=None, after_id=after_id, limit=limit)
    ]
    if as_json:
        _echo_json(found)
        return
    table = Table(title=f"dead letters ({len(found)})")
    for column in ("id", "task", "inbox", "state", "attempts", "replays", "created", "error"):
        table.add_column(column)
    for x in found:
        table.add_row(
            str(x["id"]),
            x["task"].removeprefix("inboxsync."),
            "" if x["inbox_id"] is None else str(x["inbox_id"]),
            x["state"],
            str(x["attempts"]),
            str(x["replays"]),
            x["created_at"][:19],
            x["error"][:70],
        )
    _print(table)


@dead_letters.command("show")
def show_letter(letter_id: int, as_json: AsJson = False) -> None:
    """One dead letter, its payload as stored."""
    from rich.table import Table

    from handlers import deadletter_replay as letters

    found = _letter(_refusing(lambda: letters.get(letter_id, account_id=None)), payload=True)
    if as_json:
        _echo_json(found)
        return
    table = Table(title=f"dead letter {letter_id}", show_header=False)
    table.add_column("field")
    table.add_column("value", overflow="fold")
    for key, value in found.items():
        if key != "payload":
            table.add_row(key, "" if value is None else str(value))
    _print(table)
    typer.echo(json.dumps(found["payload"], indent=2, ensure_ascii=False))


@dead_letters.command("replay")
def replay_letters(
    letter_id: Annotated[int | None, typer.Argument(help="one letter; else the filters")] = None,
    task: Task = None,
    inbox: Inbox = None,
    reason: Reason = None,
    older_than: OlderThan = None,
    newer_than: NewerThan = None,
    again: Annotated[bool, typer.Option(help="replay letters replayed before")] = False,
    every: Annotated[bool, typer.Option("--all", help="every waiting letter")] = False,
    as_json: AsJson = False,
) -> None:
    """Replay through the normal, idempotent path: one letter, or every waiting one that
    matches the filters (``--all``: with no filter). Replaying again changes nothing."""
    from handlers import deadletter_replay as letters
    from workers import publish

    def run() -> Replayed:
        if letter_id is not None:
            return letters.replay(letter_id, account_id=None, publisher=publish)
        given = (task, inbox, reason, older_than, newer_than)
        if all(v is None for v in given) and not every:
            from handlers import admin

            raise admin.Invalid("name a letter, a filter, or --all")
        where = _filter(*given, "replayed" if again else "waiting")
        return letters.replay_matching(where, account_id=None, publisher=publish)

    done = _refusing(run)
    if as_json:
        from api.deadletters import replayed_out

        _echo_json(replayed_out(done))
        return
    for letter in done.letters:
        typer.echo(f"dead letter {letter.id} replayed: {letter.replayed_as}")
    for skipped, why in done.skipped:
        typer.echo(f"dead letter {skipped} skipped: {why}")
    typer.echo(f"replayed {len(done.letters)}, skipped {len(done.skipped)}")
    if not done.published:
        typer.echo("the broker refused: the periodic round publishes the work later", err=True)


@dead_letters.command("discard")
def discard_letter(letter_id: int) -> None:
    """Discard a letter: kept, marked discarded, never replayed."""
    from handlers import deadletter_replay as letters

    _refusing(lambda: letters.discard(letter_id, account_id=None))
    typer.echo(f"dead letter {letter_id} discarded")


# ---- tokens and secrets ----------------------------------------------------------------------


def list_tokens(account_id: int, as_json: AsJson = False) -> None:
    """An account's API tokens (never the tokens themselves)."""
    from rich.table import Table

    from api.resources import token_info
    from cli.main import _commit
    from handlers import admin

    found = [token_info(t) for t in _commit(lambda: admin.list_tokens(account_id, caller=None))]
    if as_json:
        _echo_json(found)
        return
    table = Table(title=f"tokens of account {account_id}")
    for column in ("id", "name", "created"):
        table.add_column(column)
    for t in found:
        table.add_row(str(t["id"]), t["name"], t["created_at"])
    _print(table)


def revoke_token(token_id: int) -> None:
    """Revoke an API token: the next request made with it is refused."""
    from cli.main import _commit
    from handlers import admin

    _commit(lambda: admin.revoke_token(token_id, account_id=None))
    typer.echo(f"token {token_id} revoked")


def rotate_secrets(
    inbox_id: int,
    secret: Annotated[list[str] | None, typer.Option(help="key=value, repeatable")] = None,
) -> None:
    """Make these the inbox's secrets; the old ones stay valid until ``retire-secrets``."""
    from cli.main import _commit, _pairs
    from handlers import admin
    from schemas.ops import SecretsIn

    def prepare() -> Any:
        raw = {"secrets": _pairs("--secret", secret)}
        body = admin.parse(SecretsIn.model_validate, raw, "secrets")
        return admin.rotate_secrets(inbox_id, body, account_id=None)

    inbox = _commit(prepare)
    typer.echo(
        f"inbox {inbox_id}: new secrets current; previous ones accepted until retire-secrets "
        "(switch the provider over first; the ingress takes up to 30 s to see changes)"
        if inbox.previous_secrets is not None
        else f"inbox {inbox_id}: secrets current"
    )


def retire_secrets(inbox_id: int) -> None:
    """Stop accepting an inbox's previous secrets."""
    from cli.main import _commit
    from handlers import admin

    _commit(lambda: admin.retire_secrets(inbox_id, account_id=None))
    typer.echo(f"inbox {inbox_id}: previous secrets retired (within the ingress's 30 s cache)")
