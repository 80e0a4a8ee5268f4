"""The auditor's CLI commands over the whole log: ``report`` and ``whatif``.

Registered on ``enforcement.cli.app`` when that module is imported (it imports this one last).
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from enforcement.cli import app, load_policy_or_fail, opened_container, time_option
from enforcement.cli_output import console, fail


@app.command()
def report(
    since: Annotated[str, typer.Option("--since", help="Start of the period (RFC 3339).")],
    until: Annotated[str, typer.Option("--until", help="End of the period (RFC 3339).")],
    fmt: Annotated[str, typer.Option("--format", help="table or csv.")] = "table",
    chart: Annotated[
        Path | None, typer.Option("--chart", help="Also draw the report as a PNG image here.")
    ] = None,
) -> None:
    """Transparency report of a period: violations, decisions, appeals, time to decision."""
    from enforcement.reports import report_csv_rows, report_tables, transparency_report

    if fmt not in ("table", "csv"):
        fail(f"Unknown format {fmt!r}; choose table or csv.")
    start, end = time_option(since, "--since"), time_option(until, "--until")
    assert start is not None and end is not None
    if start > end:
        fail("--since must not be later than --until.")
    if chart is not None and chart.suffix.lower() != ".png":
        fail(f"--chart must name a .png file, not {chart}.")
    with opened_container() as container:
        result = transparency_report(container.store, start, end)
    if fmt == "csv":
        csv.writer(sys.stdout).writerows(report_csv_rows(result))
    else:
        console.print(report_tables(result))
    if chart is not None:
        _draw(result, chart)


def _draw(result: object, chart: Path) -> None:
    from enforcement.reports import TransparencyReport, write_chart

    assert isinstance(result, TransparencyReport)
    try:
        write_chart(result, chart)
    except ImportError:
        fail("--chart needs matplotlib: install it with `pip install matplotlib`.")
    except OSError as exc:
        fail(f"Could not write {chart}: {exc.strerror}.")
    # The chart's note goes to stderr so that CSV on stdout stays clean.
    print(f"Chart written to {chart}.", file=sys.stderr)


@app.command()
def whatif(
    policy: Annotated[Path, typer.Option("--policy", help="The TOML policy file to evaluate.")],
    since: Annotated[
        str | None,
        typer.Option("--since", help="Re-decide only violations recorded from then on (RFC 3339)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    limit: Annotated[
        int | None,
        typer.Option("--limit", min=0, help="Show at most this many accounts' tables (all)."),
    ] = None,
) -> None:
    """Replay the recorded violations through another policy and show which decisions differ."""
    from enforcement.auditing import events_in_log
    from enforcement.progress import progress_bar
    from enforcement.whatif import what_if, what_if_json

    start = time_option(since, "--since")
    other = load_policy_or_fail(str(policy))
    if as_json:
        # Written as replayed (through a temporary file): the differences are never held whole.
        with opened_container() as container:
            sys.stdout.writelines(what_if_json(container.store, other, start))
        return
    with opened_container() as container, progress_bar() as bar:
        task = bar.add_task("replaying", total=events_in_log(container.store), unit="events")
        summary = what_if(
            container.store, other, start, progress=lambda events: bar.advance(task, events)
        )
    shown = summary.differing if limit is None else summary.differing[:limit]
    for account in shown:
        table = Table(title=Text(f"{account.account_id}: {_totals_text(account.totals)}"))
        for column in (
            "recorded at",
            "violation",
            "category",
            "recorded",
            "other policy",
            "change",
        ):
            table.add_column(column, overflow="fold")
        for d in account.differences:
            cells = (
                d.recorded_at.strftime("%Y-%m-%d %H:%M"),
                d.violation_id,
                d.category,
                d.recorded.describe(),
                d.simulated.describe(),
                d.change,
            )
            table.add_row(*map(Text, cells))
        console.print(table)
    scope = f"{summary.violations} violation(s) on {summary.accounts} account(s)"
    if not summary.differing:
        console.print(f"No difference: {summary.policy_version} decides the {scope} as recorded.")
        return
    console.print(
        f"Policy {summary.policy_version} would decide {sum(summary.totals.values())} of "
        f"{summary.violations} violation(s) differently, on {len(summary.differing)} of "
        f"{summary.accounts} account(s): {_totals_text(summary.totals)}."
    )
    if len(shown) < len(summary.differing):
        console.print(
            f"Tables shown for {len(shown)} of those {len(summary.differing)} accounts "
            "(--limit); --json gives every difference."
        )


def _totals_text(totals: dict[str, int]) -> str:
    from enforcement.whatif import CHANGES

    return ", ".join(f"{totals.get(name, 0)} {name}" for name in CHANGES)
