"""The operator's command on the host: ``resend`` (notices sent again in bulk, after a fault
that failed many: ``enforcement.notice_resending``).

Registered on ``enforcement.cli.app`` when that module is imported (it imports this one last).
"""

from __future__ import annotations

import getpass
import json
import sys
import uuid
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
    from enforcement.notice_resending import PlannedResend, ResendResult

# More notices than this to send: a progress bar on a terminal's stderr.
_BAR_FROM = 20


@app.command()
def resend(
    account: NoticesAccount = None,
    every: EveryAccount = False,
    reason: Annotated[
        str, typer.Option("--reason", help="Why they are sent again (recorded on each copy).")
    ] = "",
    since: IssuedSince = None,
    state: Annotated[
        str, typer.Option("--state", help="failed (the default) or partly_delivered.")
    ] = "failed",
    notice: Annotated[
        list[str] | None,
        typer.Option("--notice", help="A notice id of ACCOUNT to send again, in any state."),
    ] = None,
    channel: Annotated[
        list[str] | None,
        typer.Option("--channel", help="email or webhook: the copies go out on these only."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List what would be sent; record nothing.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Send notices again, once the cause of their failed delivery is mended.

    Each notice in --state (of ACCOUNT, or of every account with --all; issued since --since
    when given) goes out again as a copy, as POST /v1/accounts/{id}/notices/{notice_id}/resend
    sends one: to the contact as it is now, on every channel, on --channel's only, or, for a
    partly_delivered notice, on the channels that did not deliver it. --notice names notices
    of ACCOUNT to send again whatever their state. A notice whose account has no target on a
    channel it would go out on is refused (set the contact first); one of a decision overturned
    on appeal is passed over. A running `serve` or `worker` delivers the copies, or the next to
    start. Exit 1 when any was refused; running the command again sends only what is still
    failed.
    """
    from enforcement.notice_listing import listed_notices
    from enforcement.notice_resending import RESENDABLE_STATES, RESENT_REFUSED, planned, resend_all
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
    if notice and since is not None:
        fail("Give --notice or --since, not both: --notice names the notices to send.")
    channels = _channels(channel)
    if not reason.strip():
        fail("--reason must say why the notices are sent again; it is empty.")
    with opened_container() as container:
        if notice:
            found = listed_notices(container, account)
            known = {n.notice_id for n in found}
            unknown = [n for n in notice if n not in known]
            if unknown:
                fail(f"{escape(str(account))} has no notice {unknown[0]!r}.")
            named = dict.fromkeys(notice)
            chosen = [n for n in found if n.notice_id in named]
        else:
            chosen = listed_notices(container, account, issued_since, state=state)
        plan = planned(chosen, channels)
        if dry_run or not plan:
            _show(plan, [], dry_run, as_json, None)
            return
        run_id = f"cli-resend-{uuid.uuid4()}"
        actor = Actor(name=f"cli:{_user()}", correlation_id=run_id, source="cli")
        with progress_bar(len(plan) > _BAR_FROM and sys.stderr.isatty()) as bar:
            task = bar.add_task("sending again", total=len(plan), unit="notices")
            results = resend_all(
                container, plan, reason, actor, lambda done: bar.update(task, completed=done)
            )
    _show(plan, results, False, as_json, run_id)
    if any(r.outcome == RESENT_REFUSED for r in results):
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


def _show(
    plan: list[PlannedResend],
    results: list[ResendResult],
    dry_run: bool,
    as_json: bool,
    run_id: str | None,
) -> None:
    """Each notice's result, or in a dry run the plan, as JSON or a table and a summary."""
    from rich.table import Table

    from enforcement.notice_resending import (
        RESENT_REFUSED,
        RESENT_SENT,
        RESENT_SKIPPED,
        ResendResult,
    )

    rows = [ResendResult(p, "would_send") for p in plan] if dry_run else results
    if as_json:
        notices = [r.to_json() for r in rows]
        print(
            json.dumps({"dry_run": dry_run, "correlation_id": run_id, "notices": notices}, indent=2)
        )
        return
    if not rows:
        console.print("No notice to send again.")
        return
    table = Table("account", "notice", "kind", "state", "channels", "outcome")
    for r in rows:
        p = r.planned
        if r.copy_notice_id is not None:
            outcome = f"sent as {r.copy_notice_id}"
        elif r.reason is not None:
            outcome = f"{r.outcome}: {r.reason}"
        else:
            outcome = r.outcome.replace("_", " ")
        on = "the contact's" if p.channels is None else ", ".join(p.channels)
        cells = (p.account_id, p.notice_id, p.kind, p.state, on, outcome)
        table.add_row(*(escape(cell) for cell in cells))
    console.print(table)
    if dry_run:
        summary = f"Dry run: {len(rows)} notice(s) would be sent again; nothing was recorded."
    else:
        count = {
            k: sum(r.outcome == k for r in rows)
            for k in (RESENT_SENT, RESENT_SKIPPED, RESENT_REFUSED)
        }
        summary = (
            f"Sent {count[RESENT_SENT]} notice(s) again (correlation id {run_id}); "
            f"{count[RESENT_REFUSED]} refused, {count[RESENT_SKIPPED]} passed over."
        )
    err_console.print(summary, markup=False, highlight=False, soft_wrap=True)
