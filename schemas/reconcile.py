"""What reconciliation found and did (handlers/reconcile.py): ``POST /reconcile`` and
``inboxsync reconcile --json`` answer this."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

RuleId = Literal["S1", "D1", "D2", "R1", "R2"]


class Repair(BaseModel):
    rule: RuleId
    account_id: int
    ticket_id: int
    conversation_ids: list[int]
    cause: str = Field(description="What was found: the drift, in words.")
    change_id: str = Field(
        description="The change that repairs it, derived from the drift: two reconcilers, or a "
        "rerun, repair it once."
    )
    outcome: Literal["repaired", "found", "duplicate", "rejected"] = Field(
        description="repaired: applied now; found: dry run, nothing changed; duplicate: "
        "another reconciler had already applied it; rejected: a rule refused it (see error)."
    )
    effects: list[dict[str, Any]] = Field(default_factory=list)
    error: str | None = None
    removed_by: str | None = Field(
        default=None, description="D1: the trash found, whose cause the case is removed with."
    )


class Stuck(BaseModel):
    """Journal rows, pending changes or replies past their deadline."""

    overdue: int = Field(
        description="Past their deadline: the periodic sweep publishes them again."
    )
    unswept: int = Field(
        description="Stuck where the sweep never looks (a time ahead of the clock, no due "
        "time): published again by reconciliation, unless a dry run."
    )
    republished: int = 0


class ReconcileReport(BaseModel):
    dry_run: bool
    started_at: datetime
    tickets_examined: int
    repairs: list[Repair]
    counts: dict[str, int] = Field(description="Drift found, by rule.")
    deliveries: Stuck
    changes: Stuck
    replies: Stuck
