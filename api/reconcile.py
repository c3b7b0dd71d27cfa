"""``POST /reconcile`` (admin): find drift from the rules and repair it now, or with
``dry_run=true`` only report it (handlers/reconcile.py). The periodic rounds run the same once
per ``INBOXSYNC_RECONCILE_INTERVAL_S``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from api.auth import Admin
from handlers import reconcile
from schemas.reconcile import ReconcileReport

router = APIRouter(tags=["admin"])


@router.post("/reconcile", response_model=ReconcileReport)
def run_reconcile(request: Request, _: Admin, dry_run: bool = False) -> Any:
    """Repair drift (a closed ticket with open conversations, deleted or trashed rows whose case
    is not, a conversation away from its ticket's location), each repair a recorded change with
    its cause, and count work stuck past its deadline. ``dry_run``: report, change nothing."""
    report = reconcile.run(request.app.state.settings, dry_run=dry_run)
    return report.model_dump(mode="json")
