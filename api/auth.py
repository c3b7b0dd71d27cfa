"""Who is calling: the admin token (settings) or one account's API token (``api_tokens``).

A token of account A sees only account A: any other account's object answers 404, exactly as
an object that does not exist, so that ids of other tenants cannot be probed.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select

from api.errors import ApiError, not_found
from handlers.channels.base import constant_time_equal
from settings import get_settings
from store.db import reading
from store.models import ApiToken


@dataclass(frozen=True)
class Principal:
    account_id: int | None  # None: the admin
    token_id: int | None = None  # the account token's row; None: the admin token

    @property
    def is_admin(self) -> bool:
        return self.account_id is None

    @property
    def cause(self) -> dict[str, object]:
        """What a change made by this caller records as its cause."""
        if self.token_id is None:
            return {"via": "api", "token": "admin"}
        return {"via": "api", "token_id": self.token_id}

    def sees(self, account_id: int) -> bool:
        return self.is_admin or self.account_id == account_id

    def require(self, entity: str, entity_id: object, account_id: int | None) -> int:
        """The object's account if this caller may see it; 404 otherwise."""
        if account_id is None or not self.sees(account_id):
            raise not_found(entity, entity_id)
        return account_id

    def account_for_create(self, given: int | None) -> int:
        if self.is_admin:
            if given is None:
                raise ApiError(
                    422, "invalid_request", "account_id is required with the admin token"
                )
            return given
        if given is not None and given != self.account_id:
            raise not_found("account", given)
        assert self.account_id is not None
        return self.account_id


def new_token() -> tuple[str, str]:
    """A fresh token and the digest that is stored."""
    token = "isk_" + secrets.token_urlsafe(32)
    return token, token_digest(token)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# Declared in the OpenAPI as the ``bearer`` scheme (so ``/docs`` has an Authorize button); its
# missing or malformed header is our 401, with our error body, not FastAPI's 403.
bearer = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="An account's API token (`isk_…`, from `POST /accounts/{id}/tokens`), or the "
    "admin token (`INBOXSYNC_ADMIN_TOKEN`).",
)


def principal(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    if credentials is None or not credentials.credentials.strip():
        raise ApiError(401, "unauthenticated", "send Authorization: Bearer <token>")
    token = credentials.credentials.strip()
    if constant_time_equal(token, get_settings().admin_token):
        return Principal(account_id=None)
    with reading() as session:
        found = session.execute(
            select(ApiToken.account_id, ApiToken.id).where(
                ApiToken.token_sha256 == token_digest(token)
            )
        ).first()
    if found is None:
        raise ApiError(401, "unauthenticated", "unknown token")
    return Principal(account_id=found.account_id, token_id=found.id)


def admin(who: Annotated[Principal, Depends(principal)]) -> Principal:
    if not who.is_admin:
        raise ApiError(403, "forbidden", "this needs the admin token")
    return who


Caller = Annotated[Principal, Depends(principal)]
Admin = Annotated[Principal, Depends(admin)]
