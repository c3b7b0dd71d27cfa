"""Admin writes, validated in one place, for the HTTP API (api/resources.py) and the CLI
(cli/main.py, cli/ops.py): accounts (made; name and tier changed), API tokens (made, listed,
revoked), inboxes, an inbox's outbound setting and secrets (rotated, the previous ones retired),
owners.

Each function takes the request's pydantic model (schemas/api.py, schemas/outbound.py), checks
what can be checked without the store, and returns the write to run in the caller's transaction
(the API's carries its Idempotency-Key record too)::

    write = admin.create_inbox(account_id, body)   # Invalid here: nothing is open yet
    with transaction() as session:
        inbox = write(session)                     # NotFound here: the transaction rolls back

The checks before the transaction include resolving the outbound host (handlers/netguard.py), so
a slow DNS answer never holds the store's write lock. Whichever check fails, nothing is written.
Errors are typed: ``Invalid`` (the API's 422, the CLI's exit 2) and ``NotFound`` (404, exit 2).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

from pydantic import TypeAdapter, ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from handlers import netguard
from handlers.channels import REGISTRY
from handlers.channels.base import describe
from schemas.api import AccountIn, AccountPatch, InboxIn, OwnerIn, TokenIn
from schemas.ops import SecretsIn
from schemas.outbound import OutboundConfig, SmtpOutbound, WidgetOutbound
from settings import get_settings
from store.models import Account, AccountRevision, ApiToken, Inbox, Owner

T = TypeVar("T")
Write = Callable[[Session], T]

OUTBOUND: TypeAdapter[OutboundConfig] = TypeAdapter(OutboundConfig)


class AdminError(Exception):
    """An admin write refused; the message says why in one line, without secrets."""


class Invalid(AdminError):
    """The request itself is wrong (a value, an unknown provider, a refused outbound host)."""


class NotFound(AdminError):
    """A row the write refers to does not exist (or is not the caller's to see)."""


def parse(validate: Callable[[Any], T], raw: Any, what: str) -> T:
    """``raw`` through a pydantic validator; ``Invalid`` naming each field and its problem, and
    never the values given (an outbound setting's error would otherwise repeat its password)."""
    try:
        return validate(raw)
    except ValidationError as exc:
        raise Invalid(f"invalid {what}: {describe(exc)}".replace("\n", " ")) from None


# ---- the writes ------------------------------------------------------------------------------


def create_account(body: AccountIn, *, now: datetime | None = None) -> Write[Account]:
    created_at = body.created_at or now or datetime.now(UTC)

    def write(session: Session) -> Account:
        account = Account(name=body.name, tier=body.tier, created_at=created_at)
        session.add(account)
        session.flush()
        return account

    return write


def update_account(
    account_id: int, body: AccountPatch, *, now: datetime | None = None
) -> Write[Account]:
    """Change what ``body`` names (name, tier) and keep a revision of what it was. A tier change
    routes the tickets created from ``now`` on (R1/R2 read the tier in force when a ticket was
    created: handlers/routing.py ``tier_at``); existing tickets stay where they are. Setting the
    values an account already has changes nothing and records nothing (a retry is harmless)."""

    def write(session: Session) -> Account:
        account = session.get(Account, account_id, with_for_update=True)
        if account is None:
            raise NotFound(f"account {account_id} not found")
        before: dict[str, Any] = {}
        after: dict[str, Any] = {}
        for name in sorted(body.model_fields_set):
            value = getattr(body, name)
            if getattr(account, name) != value:
                before[name], after[name] = getattr(account, name), value
                setattr(account, name, value)
        if after:
            session.add(
                AccountRevision(
                    account_id=account_id,
                    changed_at=now or datetime.now(UTC),
                    before=before,
                    after=after,
                    tier_before=before.get("tier"),
                )
            )
            session.flush()
        return account

    return write


def create_token(account_id: int, body: TokenIn, token_sha256: str) -> Write[ApiToken]:
    """Store a token's digest (api/auth.py makes the token, shown once, and its digest)."""

    def write(session: Session) -> ApiToken:
        _account(session, account_id)
        row = ApiToken(
            account_id=account_id,
            name=body.name,
            token_sha256=token_sha256,
            created_at=datetime.now(UTC),
        )
        session.add(row)
        session.flush()
        return row

    return write


def list_tokens(account_id: int, *, caller: int | None) -> Write[list[ApiToken]]:
    """An account's tokens (their digests stay in the store). ``caller``: the caller's account
    (another account is not found, as a missing one); None for the admin."""

    def read(session: Session) -> list[ApiToken]:
        if caller is not None and caller != account_id:
            raise NotFound(f"account {account_id} not found")
        _account(session, account_id)
        return list(
            session.scalars(
                select(ApiToken).where(ApiToken.account_id == account_id).order_by(ApiToken.id)
            )
        )

    return read


def revoke_token(token_id: int, *, account_id: int | None) -> Write[ApiToken]:
    """Delete a token: the next request made with it is refused (401); every request reads the
    store (api/auth.py), so nothing caches it. ``account_id``: the caller's account (another
    account's token is not found); None for the admin."""

    def write(session: Session) -> ApiToken:
        row = session.get(ApiToken, token_id)
        if row is None or (account_id is not None and row.account_id != account_id):
            raise NotFound(f"token {token_id} not found")
        session.delete(row)
        session.flush()
        return row

    return write


def create_inbox(account_id: int, body: InboxIn) -> Write[Inbox]:
    if body.provider not in REGISTRY:
        raise Invalid(f"unknown provider {body.provider!r}; known: {sorted(REGISTRY)}")
    if body.outbound is not None:
        check_outbound(body.outbound, field="outbound.")

    def write(session: Session) -> Inbox:
        _account(session, account_id)
        inbox = Inbox(
            account_id=account_id,
            name=body.name,
            channel=body.channel,
            provider=body.provider,
            secrets=body.secrets,
            outbound=body.outbound.model_dump(by_alias=True) if body.outbound else None,
        )
        session.add(inbox)
        session.flush()
        return inbox

    return write


def set_outbound(inbox_id: int, config: OutboundConfig, *, account_id: int | None) -> Write[Inbox]:
    """Replace how the inbox's replies go out. ``account_id``: the caller's account (another
    account's inbox is not found, as a missing one); None for the admin."""
    check_outbound(config)

    def write(session: Session) -> Inbox:
        inbox = _inbox(session, inbox_id, account_id)
        inbox.outbound = config.model_dump(by_alias=True)
        session.flush()
        return inbox

    return write


def rotate_secrets(inbox_id: int, body: SecretsIn, *, account_id: int | None) -> Write[Inbox]:
    """Make ``body.secrets`` the inbox's secrets and keep the ones they replace as ``previous``:
    a webhook signed with either is accepted (api/webhooks.py) until ``retire_secrets``. At most
    two sets: rotating again before retiring replaces the previous ones. Rotating to the secrets
    already current changes nothing (a retried request must not retire the old ones)."""

    def write(session: Session) -> Inbox:
        inbox = _inbox(session, inbox_id, account_id)
        if dict(inbox.secrets or {}) != body.secrets:
            inbox.previous_secrets = dict(inbox.secrets or {})
            inbox.secrets = dict(body.secrets)
            session.flush()
        return inbox

    return write


def retire_secrets(inbox_id: int, *, account_id: int | None) -> Write[Inbox]:
    """Stop accepting the previous secrets (none: nothing changes)."""

    def write(session: Session) -> Inbox:
        inbox = _inbox(session, inbox_id, account_id)
        inbox.previous_secrets = None
        session.flush()
        return inbox

    return write


def create_owner(account_id: int, body: OwnerIn) -> Write[Owner]:
    def write(session: Session) -> Owner:
        _account(session, account_id)
        owner = Owner(account_id=account_id, name=body.name, email=body.email)
        session.add(owner)
        session.flush()
        return owner

    return write


# ---- checks ----------------------------------------------------------------------------------


def _account(session: Session, account_id: int) -> None:
    if session.get(Account, account_id) is None:
        raise NotFound(f"account {account_id} not found")


def _inbox(session: Session, inbox_id: int, account_id: int | None) -> Inbox:
    """The inbox, locked for the write, if the caller (``account_id``; None: admin) may see it."""
    inbox = session.get(Inbox, inbox_id, with_for_update=True)
    if inbox is None or (account_id is not None and inbox.account_id != account_id):
        raise NotFound(f"inbox {inbox_id} not found")
    return inbox


def check_outbound(config: OutboundConfig, *, field: str = "") -> None:
    """Refuse an outbound host workers would not connect to (handlers/netguard.py), now rather
    than at the first reply. The workers check again when they connect: that check counts."""
    host, port, name = outbound_target(config)
    try:
        netguard.check_saved(host, port, allow_private=get_settings().outbound_allow_private)
    except netguard.TargetRefused as exc:
        raise Invalid(f"{field}{name}: {exc}") from None


def outbound_target(config: OutboundConfig) -> tuple[str, int, str]:
    """The host and port a sender connects to, and the field that names them."""
    if isinstance(config, SmtpOutbound):
        return config.host.strip("[]"), config.port, "host"
    name = "reply_url" if isinstance(config, WidgetOutbound) else "api_url"
    url = urlsplit(getattr(config, name))
    return url.hostname or "", url.port or (443 if url.scheme == "https" else 80), name
