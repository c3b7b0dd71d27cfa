"""``inboxsync reconcile [--dry-run] [--json]``: find drift from the rules and repair it now
(handlers/reconcile.py), as ``POST /reconcile`` does and the periodic rounds do once per
``INBOXSYNC_RECONCILE_INTERVAL_S``.

Registered on the ``inboxsync`` command by cli/main.py (``register``).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from schemas.reconcile import ReconcileReport


def register(app: typer.Typer) -> None:
    app.command("reconcile")(reconcile)


def reconcile(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="report what would be repaired; change nothing")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of lines")] = False,
) -> None:
    """Repair drift from the rules (S1, D1, D2, R1/R2), each repair a recorded change with its
    cause, and count deliveries, changes and replies stuck past their deadline."""
    from handlers import reconcile as reconciliation

    report = reconciliation.run(dry_run=dry_run)
    if as_json:
        typer.echo(json.dumps(report.model_dump(mode="json"), indent=2, ensure_ascii=False))
    else:
        for line in lines(report):
            typer.echo(line)


def lines(report: ReconcileReport) -> list[str]:
    verb = "would repair" if report.dry_run else "repaired"
    out = []
    for r in report.repairs:
        state = {"found": verb, "repaired": "repaired"}.get(r.outcome, r.outcome)
        out.append(f"{r.rule} ticket {r.ticket_id}: {state}: {r.cause} [{r.change_id}]")
        if r.error:
            out.append(f"  refused: {r.error}")
    found = ", ".join(f"{rule} {n}" for rule, n in sorted(report.counts.items())) or "none"
    out.append(f"drift: {found} ({report.tickets_examined} tickets examined)")
    for what, stuck in (
        ("deliveries", report.deliveries),
        ("pending changes", report.changes),
        ("replies", report.replies),
    ):
        out.append(
            f"{what} past their deadline: {stuck.overdue} (the sweep publishes them), "
            f"{stuck.unswept} the sweep would not see"
            + ("" if report.dry_run else f", {stuck.republished} published again")
        )
    if report.dry_run:
        out.append("dry run: nothing was changed")
    return out
