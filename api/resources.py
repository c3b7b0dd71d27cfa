"""Accounts, tokens, inboxes and owners: plain rows written by the API itself, through the
validated admin writes the CLI uses too (handlers/admin.py); its errors map in api/errors.py.
Tokens are listed (never shown again) and revoked; an inbox's secrets rotate, two sets valid at
a time until the previous one is retired.

``Idempotency-Key`` on these writes: the first answer is stored with the row, in the same
transaction, and returned to every retry with that key; the same key with another body is 422.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Body, Header
from sqlalchemy import exc as sa_exc
from sqlalchemy import select
from sqlalchemy.orm import Session

from api import errors
from api.auth import Admin, Caller, new_token
from api.errors import JSON, ApiError
from handlers import admin, routing
from schemas.api import (
    AccountIn,
    AccountOut,
    AccountPatch,
    InboxIn,
    InboxOut,
    OwnerIn,
    OwnerOut,
    TokenIn,
    TokenOut,
)
from schemas.ops import SecretsIn, SecretsOut, TokenInfo
from schemas.outbound import OutboundConfig
from schemas.types import Id
from settings import get_settings
from store.db import reading, transaction
from store.models import Account, ApiToken, IdempotentResponse, Inbox, Owner

router = APIRouter()
IdempotencyKey = Annotated[str | None, Header(max_length=200)]
OutboundBody = Annotated[OutboundConfig, Body()]


def idempotent(
    scope: str, key: str | None, request: Any, status: int, write: Callable[[Session], Any]
) -> JSON:
    """Run ``write`` once per (scope, key); every retry gets the first answer."""
    digest = hashlib.sha256(orjson.dumps(request, option=orjson.OPT_SORT_KEYS)).hexdigest()
    if key is not None and (prior := _prior(scope, key, digest)) is not None:
        return prior
    try:
        with transaction() as session:
            body = write(session)
            if key is not None:
                session.add(
                    IdempotentResponse(
                        scope=scope,
                        key=key,
                        request_sha256=digest,
                        status_code=status,
                        body=_redacted(body),
                        created_at=datetime.now(UTC),
                    )
                )
    except sa_exc.IntegrityError:
        # A concurrent retry with the same key won the race: answer as it did.
        if key is not None and (prior := _prior(scope, key, digest)) is not None:
            return prior
        raise ApiError(409, "conflict", "the write conflicts with existing data") from None
    return JSON(body, status_code=status)


def _prior(scope: str, key: str, digest: str) -> JSON | None:
    with reading() as session:
        row = session.get(IdempotentResponse, (scope, key))
        if row is None:
            return None
        if row.request_sha256 != digest:
            raise ApiError(
                422, "idempotency_key_reused", "this Idempotency-Key was used with another body"
            )
        return JSON(row.body, status_code=row.status_code)


def _redacted(body: Any) -> Any:
    # A token is shown once: a replay says it was issued but does not store it in clear.
    if isinstance(body, dict) and body.get("token"):
        return {**body, "token": None}
    return body


def account_out(account: Account) -> dict[str, Any]:
    settings = get_settings()
    location = routing.ticket_location(
        account.tier,
        account.created_at,
        cutoff=settings.helpdesk_cutoff,
        helpdesk_tiers=settings.helpdesk_tiers,
    )
    return AccountOut(
        id=account.id,
        name=account.name,
        tier=account.tier,  # type: ignore[arg-type]
        created_at=account.created_at,
        ticket_location=location,
    ).model_dump(mode="json")


@router.post(
    "/accounts",
    status_code=201,
    response_model=AccountOut,
    responses=errors.responses(409),
    tags=["admin"],
)
def create_account(body: AccountIn, _: Admin, idempotency_key: IdempotencyKey = None) -> Any:
    write = admin.create_account(body)
    return idempotent(
        "accounts",
        idempotency_key,
        body.model_dump(mode="json"),
        201,
        lambda session: account_out(write(session)),
    )


@router.get("/accounts", response_model=list[AccountOut], tags=["admin"])
def list_accounts(who: Caller) -> Any:
    with reading() as session:
        query = select(Account).order_by(Account.id)
        if not who.is_admin:
            query = query.where(Account.id == who.account_id)
        return [account_out(a) for a in session.scalars(query)]


@router.get(
    "/accounts/{account_id}",
    response_model=AccountOut,
    responses=errors.responses(404),
    tags=["admin"],
)
def get_account(account_id: Id, who: Caller) -> Any:
    with reading() as session:
        account = session.get(Account, account_id)
        who.require("account", account_id, None if account is None else account.id)
        assert account is not None
        return account_out(account)


@router.patch(
    "/accounts/{account_id}",
    response_model=AccountOut,
    responses=errors.responses(404, 409),
    tags=["admin"],
)
def update_account(
    account_id: Id, body: AccountPatch, _: Admin, idempotency_key: IdempotencyKey = None
) -> Any:
    """Change an account's name or tier (admin). A tier change routes the tickets created from
    now on by R1/R2 (``ticket_location`` says where); existing tickets stay where they are."""
    write = admin.update_account(account_id, body)
    return idempotent(
        f"accounts:{account_id}:patch",
        idempotency_key,
        body.model_dump(mode="json", exclude_unset=True),
        200,
        lambda session: account_out(write(session)),
    )


@router.post(
    "/accounts/{account_id}/tokens",
    status_code=201,
    response_model=TokenOut,
    responses=errors.responses(404, 409),
    tags=["admin"],
)
def create_token(
    account_id: Id, body: TokenIn, _: Admin, idempotency_key: IdempotencyKey = None
) -> Any:
    def write(session: Session) -> dict[str, Any]:
        token, digest = new_token()
        row = admin.create_token(account_id, body, digest)(session)
        return TokenOut(id=row.id, account_id=account_id, name=row.name, token=token).model_dump()

    scope = f"tokens:{account_id}"
    return idempotent(scope, idempotency_key, body.model_dump(mode="json"), 201, write)


def token_info(row: ApiToken) -> dict[str, Any]:
    return TokenInfo.model_validate(row, from_attributes=True).model_dump(mode="json")


@router.get(
    "/accounts/{account_id}/tokens",
    response_model=list[TokenInfo],
    responses={404: {}},
    tags=["admin"],
)
def list_tokens(account_id: Id, who: Caller) -> Any:
    """An account's API tokens: id, name, when made; never the token."""
    read = admin.list_tokens(account_id, caller=who.account_id)
    with reading() as session:
        return [token_info(t) for t in read(session)]


@router.delete("/tokens/{token_id}", response_model=TokenInfo, responses={404: {}}, tags=["admin"])
def revoke_token(token_id: Id, who: Caller) -> Any:
    """Revoke a token (the admin, or the token's own account): the next request made with it is
    answered 401."""
    write = admin.revoke_token(token_id, account_id=who.account_id)
    with transaction() as session:
        return token_info(write(session))


def inbox_out(inbox: Inbox) -> dict[str, Any]:
    return InboxOut(
        id=inbox.id,
        account_id=inbox.account_id,
        name=inbox.name,
        channel=inbox.channel,  # type: ignore[arg-type]
        provider=inbox.provider,
        webhook_path=f"/webhooks/{inbox.id}",
        replies_via=(inbox.outbound or {}).get("via"),
        replies_from=(inbox.outbound or {}).get("from"),
    ).model_dump()


@router.post(
    "/inboxes",
    status_code=201,
    response_model=InboxOut,
    responses=errors.responses(404, 409),
    tags=["inboxes"],
)
def create_inbox(body: InboxIn, who: Caller, idempotency_key: IdempotencyKey = None) -> Any:
    account_id = who.account_for_create(body.account_id)
    write = admin.create_inbox(account_id, body)
    scope = f"inboxes:{account_id}"
    return idempotent(
        scope,
        idempotency_key,
        body.model_dump(mode="json"),
        201,
        lambda session: inbox_out(write(session)),
    )


@router.put(
    "/inboxes/{inbox_id}/outbound",
    response_model=InboxOut,
    responses=errors.responses(404),
    tags=["inboxes"],
)
def set_inbox_outbound(inbox_id: Id, body: OutboundBody, who: Caller) -> Any:
    """Set how the inbox's replies go out (provider and credentials); replaces the old setting.
    Replies already queued use the new setting from their next attempt."""
    write = admin.set_outbound(inbox_id, body, account_id=who.account_id)
    with transaction() as session:
        return inbox_out(write(session))


def secrets_out(inbox: Inbox) -> dict[str, Any]:
    previous = sorted(inbox.previous_secrets) if inbox.previous_secrets is not None else None
    return SecretsOut(
        inbox_id=inbox.id, current=sorted(inbox.secrets or {}), previous=previous
    ).model_dump()


@router.post(
    "/inboxes/{inbox_id}/secrets",
    response_model=SecretsOut,
    responses={404: {}, 422: {}},
    tags=["inboxes"],
)
def rotate_inbox_secrets(inbox_id: Id, body: SecretsIn, who: Caller) -> Any:
    """Make these the inbox's secrets; the ones they replace stay valid (``previous``) until
    retired, so the provider can be switched over without refused webhooks. The ingress caches
    an inbox for 30 s: a new secret is accepted everywhere within that."""
    write = admin.rotate_secrets(inbox_id, body, account_id=who.account_id)
    with transaction() as session:
        return secrets_out(write(session))


@router.delete(
    "/inboxes/{inbox_id}/secrets/previous",
    response_model=SecretsOut,
    responses={404: {}},
    tags=["inboxes"],
)
def retire_inbox_secrets(inbox_id: Id, who: Caller) -> Any:
    """Stop accepting the previous secrets (within the ingress's 30 s cache)."""
    write = admin.retire_secrets(inbox_id, account_id=who.account_id)
    with transaction() as session:
        return secrets_out(write(session))


@router.get("/inboxes", response_model=list[InboxOut], tags=["inboxes"])
def list_inboxes(who: Caller) -> Any:
    with reading() as session:
        query = select(Inbox).order_by(Inbox.id)
        if not who.is_admin:
            query = query.where(Inbox.account_id == who.account_id)
        return [inbox_out(i) for i in session.scalars(query)]


def owner_out(owner: Owner) -> dict[str, Any]:
    return OwnerOut(
        id=owner.id, account_id=owner.account_id, name=owner.name, email=owner.email
    ).model_dump()


@router.post(
    "/owners",
    status_code=201,
    response_model=OwnerOut,
    responses=errors.responses(404, 409),
    tags=["owners"],
)
def create_owner(body: OwnerIn, who: Caller, idempotency_key: IdempotencyKey = None) -> Any:
    account_id = who.account_for_create(body.account_id)
    write = admin.create_owner(account_id, body)
    scope = f"owners:{account_id}"
    return idempotent(
        scope,
        idempotency_key,
        body.model_dump(mode="json"),
        201,
        lambda session: owner_out(write(session)),
    )


@router.get("/owners", response_model=list[OwnerOut], tags=["owners"])
def list_owners(who: Caller) -> Any:
    with reading() as session:
        query = select(Owner).order_by(Owner.id)
        if not who.is_admin:
            query = query.where(Owner.account_id == who.account_id)
        return [owner_out(o) for o in session.scalars(query)]
