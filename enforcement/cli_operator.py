"""The operator's command on the host: ``resend`` (notices sent again in bulk, after a fault
that failed many: ``enforcement.notice_resending``).

Registered on ``enforcement.cli.app`` when that module is imported (it imports this one last).
"""

from __future__ import annotations

import getpass
import json
import sys
import uuid
from collections import Counter
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from enforcement.cli import (
    EveryAccount,
    IssuedSince,
    NoticesAccount,
    account_or_every,
    app,
    opened_container,
    time_option,
)
from enforcement.cli_output import EXIT_CHECK_FAILED, console, err_console, fail

if TYPE_CHECKING:
    from enforcement.notice_resending import ResendResult


@app.command()
def resend(
    account: NoticesAccount = None,
    every: EveryAccount = False,
    reason: Annotated[
        str,
        typer.Option(
            "--reason", help="Why they are sent again (recorded on each copy).", show_default=False
        ),
    ] = "",
    since: IssuedSince = None,
    state: Annotated[
        str, typer.Option("--state", help="failed (the default) or partly_delivered.")
    ] = "failed",
    notice: Annotated[
        list[str] | None,
        typer.Option(
            "--notice", help="A notice id of ACCOUNT to send again, in any state (repeatable)."
        ),
    ] = None,
    channel: Annotated[
        list[str] | None,
        typer.Option(
            "--channel", help="email or webhook: the copies go out on these only (repeatable)."
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what each would become; record nothing.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Send notices again, once the cause of their failed delivery is mended (--reason says
    which).

    Each notice in --state (of ACCOUNT, or of every account with --all; issued since --since
    when given) goes out again as a copy, as POST /v1/accounts/{id}/notices/{notice_id}/resend
    sends one: to the contact as it is now, on every channel, on --channel's only, or, for a
    partly_delivered notice, on the channels that did not deliver it. Of a notice and its
    copies, only the last is looked at, so running the command again sends only what is still
    failed. --notice names notices of ACCOUNT to send again whatever their state.

    A notice whose account has no target on a channel it would go out on is refused (set the
    contact first); one of a decision overturned on appeal, or sent again by someone else
    meanwhile, is passed over. --dry-run says which would be sent, refused or passed over. A
    running `serve` or `worker` delivers the copies, or the next to start. Exit 1 when any was
    (or would be) refused; on a database error or Ctrl-C, what was sent so far is shown, and
    running it again sends the rest.
    """
    from sqlalchemy.exc import DBAPIError

    from enforcement.cli import database_error
    from enforcement.cli_audit import every_notice
    from enforcement.notice_listing import listed_notices
    from enforcement.notice_resending import (
        RESENDABLE_STATES,
        RESENT_REFUSED,
        WOULD,
        last_of_each,
        planned,
        resend_each,
    )
    from enforcement.progress import progress_bar
    from enforcement.service_types import Actor

    account_or_every(account, every)
    issued_since = time_option(since, "--since")
    if state not in RESENDABLE_STATES:
        fail(
            f"--state must be one of {', '.join(RESENDABLE_STATES)}; name a notice in another "
            "state with --notice."
        )
    if notice and account is None:
        fail("--notice names a notice of ACCOUNT: give the ACCOUNT, not --all.")
    if notice and (since is not None or state != "failed"):
        fail("Give --notice or --since and --state, not both: --notice names the notices.")
    channels = _channels(channel)
    if not reason.strip():
        fail("--reason must say why the notices are sent again; it is empty.")
    run_id = None if dry_run else f"cli-resend-{uuid.uuid4()}"
    actor = Actor(name=f"cli:{_user()}", correlation_id=run_id or "dry-run", source="cli")
    results: list[ResendResult] = []
    stopped: str | None = None
    status = 0
    with opened_container() as container, progress_bar(every and sys.stderr.isatty()) as bar:
        if notice:
            found = listed_notices(container, account)
            known = {n.notice_id for n in found}
            unknown = [n for n in notice if n not in known]
            if unknown:
                fail(f"{escape(str(account))} has no notice {unknown[0]!r}.")
            named = dict.fromkeys(notice)
            chosen = [n for n in found if n.notice_id in named]
        else:
            if every:
                listed = every_notice(container, bar, issued_since)
            else:
                listed = listed_notices(container, account, issued_since)
            chosen = last_of_each(listed, state)
            found = listed
        plan = planned(chosen, found, channels)
        sending = bar.add_task("sending again", total=len(plan), unit="notices")
        try:
            for result in resend_each(container, plan, reason.strip(), actor, dry_run):
                results.append(result)
                bar.update(sending, completed=len(results))
        except DBAPIError as exc:
            stopped, status = database_error(exc), 2
        except KeyboardInterrupt:
            stopped, status = "interrupted", 130
    _show(results, dry_run, as_json, run_id)
    if stopped is not None:
        fail(
            f"Stopped after {len(results)} of {len(plan)} notices: {stopped.rstrip('.')}; "
            "run the command again to send the rest.",
            status,
        )
    if any(r.outcome in (RESENT_REFUSED, WOULD[RESENT_REFUSED]) for r in results):
        raise typer.Exit(EXIT_CHECK_FAILED)


def _channels(given: list[str] | None) -> tuple[str, ...] | None:
    if not given:
        return None
    for name in given:
        if name not in ("email", "webhook"):
            fail(f"--channel must be email or webhook, not {name!r}.")
    if len(set(given)) != len(given):
        fail("--channel names each channel at most once.")
    return tuple(given)


def _user() -> str:
    """Who runs the command, as the copies' actor records it (``cli:<login>``)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name and no entry in the password database
        return "unknown"


def _show(results: list[ResendResult], dry_run: bool, as_json: bool, run_id: str | None) -> None:
    """Each notice's result, as JSON or a table and a summary on stderr."""
    from rich.table import Table

    from enforcement.notice_resending import WOULD

    if as_json:
        notices = [r.to_json() for r in results]
        shown = {"dry_run": dry_run, "correlation_id": run_id, "notices": notices}
        print(json.dumps(shown, indent=2))
        return
    if not results:
        console.print("No notice to send again.")
        return
    table = Table("account", "notice", "kind", "state", "channels", "outcome")
    for r in results:
        p = r.planned
        outcome = r.outcome.replace("_", " ")
        if r.copy_notice_id is not None:
            outcome = f"sent as {r.copy_notice_id}"
        elif r.reason is not None:
            outcome = f"{outcome}: {r.reason}"
        on = "the contact's" if p.channels is None else ", ".join(p.channels)
        cells = (p.account_id, p.notice_id, p.kind, p.state, on, outcome)
        table.add_row(*(escape(cell) for cell in cells))
    console.print(table)
    canonical = {would: outcome for outcome, would in WOULD.items()}
    count = Counter(canonical.get(r.outcome, r.outcome) for r in results)
    if dry_run:
        summary = (
            f"Dry run, nothing recorded: {count['sent']} notice(s) would be sent again, "
            f"{count['refused']} refused, {count['skipped']} passed over."
        )
    else:
        summary = (
            f"Sent {count['sent']} notice(s) again (correlation id {run_id}); "
            f"{count['refused']} refused, {count['skipped']} passed over."
        )
    err_console.print(summary, markup=False, highlight=False, soft_wrap=True)
