"""The auditor's commands over the log, an account or all of it: ``standing``, ``history``,
``verify`` (the hash chains), ``replay`` (the stored standings rebuilt), ``export``,
``notices`` (an account's notices and their deliveries), ``accounts`` (the accounts in a status
or with something awaiting an operator) and ``policy-activations`` (the policies the
deployment began with).

Registered on ``enforcement.cli.app`` when that module is imported (it imports this one last).
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from enforcement.cli import (
    EveryAccount,
    IssuedSince,
    NoticesAccount,
    account_option,
    account_or_every,
    app,
    opened_container,
    replay_standings,
    time_option,
)
from enforcement.cli_output import EXIT_CHECK_FAILED, console, err_console, fail

if TYPE_CHECKING:
    from datetime import datetime

    from rich.progress import Progress

    from enforcement.bootstrap import Container
    from projections.notices import NoticeDeliveries


@app.command()
def standing(
    account: Annotated[str, typer.Argument(help="Account id.")],
    as_of: Annotated[str | None, typer.Option("--as-of", help="RFC 3339 time.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show one account's standing."""
    from enforcement.render import standing_table

    account_option(account, "ACCOUNT")
    moment = time_option(as_of, "--as-of")
    with opened_container() as container:
        result = container.service.standing(account, moment).to_json()
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        console.print(standing_table(result))


@app.command()
def notices(
    account: NoticesAccount = None,
    every: EveryAccount = False,
    since: IssuedSince = None,
    state: Annotated[
        str | None,
        typer.Option("--state", help="pending, delivered, partly_delivered, failed or sent_again."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List one account's notices, or every account's, and how each one's delivery went.

    Oldest first. A failed notice (no channel delivered it, nothing more is tried) goes out
    once an operator sends it again (`enforcement resend`, or POST
    /v1/accounts/{id}/notices/{notice_id}/resend) after mending its cause: --all --state
    failed lists them after a fault that failed many (a mail server without STARTTLS, a
    missing webhook secret). --all reads the log's notices once,
    from the first event recorded since --since when given, with a progress bar on a
    terminal (GET /v1/notices?since= over HTTP).
    """
    from enforcement.notice_listing import listed_notices
    from enforcement.progress import progress_bar
    from enforcement.render import notices_table
    from projections.notices import NOTICE_STATES

    account_or_every(account, every)
    issued_since = time_option(since, "--since")
    if state is not None and state not in NOTICE_STATES:
        fail(f"--state must be one of {', '.join(NOTICE_STATES)}.")
    with opened_container() as container:
        if account is not None:
            found = listed_notices(container, account, issued_since, state=state)
        else:
            # Minutes on a long log: a bar on stderr when it is a terminal.
            with progress_bar(sys.stderr.isatty()) as bar:
                found = every_notice(container, bar, issued_since, state)
    rows = [n.to_json() for n in found]
    if as_json:
        listed = {"notices": rows} if every else {"account_id": account, "notices": rows}
        print(json.dumps(listed, indent=2))
        return
    if not rows:
        whose = "any account" if every else escape(str(account))
        console.print(f"No {state or 'recorded'} notice for {whose}.")
        return
    console.print(notices_table("every account" if every else str(account), rows, every))


def every_notice(
    container: Container, bar: Progress, issued_since: datetime | None, state: str | None = None
) -> list[NoticeDeliveries]:
    """``listed_notices`` of every account, the pass over the log shown on ``bar``."""
    from enforcement.notice_listing import listed_notices

    total = container.store.max_position()
    task = bar.add_task("reading notices", total=total, unit="positions")
    found = listed_notices(
        container, None, issued_since, lambda at: bar.update(task, completed=at), state=state
    )
    bar.update(task, completed=total)
    return found


@app.command()
def accounts(
    status: Annotated[
        str | None,
        typer.Option(
            "--status",
            help="good_standing, warned, remediation_due, throttled, suspended or terminated.",
        ),
    ] = None,
    has: Annotated[
        str | None,
        typer.Option(
            "--has",
            help="open_appeals, open_abuse_reports, indefinite_suspension or overdue_remediations.",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List the accounts' standings now: those in --status, or with --has what awaits an
    operator.

    An operator's queues: --has open_appeals (appeals to decide), --has indefinite_suspension
    (suspended pending review), --has open_abuse_reports, --has overdue_remediations. Every
    account with events, each read as `enforcement standing` reads it, in the database's order
    of account ids, with a progress bar on a terminal (GET /v1/accounts over HTTP, in pages).
    """
    from typing import get_args

    from rich.table import Table

    from enforcement.account_listing import AWAITING, accounts_page
    from enforcement.progress import progress_bar
    from events.timefmt import format_time
    from projections.standing_view import Status

    if status is not None and status not in get_args(Status):
        fail(f"--status must be one of {', '.join(get_args(Status))}.")
    if has is not None and has not in AWAITING:
        fail(f"--has must be one of {', '.join(AWAITING)}.")
    with opened_container() as container, progress_bar(sys.stderr.isatty()) as bar:
        task = bar.add_task("reading standings", total=None, unit="accounts")
        page = accounts_page(
            container,
            status=status,
            has=has,
            progress=lambda seen: bar.update(task, completed=seen),
        )
    if as_json:
        print(json.dumps({"accounts": [s.to_json() for s in page.accounts]}, indent=2))
        return
    if not page.accounts:
        console.print("No account matches.")
        return
    table = Table("account", "status", "strikes", "suspended until", "open appeals",
                  "open abuse reports", "overdue remediations")  # fmt: skip
    for s in page.accounts:
        until = "" if s.suspension is None else (
            "indefinitely" if s.suspension.until is None else format_time(s.suspension.until)
        )  # fmt: skip
        cells = (s.account_id, s.status, s.strikes, until, s.open_appeals,
                 s.open_abuse_reports, len(s.overdue_remediations))  # fmt: skip
        table.add_row(*(escape(str(cell)) for cell in cells))
    console.print(table)


@app.command("policy-activations")
def policy_activations(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List the policies the serving processes began with.

    Oldest first. A standing --as-of an instant counts strikes with the last one begun by then,
    when it began after the account's last event.
    """
    from rich.table import Table

    from enforcement import policy_activations as activations

    with opened_container() as container:
        rows = [row.to_json() for row in activations.listed(container.engine)]
    if as_json:
        print(json.dumps({"activations": rows}, indent=2))
        return
    if not rows:
        console.print(
            "No policy recorded yet: `enforcement serve` and `enforcement worker` record theirs "
            "as they start."
        )
        return
    columns = ("position", "policy_version", "strike_lookback", "activated_at")
    table = Table(*columns)
    for row in rows:
        table.add_row(*(escape(str(row[column])) for column in columns))
    console.print(table)


@app.command()
def history(
    account: Annotated[str, typer.Argument(help="Account id.")],
    as_of: Annotated[str | None, typer.Option("--as-of", help="RFC 3339 time.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="table, json or csv.")] = "table",
) -> None:
    """Show an account's events, each with what it changed in the standing and the rule."""
    from enforcement.render import history_csv_rows, history_json, history_tables

    if fmt not in ("table", "json", "csv"):
        fail(f"Unknown format {fmt!r}; choose table, json or csv.")
    account_option(account, "ACCOUNT")
    moment = time_option(as_of, "--as-of")
    with opened_container() as container:
        # Written as read (a table every 1,000 rows): a long history is never held whole.
        entries = container.service.history(account, moment)
        if fmt == "json":
            sys.stdout.writelines(history_json(entries))
        elif fmt == "csv":
            csv.writer(sys.stdout).writerows(history_csv_rows(entries))
        else:
            for table in history_tables(account, entries):
                console.print(table)


@app.command()
def verify(
    account: Annotated[str | None, typer.Argument(help="One account; all when omitted.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Check hash chains: exit 0 when intact, 1 when any chain is broken."""
    from enforcement.auditing import verify_accounts

    account_option(account, "ACCOUNT")
    with opened_container() as container:
        results = verify_accounts(container.store, account, show_progress=not as_json)
    broken = [r for r in results if not r["ok"]]
    if as_json:
        print(json.dumps(results if account is None else results[0], indent=2))
    else:
        for r in broken:
            # The account id as the log holds it: a tampered log may hold anything there.
            console.print(
                f"[red]BROKEN[/] {escape(r['account_id'])} at version {r['broken_at_version']}: "
                f"{escape(r['reason'])}"
            )
        total = sum(r["events"] for r in results)
        if account is not None and total == 0:
            console.print(f"{escape(account)} has no events: nothing to verify.")
        else:
            console.print(
                f"{len(results) - len(broken)} of {len(results)} account(s) intact, "
                f"{total} events checked."
            )
    if broken:
        raise typer.Exit(EXIT_CHECK_FAILED)


@app.command()
def replay(
    account: Annotated[str | None, typer.Option("--account", help="Only this account.")] = None,
    jobs: Annotated[
        int,
        typer.Option(
            "--jobs",
            min=0,
            help="Processes that fold the log (a log of 50,000 events or more); 0: the "
            "number of CPUs, at most 4.",
        ),
    ] = 0,
) -> None:
    """Rebuild the stored projections from the log, with a progress bar and events/s."""
    account_option(account, "--account")
    with opened_container() as container:
        replay_standings(container.store, container.standings, account, jobs)


@app.command()
def export(
    fmt: Annotated[str, typer.Option("--format", help="jsonl (events) or sor (statements).")],
    since: Annotated[str | None, typer.Option("--since", help="RFC 3339 time.")] = None,
    until: Annotated[str | None, typer.Option("--until", help="RFC 3339 time.")] = None,
    account: Annotated[str | None, typer.Option("--account", help="Only this account.")] = None,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="File (default stdout).")
    ] = None,
) -> None:
    """Export events (jsonl) or statements of reasons (sor) as JSON lines."""
    from enforcement.auditing import events_in_log, export_lines
    from enforcement.progress import progress_bar

    if fmt not in ("jsonl", "sor"):
        fail(f"Unknown format {fmt!r}; choose jsonl or sor.")
    account_option(account, "--account")
    start, end = time_option(since, "--since"), time_option(until, "--until")
    if start is not None and end is not None and start > end:
        fail("--since must not be later than --until.")
    # The whole log takes minutes: a progress bar on stderr. With the lines on stdout, only when
    # stderr is a terminal that stdout is not: never into a stream that also holds the data
    # (``export > log.jsonl 2>&1``), nor over the lines on the screen.
    shown = account is None and (
        output is not None or (sys.stderr.isatty() and not sys.stdout.isatty())
    )
    with opened_container() as container, progress_bar(shown) as bar:
        task = bar.add_task(
            "exporting", total=events_in_log(container.store) if shown else None, unit="events"
        )
        lines = export_lines(
            container.store,
            fmt,
            since=start,
            until=end,
            account=account,
            progress=lambda read: bar.advance(task, read),
        )
        try:
            if output is None:
                for line in lines:
                    sys.stdout.write(line + "\n")
                return
            count = _write_lines_to(output, lines)
        except BaseException:
            # An error is one sentence, and a reader that left ends it quietly
            # (``_end_as_closed_pipe``): no bar drawn after them.
            bar.console.quiet = True
            raise
    # On stderr, as every note: ``-o /dev/stdout`` (or a FIFO) gives the lines alone.
    err_console.print(f"Wrote {count} line(s) to {escape(str(output))}.")


def _write_lines_to(output: Path, lines: Iterator[str]) -> int:
    """Write ``lines`` to ``output``; returns how many. A regular file (or a new one) is written
    beside it first and renamed over it once complete, so an export that fails (a full disk, a
    database error) leaves neither a partial file nor a clobbered earlier export; a device or a
    pipe (``/dev/stdout``) is written as it is."""
    import stat

    try:
        mode: int | None = output.stat().st_mode
    except OSError:
        mode = None  # none yet (or one that cannot be looked at: creating it names the problem)
    if mode is not None and not stat.S_ISREG(mode):
        count = 0
        try:
            with output.open("w", encoding="utf-8") as stream:
                for line in lines:
                    stream.write(line + "\n")
                    count += 1
        except BrokenPipeError:
            raise  # a pipe's reader went away (``-o /dev/stdout | head -1``): as for stdout
        except OSError as exc:
            fail(f"Cannot write {output}: {exc.strerror or exc}.")
        return count
    from enforcement.files import replace_durably
    from events.dialects import DATABASE_FILE_MODE

    target = Path(os.path.realpath(output))  # a symbolic link's file, not the link
    if mode is None:
        # A new file is the exporter's alone, as the database file is: it holds what that holds
        # (descriptions, a third party's contact). One that exists keeps the mode it has.
        mode = DATABASE_FILE_MODE
    count = 0
    started = False  # a failure before the first line is the path's (a missing directory)

    def encoded() -> Iterator[bytes]:
        nonlocal count, started
        started = True
        for line in lines:
            yield (line + "\n").encode("utf-8")
            count += 1

    try:
        replace_durably(target, encoded(), stat.S_IMODE(mode))
    except OSError as exc:
        fail(f"Cannot {'write' if started else 'use'} {output}: {exc.strerror or exc}.")
    return count
