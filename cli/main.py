"""The ``inboxsync`` command: run the service, the workers, the migrations, the demo; admin.

Admin commands go through the same validated writes as the API (handlers/admin.py): what the
API refuses, they refuse, with one line on stderr and exit code 2, and nothing written.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer

from cli import bulk, maintenance, ops, subscribers

if TYPE_CHECKING:
    from handlers.admin import Write

T = TypeVar("T")

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help=__doc__, pretty_exceptions_enable=False
)


def _show_version(value: bool) -> None:
    if value:
        from version import version

        typer.echo(f"inboxsync {version()}")
        raise typer.Exit()


@app.callback()
def _options(
    show_version: Annotated[
        bool,
        typer.Option("--version", callback=_show_version, is_eager=True, help="print the version"),
    ] = False,
) -> None:
    """inboxsync: support-inbox webhooks in, conversations and tickets out, kept in sync."""


def main() -> None:
    """The ``inboxsync`` command: a known configuration, connection or permission problem is one
    line that names the setting and the fix (cli/errors.py), never a traceback."""
    from cli.errors import explain

    try:
        app()
    except SystemExit:
        raise
    except BaseException as exc:
        explained = explain(exc)
        if explained is None:
            raise
        message, code = explained
        typer.echo(f"inboxsync: {message}", err=True)
        sys.exit(code)


ALL_QUEUES = "ingest,inbox,helpdesk,outbound,bulk"


@app.command()
def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes")] = 1,
    migrate_first: Annotated[bool, typer.Option("--migrate/--no-migrate")] = True,
) -> None:
    """Run the HTTP service (webhook ingress and API)."""
    import uvicorn

    from settings import DEFAULT_ADMIN_TOKEN, get_settings

    if get_settings().admin_token == DEFAULT_ADMIN_TOKEN and not _loopback(host):
        _fail(
            f"refusing to serve on {host} with the default admin token: set "
            "INBOXSYNC_ADMIN_TOKEN to a secret of your own (or serve on 127.0.0.1)"
        )
    _observability("serve", several=workers > 1)
    if migrate_first:
        migrate()
    else:
        _preflight(broker=False)
    uvicorn.run(
        "api.main:app",
        host=host,
        port=port,
        workers=workers,
        log_config=None,  # ours (observability/logs.py); the access log is the app's own
        access_log=False,
    )


@app.command()
def worker(
    queues: Annotated[str, typer.Option("-Q", "--queues", help="comma-separated")] = ALL_QUEUES,
    concurrency: Annotated[int, typer.Option("-c", "--concurrency")] = 0,
    pool: str = "prefork",
    loglevel: str = "info",
) -> None:
    """Run a Celery worker with the project's configuration (celeryconfig.py)."""
    _observability("worker", several=True, level=loglevel)
    _preflight(broker=True)
    from settings import get_settings
    from workers.app import app as celery_app

    # Queues are named as the code names them; on the broker with INBOXSYNC_QUEUE_PREFIX.
    named = ",".join(get_settings().queue_name(q.strip()) for q in queues.split(",") if q.strip())
    argv = ["worker", "-Q", named, "--pool", pool, "--loglevel", loglevel]
    if pool == "solo" and not concurrency:
        # One task at a time: Celery would size the prefetch by the CPU count, and RabbitMQ
        # pushes that many messages to the worker, held from other workers and from coalescing.
        concurrency = 1
    if concurrency:
        argv += ["--concurrency", str(concurrency)]
    celery_app.worker_main(argv)


@app.command()
def scheduler() -> None:
    """Run the periodic work in the foreground (it also runs in every serve and worker process;
    one process of the deployment does each round, whichever holds the store's lease)."""
    from workers.periodic import Scheduler

    runner = Scheduler()
    typer.echo(f"periodic work every {runner.settings.sweep_interval_s:g} s as {runner.holder}")
    try:
        runner.run()
    except KeyboardInterrupt:
        pass
    finally:
        runner.stop()


def _observability(role: str, *, several: bool, level: str | None = None) -> None:
    """Logs in the configured format; metrics shared by this process and its children
    (multiprocess mode) when there are several. Before anything counts or logs."""
    from settings import get_settings

    settings = get_settings()
    if several:
        from observability.multiprocess import use_directory

        use_directory(settings.data_dir, role)
    from observability import logs

    logs.configure(settings.log_format, level or settings.log_level)


def _loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _preflight(*, broker: bool) -> None:
    """Fail at start, in one line, on what would otherwise fail every task later: the store
    unreachable or not migrated, the broker unreachable."""
    from api.health import schema_problem

    if problem := schema_problem():
        from sqlalchemy import text

        from store.db import engine

        with engine().connect() as conn:  # an unreachable store raises here, and is explained
            conn.execute(text("SELECT 1"))
        _fail(f"the store is not ready: {problem}")
    if broker:
        from workers.app import app as celery_app

        with celery_app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=5)


@app.command()
def migrate() -> None:
    """Bring the store's schema to the newest version."""
    from store.migrate import upgrade

    upgrade()


@app.command()
def demo(
    keep: Annotated[bool, typer.Option(help="keep the demo's data from earlier runs")] = False,
) -> None:
    """Run the whole pipeline on this machine and show what it did."""
    from cli.demo import run

    sys.exit(run(keep=keep))


@app.command("create-account")
def create_account(
    name: str,
    tier: Annotated[str, typer.Option(help="free, starter, professional or enterprise")] = "free",
    created_at: Annotated[str | None, typer.Option(help="ISO 8601; default now")] = None,
) -> None:
    """Create an account; prints its id."""
    from handlers import admin
    from schemas.api import AccountIn

    raw = {"name": name, "tier": tier, "created_at": created_at}
    account = _commit(
        lambda: admin.create_account(admin.parse(AccountIn.model_validate, raw, "account"))
    )
    typer.echo(account.id)


@app.command("update-account")
def update_account(
    account_id: int,
    tier: Annotated[
        str | None, typer.Option(help="free, starter, professional or enterprise")
    ] = None,
    name: Annotated[str | None, typer.Option(help="a new name")] = None,
) -> None:
    """Change an account's tier or name. A tier change routes the tickets created from now on
    (R1/R2); existing tickets stay where they are. Prints the account's id, tier and where its
    new tickets go."""
    from handlers import admin, routing
    from schemas.api import AccountPatch
    from settings import get_settings

    raw = {k: v for k, v in (("name", name), ("tier", tier)) if v is not None}
    account = _commit(
        lambda: admin.update_account(
            account_id, admin.parse(AccountPatch.model_validate, raw, "account change")
        )
    )
    settings = get_settings()
    goes = routing.ticket_location(
        account.tier,
        account.created_at,
        cutoff=settings.helpdesk_cutoff,
        helpdesk_tiers=settings.helpdesk_tiers,
    )
    typer.echo(f"account {account.id} {account.name!r}: tier {account.tier}, new tickets: {goes}")


@app.command("create-inbox")
def create_inbox(
    account_id: int,
    name: str,
    channel: str = "email",
    provider: str = "generic",
    secret: Annotated[list[str] | None, typer.Option(help="key=value, repeatable")] = None,
) -> None:
    """Create an inbox; prints its id and webhook path."""
    from handlers import admin
    from schemas.api import InboxIn

    def prepare() -> Write[Any]:
        raw = {
            "name": name,
            "channel": channel,
            "provider": provider,
            "secrets": _pairs("--secret", secret),
        }
        return admin.create_inbox(account_id, admin.parse(InboxIn.model_validate, raw, "inbox"))

    inbox = _commit(prepare)
    typer.echo(f"{inbox.id} /webhooks/{inbox.id}")


@app.command()
def ingest(
    files: Annotated[list[Path], typer.Argument(help="saved webhook bodies or .eml files")],
    inbox: Annotated[int, typer.Option(help="the inbox they belong to")],
    provider: Annotated[str, typer.Option(help="the provider whose format the files are in")],
    batch: Annotated[int, typer.Option(help="deliveries per broker message")] = 200,
) -> None:
    """Feed saved payloads through the webhook's path: checked by the provider's adapter,
    journaled, queued for the workers (replays and imports). Signatures are not checked: the
    operator running this is trusted. A file the adapter refuses is reported and skipped."""
    from rich.progress import Progress

    from api.app import enqueue
    from handlers.channels import adapter_for
    from handlers.channels.base import WebhookError, WebhookRequest
    from handlers.journal import delivery

    adapter = adapter_for(provider)
    # What the provider posts: an adapter says so when it is not JSON (a raw mail, a form).
    content_type = getattr(adapter, "saved_content_type", "application/json")
    pending: list[dict[str, Any]] = []
    queued = refused = 0
    with Progress() as progress:
        task = progress.add_task(f"inbox {inbox} ({provider})", total=len(files))
        for path in files:
            request = WebhookRequest(
                method="POST",
                url=f"file://{path}",
                headers={"content-type": content_type},
                query={},
                body=path.read_bytes(),
                inbox_id=inbox,
            )
            try:
                accepted = adapter.accept(request)
            except WebhookError as exc:
                refused += 1
                progress.console.print(f"[red]refused[/red] {path}: {exc}")
            else:
                pending += [delivery(inbox, provider, p) for p in accepted.payloads]
            if len(pending) >= batch:
                enqueue(pending)
                queued, pending = queued + len(pending), []
            progress.advance(task)
        if pending:
            enqueue(pending)
            queued += len(pending)
    typer.echo(f"queued {queued} deliveries, refused {refused} files")
    if refused:
        raise typer.Exit(1)


@app.command("set-outbound")
def set_outbound(
    inbox_id: int,
    via: Annotated[
        str,
        typer.Option(
            help="mail: postmark, mailgun, sendgrid, smtp; chat: slack, twilio, whatsapp, "
            "telegram, widget"
        ),
    ],
    sender: Annotated[
        str | None,
        typer.Option("--from", help='mail only: "Name <address>" replies come from'),
    ] = None,
    setting: Annotated[
        list[str] | None,
        typer.Option(help="key=value, repeatable: the via's settings, listed above"),
    ] = None,
) -> None:
    """Set how an inbox's replies go out (README: Replies; chat: Ingestion, Chat).

    \b
    --via and its --setting keys: required; optional (default)
    mail, with --from:
      postmark  server_token; message_stream (outbound), api_url
      mailgun   api_key, domain; api_url (https://api.eu.mailgun.net for the EU)
      sendgrid  api_key; api_url
      smtp      host; port (587), security (starttls, tls, none), username, password
    chat, no --from (a reply goes back into the chat it answers):
      slack     bot_token (xoxb-…); api_url
      twilio    account_sid, auth_token; api_url, status_callback_url (the inbox's webhook URL)
      whatsapp  access_token, phone_number_id; api_url (https://graph.facebook.com/v21.0)
      telegram  bot_token; api_url
      widget    reply_url, signing_secret (whsec_ and base64)
    every via: timeout_s (30); api_url defaults to the provider's own API.
    """
    from handlers import admin

    def prepare() -> Write[Any]:
        raw = {"via": via, **({"from": sender} if sender else {}), **_pairs("--setting", setting)}
        config = admin.parse(admin.OUTBOUND.validate_python, raw, "outbound setting")
        return admin.set_outbound(inbox_id, config, account_id=None)

    _commit(prepare)
    typer.echo(f"inbox {inbox_id} replies via {via}" + (f" from {sender}" if sender else ""))


@app.command()
def reply(
    conversation_id: int,
    text: Annotated[str | None, typer.Option(help="the reply's text")] = None,
    text_file: Annotated[Path | None, typer.Option(help="read the text from a file")] = None,
    html_file: Annotated[Path | None, typer.Option(help="an HTML version")] = None,
    to: Annotated[list[str] | None, typer.Option(help="default: the customer")] = None,
    cc: Annotated[list[str] | None, typer.Option()] = None,
    key: Annotated[str | None, typer.Option(help="idempotency key: run again, no 2nd mail")] = None,
    wait: Annotated[float, typer.Option(help="seconds to wait for sent/failed; 0: don't")] = 30,
) -> None:
    """Reply to a conversation's customer by mail, through the inbox's provider."""
    from pydantic import ValidationError

    from handlers.outbound import replies
    from handlers.outbound.compose import ComposeError
    from schemas.outbound import ReplyIn
    from workers import publish

    body_text = text_file.read_text() if text_file else text
    try:
        body = ReplyIn(
            text=body_text or "",
            html=html_file.read_text() if html_file else None,
            to=to or None,
            cc=cc or [],
        )
        reply_id, created = replies.queue_reply(
            account_id=None,
            conversation_id=conversation_id,
            body=body,
            key=f"cli:{key}" if key else None,
        )
    except (ValidationError, ComposeError, replies.ReplyRefused, replies.ReplyNotFound) as exc:
        _fail(str(exc))
    if created:
        publish.reply(reply_id)
    typer.echo(f"reply {reply_id} {'queued' if created else 'already queued'}")
    _follow(reply_id, wait)


@app.command()
def resend(reply_id: int, wait: float = 30) -> None:
    """Queue a failed reply again (same mail, same Message-ID)."""
    from handlers.outbound import replies
    from workers import publish

    try:
        replies.resend(reply_id, account_id=None)
    except (replies.ReplyRefused, replies.ReplyNotFound) as exc:
        _fail(str(exc))
    publish.reply(reply_id)
    _follow(reply_id, wait)


def _follow(reply_id: int, wait: float) -> None:
    import time

    from store.db import reading
    from store.models import Reply

    deadline = time.monotonic() + wait
    while True:
        with reading() as session:
            row = session.get(Reply, reply_id)
            assert row is not None
            state, error = row.state, row.error
        if state in ("sent", "failed") or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    typer.echo(f"reply {reply_id}: {state}" + (f" ({error})" if error else ""))
    if state == "failed":
        raise typer.Exit(1)


def _fail(message: str) -> NoReturn:
    typer.echo(message, err=True)
    raise typer.Exit(2)


def _commit(prepare: Callable[[], Write[T]]) -> T:
    """Run an admin write (handlers/admin.py) in its own transaction; a refusal is one line on
    stderr and exit code 2, with nothing written."""
    from sqlalchemy import exc as sa_exc

    from handlers import admin
    from store.db import transaction

    try:
        write = prepare()
        with transaction() as session:
            return write(session)
    except admin.AdminError as exc:
        _fail(str(exc))
    except sa_exc.IntegrityError:  # a concurrent write won a race on a unique row
        _fail("the write conflicts with existing data; nothing was written")


def _pairs(option: str, given: list[str] | None) -> dict[str, str]:
    """``key=value`` options as a dict (an admin.Invalid names the one without ``=``)."""
    from handlers import admin

    pairs: dict[str, str] = {}
    for item in given or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise admin.Invalid(f"{option} takes key=value, got one without '=' or key")
        pairs[key] = value
    return pairs


@app.command("create-owner")
def create_owner(account_id: int, name: str, email: str | None = None) -> None:
    """Create an owner (agent); prints its id."""
    from handlers import admin
    from schemas.api import OwnerIn

    raw = {"name": name, "email": email}
    owner = _commit(
        lambda: admin.create_owner(account_id, admin.parse(OwnerIn.model_validate, raw, "owner"))
    )
    typer.echo(owner.id)


@app.command("create-token")
def create_token(account_id: int, name: str = "cli") -> None:
    """Create an API token for an account; prints it (only its digest is stored)."""
    from api.auth import new_token
    from handlers import admin
    from schemas.api import TokenIn

    token, digest = new_token()
    body = {"name": name}
    _commit(
        lambda: admin.create_token(
            account_id, admin.parse(TokenIn.model_validate, body, "token"), digest
        )
    )
    typer.echo(token)


ops.register(app)  # status, dead-letters, tokens and inbox secrets (cli/ops.py)
maintenance.register(app)  # reconcile (cli/maintenance.py)
subscribers.register(app)  # outbound events' subscribers (cli/subscribers.py)
bulk.register(app)  # bulk jobs (cli/bulk.py)

if __name__ == "__main__":
    main()
