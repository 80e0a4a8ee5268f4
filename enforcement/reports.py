"""Transparency reports: what was reported, what was decided and how fast, over a period.

``transparency_report`` reads the events *recorded* in ``[since, until]`` in one pass over the log
(keyset pages by position, only the event types it counts) and returns plain counts; the
renderers turn them into a Rich table, CSV rows or a PNG chart.

- violations by category, by source (``unspecified`` when the reporter gave none) and by
  detection;
- decisions by kind, split into those the policy engine took and those an operator took
  (including the reversals an appeal orders);
- appeals filed and decided, by outcome;
- time to decision: for each violation reported in the period, from when it occurred to the first
  decision recorded in the period that names it; the median, and how many are still undecided
  (e.g. on an already terminated account, or the decision is still to come).
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from rich.console import Group
from rich.table import Table
from rich.text import Text

from events import EventStore, RecordedEvent
from events.schema import events
from events.store import row_to_event
from events.timefmt import format_time, to_utc
from projections.aup_events import SUSPENSION_OVERTURNED

# Decision events by the kind a report shows, mildest restriction first.
DECISION_KINDS: dict[str, str] = {
    "RemediationRequested": "warning / remediation",
    "ThrottleApplied": "throttle",
    "AccountSuspended": "suspension",
    "AccountTerminated": "termination",
    "AuthorityReferralOpened": "referral to authorities",
    "ViolationDismissed": "violation dismissed",
    "ThrottleLifted": "throttle lifted",
    "AccountReinstated": "reinstatement",
    # Only with reason "overturned" (a suspension reversed alone); one that ran out is no decision.
    "SuspensionEnded": "suspension overturned",
}
# Decisions that answer a violation (the first one ends its "time to decision").
_ANSWERS = frozenset(DECISION_KINDS) - {"ThrottleLifted", "AccountReinstated", "SuspensionEnded"}
_COUNTED = frozenset({"ViolationReported", "AppealFiled", "AppealDecided", *DECISION_KINDS})
_PAGE = 2000


@dataclass
class TransparencyReport:
    """Counts over the events recorded in ``[since, until]``."""

    since: datetime
    until: datetime
    violations_by_category: Counter[str] = field(default_factory=Counter)
    violations_by_source: Counter[str] = field(default_factory=Counter)
    violations_by_detection: Counter[str] = field(default_factory=Counter)
    decisions_automated: Counter[str] = field(default_factory=Counter)
    decisions_by_operator: Counter[str] = field(default_factory=Counter)
    appeals_filed: int = 0
    appeals_pending: int = 0  # filed in the period, not decided by its end
    appeal_outcomes: Counter[str] = field(default_factory=Counter)
    times_to_decision: list[float] = field(default_factory=list)  # seconds
    undecided: int = 0
    accounts: int = 0

    @property
    def violations(self) -> int:
        return sum(self.violations_by_category.values())

    @property
    def decisions_by_kind(self) -> Counter[str]:
        return self.decisions_automated + self.decisions_by_operator

    @property
    def median_time_to_decision(self) -> timedelta | None:
        if not self.times_to_decision:
            return None
        return timedelta(seconds=statistics.median(self.times_to_decision))

    @property
    def period(self) -> str:
        return f"{format_time(self.since)} to {format_time(self.until)}"


def transparency_report(store: EventStore, since: datetime, until: datetime) -> TransparencyReport:
    """The report of the events recorded from ``since`` to ``until`` (both included)."""
    since, until = to_utc(since), to_utc(until)
    report = TransparencyReport(since, until)
    waiting: dict[tuple[str, str], datetime] = {}  # violations not yet answered: occurred_at
    open_appeals: set[tuple[str, str]] = set()
    accounts: set[str] = set()
    for event in _events_recorded(store, since, until):
        if event.type == "ViolationReported":
            data = event.data
            report.violations_by_category[data["category"]] += 1
            report.violations_by_source[data.get("source") or "unspecified"] += 1
            report.violations_by_detection[data.get("detection") or "unspecified"] += 1
            waiting[(event.account_id, data["violation_id"])] = event.occurred_at
            accounts.add(event.account_id)
        elif event.type == "AppealFiled":
            report.appeals_filed += 1
            open_appeals.add((event.account_id, event.data["appeal_id"]))
        elif event.type == "AppealDecided":
            report.appeal_outcomes[event.data["outcome"]] += 1
            open_appeals.discard((event.account_id, event.data["appeal_id"]))
        elif event.type != "SuspensionEnded" or event.data["reason"] == SUSPENSION_OVERTURNED:
            kind = DECISION_KINDS[event.type]
            automated = event.metadata.get("actor") == "policy"
            (report.decisions_automated if automated else report.decisions_by_operator)[kind] += 1
            if event.type in _ANSWERS:
                for violation_id in _violations_named(event):
                    occurred = waiting.pop((event.account_id, violation_id), None)
                    if occurred is not None:
                        seconds = (event.recorded_at - occurred).total_seconds()
                        report.times_to_decision.append(max(0.0, seconds))
    report.undecided = len(waiting)
    report.appeals_pending = len(open_appeals)
    report.accounts = len(accounts)
    return report


def _events_recorded(
    store: EventStore, since: datetime, until: datetime
) -> Iterator[RecordedEvent]:
    """The counted events recorded in the period, in log order, a page at a time."""
    after = 0
    while True:
        query = (
            sa.select(events)
            .where(events.c.position > after, events.c.type.in_(sorted(_COUNTED)))
            .where(events.c.recorded_at >= since, events.c.recorded_at <= until)
            .order_by(events.c.position)
            .limit(_PAGE)
        )
        with store.engine.connect() as conn:
            page = [row_to_event(row) for row in conn.execute(query)]
        yield from page
        if len(page) < _PAGE:
            return
        after = page[-1].position


def _violations_named(event: RecordedEvent) -> list[str]:
    if event.type == "ViolationDismissed":
        return [event.data["violation_id"]]
    return list(event.data.get("violation_ids") or [])


# --------------------------------------------------------------------------- rendering


def _duration(span: timedelta | None) -> str:
    if span is None:
        return "-"
    seconds = span.total_seconds()
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def report_tables(report: TransparencyReport) -> Group:
    """The report as Rich tables, one per section."""
    summary = Table(title=f"Transparency report, {report.period}", show_header=False)
    summary.add_column("what", style="bold")
    summary.add_column("value", justify="right")
    summary.add_row("violations reported", str(report.violations))
    summary.add_row("accounts with violations", str(report.accounts))
    summary.add_row("decisions", str(sum(report.decisions_by_kind.values())))
    summary.add_row("appeals filed", str(report.appeals_filed))
    summary.add_row("median time to decision", _duration(report.median_time_to_decision))
    summary.add_row(
        "violations decided / undecided", f"{len(report.times_to_decision)} / {report.undecided}"
    )

    parts: list[Any] = [summary]
    for title, counts in (
        ("Violations by category", report.violations_by_category),
        ("Violations by source", report.violations_by_source),
        ("Violations by detection", report.violations_by_detection),
    ):
        parts.append(_count_table(title, counts))
    decisions = Table(title="Decisions by kind")
    for column in ("kind", "policy engine", "operator", "total"):
        decisions.add_column(column, justify="left" if column == "kind" else "right")
    for kind in _kinds_in_order(report.decisions_by_kind):
        automated, manual = report.decisions_automated[kind], report.decisions_by_operator[kind]
        decisions.add_row(Text(kind), str(automated), str(manual), str(automated + manual))
    parts.append(decisions)
    appeals = Table(title="Appeals")
    for column in ("filed", "upheld", "overturned", "filed, not decided yet"):
        appeals.add_column(column, justify="right")
    appeals.add_row(
        str(report.appeals_filed),
        str(report.appeal_outcomes["upheld"]),
        str(report.appeal_outcomes["overturned"]),
        str(report.appeals_pending),
    )
    parts.append(appeals)
    return Group(*parts)


def _count_table(title: str, counts: Counter[str]) -> Table:
    table = Table(title=title)
    table.add_column("name")
    table.add_column("count", justify="right")
    table.add_column("share", justify="right")
    total = sum(counts.values())
    for name, count in counts.most_common():
        # A source is a reporter's free text: shown as written, never read as Rich markup.
        table.add_row(Text(name), str(count), f"{count / total:.0%}")
    return table


def _kinds_in_order(counts: Counter[str]) -> list[str]:
    order = list(DECISION_KINDS.values())
    return sorted((k for k in counts if counts[k]), key=order.index)


# A cell a spreadsheet reads as a formula (OWASP "CSV injection"): "=", "+", "-", "@", or a tab or
# carriage return before one of them.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_text(value: str) -> str:
    """``value`` for a CSV cell: free text (a reporter's ``source``) that a spreadsheet would
    run as a formula is written with a leading ``'``, which spreadsheets show as text."""
    return "'" + value if value.startswith(_FORMULA_STARTS) else value


def report_csv_rows(report: TransparencyReport) -> Iterator[list[str]]:
    """``section,name,value`` rows: one value per line, easy to load anywhere."""
    yield ["section", "name", "value"]
    yield ["period", "since", format_time(report.since)]
    yield ["period", "until", format_time(report.until)]
    for name, counts in (
        ("violations_by_category", report.violations_by_category),
        ("violations_by_source", report.violations_by_source),
        ("violations_by_detection", report.violations_by_detection),
    ):
        for key, count in sorted(counts.items()):
            yield [name, spreadsheet_text(key), str(count)]  # a source is a reporter's text
    for kind in _kinds_in_order(report.decisions_by_kind):
        yield ["decisions_by_kind", kind, str(report.decisions_by_kind[kind])]
        yield ["decisions_by_policy_engine", kind, str(report.decisions_automated[kind])]
        yield ["decisions_by_operator", kind, str(report.decisions_by_operator[kind])]
    yield ["appeals", "filed", str(report.appeals_filed)]
    for outcome in ("upheld", "overturned"):
        yield ["appeals", outcome, str(report.appeal_outcomes[outcome])]
    yield ["appeals", "not_decided", str(report.appeals_pending)]
    median = report.median_time_to_decision
    yield [
        "time_to_decision",
        "median_seconds",
        "" if median is None else f"{median.total_seconds():.0f}",
    ]
    yield ["time_to_decision", "decided_violations", str(len(report.times_to_decision))]
    yield ["time_to_decision", "undecided_violations", str(report.undecided)]


def write_chart(report: TransparencyReport, path: Path) -> None:
    """A PNG a person can take in at a glance: the period's key figures, what was reported by
    category, what was decided (by the policy engine or an operator) and how appeals ended.

    Needs matplotlib (drawn with the Agg backend: no display).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    categories = report.violations_by_category.most_common()
    kinds = _kinds_in_order(report.decisions_by_kind)
    # Laid out in inches so that every bar has the same thickness whatever the counts.
    width, bar, panels_top, gap = 13.0, 0.3, 2.25, 0.85
    left_rows, kind_rows = max(len(categories), 1), max(len(kinds), 1)
    appeals_top = panels_top + kind_rows * bar + gap
    height = max(panels_top + left_rows * bar, appeals_top + 3 * bar) + 0.3
    fig = plt.figure(figsize=(width, height))

    def axes(x0: float, x1: float, top: float, rows: int) -> Any:
        return fig.add_axes((x0, 1 - (top + rows * bar) / height, x1 - x0, rows * bar / height))

    def at(inches: float) -> float:
        return 1 - inches / height

    fig.text(
        0.015,
        at(0.2),
        "AUP enforcement transparency report",
        fontsize=16,
        fontweight="bold",
        va="top",
    )
    fig.text(
        0.015,
        at(0.58),
        f"Events recorded from {_day(report.since)} to {_day(report.until)}",
        fontsize=10.5,
        color="#555555",
        va="top",
    )
    median = report.median_time_to_decision
    figures = [
        (f"{report.violations:,}", "violations reported"),
        (f"{report.accounts:,}", "accounts with violations"),
        (f"{sum(report.decisions_by_kind.values()):,}", "decisions"),
        (_duration(median), "median time to decision"),
        (f"{report.appeals_filed:,}", "appeals filed"),
    ]
    for i, (value, label) in enumerate(figures):
        fig.text(
            0.015 + i * 0.2,
            at(0.98),
            value,
            fontsize=20,
            fontweight="bold",
            color="#222222",
            va="top",
        )
        fig.text(0.015 + i * 0.2, at(1.42), label, fontsize=10, color="#666666", va="top")

    violations = axes(0.2, 0.52, panels_top, left_rows)
    _hbars(violations, [c for c, _ in categories], [[n for _, n in categories]], [_BLUE], [None])
    violations.set_title(
        "Violations reported, by category", loc="left", fontsize=11.5, fontweight="bold", pad=22
    )

    decisions = axes(0.72, 0.97, panels_top, kind_rows)
    automated = [report.decisions_automated[k] for k in kinds]
    manual = [report.decisions_by_operator[k] for k in kinds]
    _hbars(
        decisions,
        kinds,
        [automated, manual],
        [_ORANGE, _GREY],
        ["by the policy engine", "by an operator"],
    )
    decisions.set_title("Decisions, by kind", loc="left", fontsize=11.5, fontweight="bold", pad=22)
    if kinds:
        decisions.legend(
            frameon=False, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncols=2, fontsize=8.5
        )

    appeals = axes(0.72, 0.97, appeals_top, 3)
    outcomes = report.appeal_outcomes
    _hbars(
        appeals,
        ["upheld", "overturned", "not decided yet"],
        [[outcomes["upheld"], outcomes["overturned"], report.appeals_pending]],
        [_GREEN],
        [None],
    )
    appeals.set_title(
        f"Appeals filed in the period ({report.appeals_filed:,})",
        loc="left",
        fontsize=11.5,
        fontweight="bold",
        pad=22,
    )

    fig.savefig(path, dpi=120)
    plt.close(fig)


_BLUE, _ORANGE, _GREY, _GREEN = "#4C72B0", "#DD8452", "#9A9A9A", "#55A868"


def _hbars(
    axis: Any,
    labels: list[str],
    series: list[list[int]],
    colors: list[str],
    names: list[str | None],
) -> None:
    """Stacked horizontal bars, first label on top, the total at the end of each bar."""
    positions = list(range(len(labels)))
    left = [0] * len(labels)
    for values, color, name in zip(series, colors, names, strict=True):
        axis.barh(positions, values, left=left, color=color, label=name, height=0.7)
        left = [a + b for a, b in zip(left, values, strict=True)]
    peak = max(left, default=0) or 1
    for y, total in zip(positions, left, strict=True):
        axis.text(total + peak * 0.01, y, f"{total:,}", va="center", fontsize=9.5)
    axis.set_yticks(positions, labels=[label.replace("_", " ") for label in labels], fontsize=10)
    axis.set_ylim(max(len(labels), 1) - 0.5, -0.5)
    axis.set_xlim(0, peak * 1.15)
    axis.xaxis.set_visible(False)
    axis.tick_params(axis="y", length=0)
    for side in ("top", "right", "bottom"):
        axis.spines[side].set_visible(False)
    axis.spines["left"].set_color("#BBBBBB")
    if not labels:
        axis.text(0.02, 0.5, "none in this period", transform=axis.transAxes, color="#888888")
        axis.set_yticks([])


def _day(moment: datetime) -> str:
    return to_utc(moment).strftime("%Y-%m-%d %H:%M UTC")
