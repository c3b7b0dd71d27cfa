"""R1/R2: where a new ticket lives, and which Celery queue does its work.

A ticket takes the tier its account had when the ticket was created (inboxsync's clock: the
creation's ``occurred_at``): a tier change (``PATCH /accounts/{id}``) routes the tickets created
after it and leaves the ones before where they are (docs/rules.md).
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from schemas.changes import Location
from store.models import Account, AccountRevision


def ticket_location(
    tier: str, account_created_at: datetime, *, cutoff: datetime, helpdesk_tiers: Collection[str]
) -> Location:
    """R1: help-desk tiers created on or after the cutoff go to the help desk; R2: the rest stay."""
    if tier in helpdesk_tiers and account_created_at >= cutoff:
        return "help_desk"
    return "inbox"


def queue_for(location: str) -> str:
    return "helpdesk" if location == "help_desk" else "inbox"


def tier_at(session: Session, account: Account, at: datetime) -> str:
    """The account's tier in force at ``at``: the tier the first tier change after ``at``
    replaced, or else the current one. A change at exactly ``at`` is in force at ``at``."""
    replaced = session.scalar(
        select(AccountRevision.tier_before)
        .where(
            AccountRevision.account_id == account.id,
            AccountRevision.tier_before.is_not(None),
            AccountRevision.changed_at > at,
        )
        .order_by(AccountRevision.changed_at, AccountRevision.id)
        .limit(1)
    )
    return replaced or account.tier
