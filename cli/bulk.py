"""``inboxsync bulk create|show|list|cancel|pause|resume|retry-failed``: bulk jobs from the
command line, through the same handlers as ``/bulk-jobs`` (handlers/bulk.py), as the admin.

``--follow`` (the default of ``create``, ``resume`` and ``retry-failed``) stays until the job
ends: a progress bar when stdout is a terminal, one plain line per change of the counts when it
is not (a log, a pipe). A refusal is one line on stderr and exit code 2.

Registered on the ``inboxsync`` command by cli/main.py (``register``).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

if TYPE_CHECKING:
    from schemas.bulk import BulkJobOut

T = TypeVar("T")
bulk_app = typer.Typer(no_args_is_help=True, help="Bulk jobs: one action on many tickets.")
AsJson = Annotated[bool, typer.Option("--json", help="JSON instead of lines")]
Follow = Annotated[bool, typer.Option("--follow/--no-follow", help="wait until the job ends")]


def register(app: typer.Typer) -> None:
    app.add_typer(bulk_app, name="bulk")


def _refusing(run: Callable[[], T]) -> T:
    from pydantic import ValidationError

    from cli.main import _fail
    from handlers import bulk

    try:
        return run()
    except bulk.BulkError as exc:
        _fail(str(exc))
    except ValidationError as exc:
        _fail(
            "; ".join(f"{'.'.join(map(str, e['loc'])) or 'job'}: {e['msg']}" for e in exc.errors())
        )


def _publish() -> Callable[[int, int, float], None]:
    from workers import publish

    return publish.bulk_chunk


@bulk_app.command("create")
def create(
    account: Annotated[int, typer.Option(help="the account whose tickets or conversations")],
    action: Annotated[str, typer.Option(help="close_tickets, reroute_tickets, … (README)")],
    ids: Annotated[str | None, typer.Option(help="comma-separated target ids")] = None,
    inbox: Annotated[int | None, typer.Option(help="filter: in this inbox")] = None,
    status: Annotated[str | None, typer.Option(help="filter: with this status")] = None,
    owner: Annotated[int | None, typer.Option(help="filter: with this owner")] = None,
    location: Annotated[str | None, typer.Option(help="filter: inbox or help_desk")] = None,
    older_than: Annotated[str | None, typer.Option(help="filter: created before (ISO)")] = None,
    to_owner: Annotated[int | None, typer.Option(help="set_*_owner: the new owner")] = None,
    to_status: Annotated[str, typer.Option(help="reopen_tickets: the status")] = "waiting_on_us",
    follow: Follow = True,
) -> None:
    """Make a job (its targets frozen now) and, by default, follow it to its end."""
    from handlers import bulk
    from schemas.bulk import BulkJobIn
    from settings import get_settings

    spec: dict[str, Any] = {"account_id": account, "action": action, "status": to_status}
    if to_owner is not None:
        spec["owner_id"] = to_owner
    if ids is not None:
        spec["ids"] = [int(i) for i in ids.split(",") if i.strip()]
    else:
        given = {"inbox_id": inbox, "status": status, "owner_id": owner, "location": location}
        spec["filter"] = {k: v for k, v in given.items() if v is not None}
        if older_than is not None:
            spec["filter"]["older_than"] = older_than
    body = _refusing(lambda: BulkJobIn.model_validate(spec))
    job = _refusing(lambda: bulk.create(body, account, {"via": "cli"}, get_settings(), _publish()))
    typer.echo(f"bulk job {job.id}: {job.total} {job.entity}s, {job.action['action']}")
    if follow:
        _follow(job.id)


@bulk_app.command("show")
def show(job_id: int, as_json: AsJson = False, follow: Follow = False) -> None:
    """A job's counts, state, and its failed items with their reasons (the first 100)."""
    from handlers import bulk

    if follow:
        _follow(job_id)
    job = _refusing(lambda: bulk.get(job_id, None))
    if as_json:
        typer.echo(json.dumps(job.model_dump(mode="json"), indent=2))
        return
    typer.echo(_line(job))
    for failure in job.failures:
        typer.echo(f"  {job.entity} {failure.target_id}: {failure.reason}")


@bulk_app.command("list")
def list_jobs(
    after_id: Annotated[int, typer.Option(help="the last id of the previous page")] = 0,
    limit: int = 50,
    as_json: AsJson = False,
) -> None:
    """Jobs, oldest first."""
    from handlers import bulk

    found = bulk.find(None, after_id=after_id, limit=limit)
    if as_json:
        typer.echo(json.dumps([j.model_dump(mode="json") for j in found], indent=2))
        return
    for job in found:
        typer.echo(_line(job))


@bulk_app.command("pause")
def pause(job_id: int) -> None:
    """Publish no more chunks; those in flight finish."""
    from handlers import bulk

    typer.echo(_line(_refusing(lambda: bulk.pause(job_id, None))))


@bulk_app.command("resume")
def resume(job_id: int, follow: Follow = True) -> None:
    from handlers import bulk
    from settings import get_settings

    job = _refusing(lambda: bulk.resume(job_id, None, get_settings(), _publish()))
    typer.echo(_line(job))
    if follow:
        _follow(job_id)


@bulk_app.command("cancel")
def cancel(job_id: int) -> None:
    """End the job: done items stay done."""
    from handlers import bulk

    typer.echo(_line(_refusing(lambda: bulk.cancel(job_id, None))))


@bulk_app.command("retry-failed")
def retry_failed(job_id: int, follow: Follow = True) -> None:
    """Run the failed items again, and only them."""
    from handlers import bulk
    from settings import get_settings

    job = _refusing(lambda: bulk.retry_failed(job_id, None, get_settings(), _publish()))
    typer.echo(_line(job))
    if follow:
        _follow(job_id)


def _line(job: BulkJobOut) -> str:
    return (
        f"bulk job {job.id} ({job.action['action']}, account {job.account_id}): {job.state}, "
        f"{job.done} done, {job.failed} failed, {job.pending} pending of {job.total}"
    )


def _follow(job_id: int, poll_s: float = 0.5) -> None:
    """Until the job is no longer running: a progress bar on a terminal, lines otherwise."""
    from handlers import bulk

    def read() -> BulkJobOut:
        return _refusing(lambda: bulk.get(job_id, None, limit=0))

    job = read()
    if sys.stdout.isatty():
        from rich.progress import Progress

        with Progress() as bar:
            task = bar.add_task(f"bulk job {job_id}", total=job.total or 1)
            while True:
                bar.update(task, completed=job.done + job.failed)
                if job.state != "running":
                    break
                time.sleep(poll_s)
                job = read()
    else:
        last = None
        while True:
            seen = (job.state, job.done, job.failed)
            if seen != last:
                typer.echo(_line(job))
                last = seen
            if job.state != "running":
                break
            time.sleep(poll_s)
            job = read()
    if job.state == "completed_with_failures":
        typer.echo(f"{job.failed} failed: inboxsync bulk show {job_id}", err=True)
        raise typer.Exit(1)
