"""R1/R2: where a new ticket lives, and which Celery queue does its work."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from schemas.changes import Location


def ticket_location(
    tier: str, account_created_at: datetime, *, cutoff: datetime, helpdesk_tiers: Collection[str]
) -> Location:
    """R1: help-desk tiers created on or after the cutoff go to the help desk; R2: the rest stay."""
    if tier in helpdesk_tiers and account_created_at >= cutoff:
        return "help_desk"
    return "inbox"


def queue_for(location: str) -> str:
    return "helpdesk" if location == "help_desk" else "inbox"
