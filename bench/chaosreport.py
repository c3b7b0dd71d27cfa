"""The chaos run's report: bench/chaos.md (Markdown) and the summary printed at the end."""

from __future__ import annotations

import os
from collections import Counter
from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.chaos import Fault, Result
    from bench.chaosclient import Tally

LISTED = 40  # lines of each kind of finding shown in the report (all are counted)


def _n(value: float) -> str:
    return f"{value:,.0f}"


LISTED_TIMES = 6  # a kind of fault injected more often is summed up (each is in the timeline)


def _faults(result: Result) -> str:
    """Each kind of fault: how often, when, and how long the service was away if measured."""
    by_kind: dict[str, list[Fault]] = {}
    for f in result.faults:
        by_kind.setdefault(f.kind, []).append(f)
    parts = []
    for kind, faults in by_kind.items():
        if len(faults) > LISTED_TIMES:
            gaps = [b.at_s - a.at_s for a, b in zip(faults, faults[1:], strict=False)]
            when = (
                f"from {faults[0].at_s:.0f} s to {faults[-1].at_s:.0f} s, "
                f"{min(gaps):.0f}–{max(gaps):.0f} s apart; each in the timeline below"
            )
        else:
            when = ", ".join(
                f"at {f.at_s:.0f} s" + (f", {f.detail}" if f.detail.startswith("back") else "")
                for f in faults
            )
        parts.append(f"{kind} ×{len(faults)} ({when})")
    return "; ".join(parts)


def _recovery() -> str:
    """The recovery clocks the run shortens (bench/chaos.py FAST_RECOVERY), so that a reader
    can tell a killed worker's work from a stall."""
    from bench.chaos import FAST_RECOVERY  # bench.chaos imports this module

    return ", ".join(f"`{k}={v}`" for k, v in FAST_RECOVERY.items())


def _latencies(tally: Tally) -> str:
    parts = []
    for kind, seconds in sorted(tally.seconds.items()):
        ordered = sorted(seconds)
        p50, p99 = (
            ordered[len(ordered) // 2],
            ordered[min(len(ordered) - 1, len(ordered) * 99 // 100)],
        )
        parts.append(f"{kind} p50 {p50 * 1000:,.0f} ms, p99 {p99 * 1000:,.0f} ms")
    return "; ".join(parts)


def rows(result: Result) -> list[tuple[str, str]]:
    """The report's table: (what, figure)."""
    plan, tally, found, t = result.plan, result.tally, result.findings, result.timings
    mails = sum(1 for m in plan.messages if m.mail)
    generic = len(plan.messages) - mails
    traffic_s = max(t.get("traffic", 0.0), 1e-9)
    end_to_end_s = max(t.get("traffic", 0.0) + t.get("drain", 0.0), 1e-9)
    answers = Counter(f"{status} {outcome}" for status, outcome in tally.answers.values())
    retried = ", ".join(f"{why} {n:,}" for why, n in tally.retries.most_common()) or "none"
    dead = sum(found.dead_letters.values())
    return [
        ("seed", str(plan.seed)),
        (
            "events (distinct)",
            f"{_n(plan.events)}: {_n(generic)} generic webhooks, {_n(mails)} mails in "
            f"{_n(len(plan.mail_threads))} threads, {_n(len(plan.actions))} agents' actions",
        ),
        ("plan digest (same seed and size, same sends)", f"`{plan.digest()}`"),
        ("sends", f"{_n(len(plan.sends))} ({_n(len(plan.sends) - plan.events)} duplicates sent)"),
        ("HTTP requests (retries included)", f"{_n(tally.attempts)}; retried: {retried}"),
        (
            "acknowledged",
            f"{_n(len(tally.acknowledged))} webhook messages ({_n(len(tally.delivery_ids))} "
            f"deliveries); actions: " + ", ".join(f"{k} {v:,}" for k, v in sorted(answers.items())),
        ),
        ("faults injected", _faults(result) or "none"),
        ("recovery clocks (shortened for the run)", _recovery()),
        ("**lost**", f"**{len(found.lost)}**"),
        ("**duplicated**", f"**{len(found.duplicated)}**"),
        ("**mismatches** (conversations/tickets ≠ docs/rules.md)", f"**{len(found.mismatched)}**"),
        (
            "mail threads in one live conversation",
            f"{_n(found.threads - len(found.threads_split))} of {_n(found.threads)}",
        ),
        ("dead letters", f"{dead}" + ("" if not dead else " (reasons below)")),
        (
            "changes left pending though recorded or dead-lettered (published again forever)",
            f"{len(found.stuck)}",
        ),
        ("drained", "yes" if result.drained else "**no** (timed out)"),
        (
            "store after the run",
            ", ".join(f"{k} {v:,}" for k, v in found.counts.items()),
        ),
        (
            "throughput",
            f"{_n(plan.events / traffic_s)} events/s ({_n(len(plan.sends) / traffic_s)} sends/s) "
            f"while sending; {_n(plan.events / end_to_end_s)} events/s end to end "
            "(first send → all drained)",
        ),
        ("time to an answer, per send (retries included)", _latencies(tally)),
        (
            "duration",
            ", ".join(f"{k} {v:.0f} s" for k, v in t.items()),
        ),
    ]


def _section(title: str, lines: list[str]) -> str:
    if not lines:
        return ""
    shown = lines[:LISTED]
    more = f"\n- … and {len(lines) - LISTED} more" if len(lines) > LISTED else ""
    return f"\n## {title}\n\n" + "\n".join(f"- {line}" for line in shown) + more + "\n"


def _histories(histories: dict[str, list[str]]) -> str:
    """Each mismatched case's recorded history, and the model's state after each event."""
    if not histories:
        return ""
    out = "\n### Histories of mismatched cases (store's order; → the rules' state after)\n"
    for what, lines in histories.items():
        out += f"\n{what}:\n\n```\n" + "\n".join(lines) + "\n```\n"
    return out


def render(result: Result) -> str:
    """bench/chaos.md."""
    c, tally, found = result.config, result.tally, result.findings
    head = (
        "# Chaos run\n\n"
        f"`make chaos SEED={c.seed} EVENTS={c.events}` (or `.venv/bin/python bench/chaos.py "
        f"--seed {c.seed} --events {c.events}`; {c.workers} worker processes, "
        f"{c.concurrency} client connections{'' if c.faults else ', no faults: a baseline'}), "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
        f"{os.cpu_count()} cores. Its own PostgreSQL and Redis (append-only), `inboxsync serve` "
        "and the workers, all real processes; see bench/chaos.py. "
        f"Result: **{'pass' if result.ok else 'FAIL'}**.\n\n"
        "| | |\n|---|---|\n"
    )
    table = "\n".join(f"| {what} | {figure} |" for what, figure in rows(result)) + "\n"
    timeline = [f"{f.at_s:7.1f} s  {f.kind}: {f.detail}" for f in result.faults]
    dead = [f"×{n} {reason}" for reason, n in found.dead_letters.most_common()]
    skipped = [f"{a}: {why}" for a, why in sorted(tally.skipped.items())]
    refused = [f"×{n} {what}" for what, n in tally.refused.most_common()]
    return (
        head
        + table
        + _section("Lost", found.lost)
        + _section("Duplicated", found.duplicated)
        + _section("Mismatches", found.mismatches)
        + _histories(found.histories)
        + _section("Mail threads not in one live conversation", found.threads_split)
        + _section("Dead letters", dead)
        + _section("Changes still pending though recorded or dead-lettered", found.stuck)
        + _section("Client errors (bugs of the chaos run itself)", tally.client_errors)
        + _section(
            "Actions refused (4xx: rules refusing what the state at their place forbids)",
            [f"×{n} {why}" for why, n in tally.refusals.most_common()],
        )
        + _section("Webhooks refused (4xx)", refused)
        + _section("Sends given up", tally.gave_up)
        + _section("Actions not sent (their thread's conversation never appeared)", skipped)
        + ("\n## Faults, in order\n\n```\n" + "\n".join(timeline) + "\n```\n" if timeline else "")
    )


def summary(result: Result) -> str:
    """A few lines for the terminal."""
    lines = [f"{what}: {figure}".replace("**", "") for what, figure in rows(result)]
    for title, found in (
        ("lost", result.findings.lost),
        ("duplicated", result.findings.duplicated),
        ("mismatch", result.findings.mismatches),
        ("thread", result.findings.threads_split),
        ("stuck", result.findings.stuck),
        ("client error", result.tally.client_errors),
    ):
        lines += [f"  {title}: {line}" for line in found[:10]]
    lines.append("PASS" if result.ok else "FAIL")
    return "\n".join(lines)
