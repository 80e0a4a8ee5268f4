"""Auditor tools over the log: verify every chain, export events and statements of reasons."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from enforcement.progress import progress_bar
from events import EventStore, RecordedEvent, VerifyResult
from events.schema import events as events_table
from events.timefmt import format_time, to_utc
from events.wire import event_to_json

# Decision types that carry a statement of reasons: each gets one line. A ``NoticeIssued`` only
# carries a copy of its decision's statement (the warning notice's decision is the
# ``RemediationRequested``), so it gets none: one line per decision, not two.
RESTRICTIVE = {
    "RemediationRequested": "remediation_request",
    "ThrottleApplied": "restriction_of_service_throttle",
    "AccountSuspended": "suspension_of_account",
    "AccountTerminated": "termination_of_account",
    "RemediationExpired": "remediation_expired",
    "ViolationDismissed": "dismissal",
    "AppealDecided": "appeal_decision",
    "AuthorityReferralOpened": "referral_to_authorities",
    "AccountReinstated": "reinstatement",
}


PROGRESS_STEP = 1000  # events read between two reports of an export's progress


def verify_accounts(
    store: EventStore, account: str | None = None, show_progress: bool = True
) -> list[dict[str, Any]]:
    """Verify one or every account's chain; each result names the account."""
    source: Iterable[tuple[str, VerifyResult]]
    if account is None:
        with store.engine.connect() as conn:
            total = conn.execute(
                sa.select(sa.func.count(sa.distinct(events_table.c.account_id)))
            ).scalar_one()
        source = store.verify_all()  # one ordered pass over the log
    else:
        total, source = 1, [(account, store.verify(account))]
    results = []
    with progress_bar(show_progress and total > 1) as bar:
        task = bar.add_task("verifying", total=total, unit="accounts")
        for account_id, r in source:
            results.append(
                {
                    "account_id": account_id,
                    "ok": r.ok,
                    "events": r.events,
                    **(
                        {"head_hash": r.head_hash}
                        if r.ok
                        else {"broken_at_version": r.broken_at_version, "reason": r.reason}
                    ),
                }
            )
            bar.advance(task)
    return results


def events_in_log(store: EventStore) -> int:
    """How many events the log holds (positions may have gaps on PostgreSQL)."""
    with store.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(events_table)).scalar_one())


def _in_range(event: RecordedEvent, since: datetime | None, until: datetime | None) -> bool:
    if since is not None and event.recorded_at < since:
        return False
    return not (until is not None and event.recorded_at > until)


def _events(store: EventStore, account: str | None) -> Iterator[RecordedEvent]:
    return store.iter_stream(account) if account is not None else store.iter_all()


def export_lines(
    store: EventStore,
    fmt: str,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    account: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> Iterator[str]:
    """JSON lines: every event (``jsonl``) or a statement of reasons per decision (``sor``).
    ``progress(n)`` is told of every ``PROGRESS_STEP`` events read (and of the last few)."""
    since = to_utc(since) if since else None
    until = to_utc(until) if until else None
    read = 0
    for event in _events(store, account):
        read += 1
        if read == PROGRESS_STEP and progress is not None:
            progress(read)
            read = 0
        if not _in_range(event, since, until):
            continue
        if fmt == "jsonl":
            yield json.dumps(event_to_json(event), ensure_ascii=False)
        elif event.type in RESTRICTIVE and event.data.get("statement_of_reasons"):
            yield json.dumps(statement_line(event), ensure_ascii=False)
    if read and progress is not None:
        progress(read)


def statement_line(event: RecordedEvent) -> dict[str, Any]:
    """One statement of reasons, shaped after the EU DSA transparency database's fields."""
    sor = event.data["statement_of_reasons"]
    data = event.data
    return {
        "uuid": event.event_id,
        "account_id": event.account_id,
        "decision_event_type": event.type,
        "decision_type": RESTRICTIVE[event.type],
        "decision_ground": sor.get("ground"),
        "aup_sections": sor.get("aup_sections"),
        "category": sor.get("categories"),
        "decision_facts": sor.get("facts"),
        "decision_explanation": sor.get("decision"),
        "automated_detection": sor.get("automated_detection"),
        "automated_decision": sor.get("automated_decision"),
        "policy_version": sor.get("policy_version"),
        "redress": sor.get("redress"),
        "appeal_deadline": sor.get("appeal_deadline"),
        "application_date": format_time(event.occurred_at),
        "end_date": data.get("until") or data.get("expires_at"),
        "created_at": format_time(event.recorded_at),
    }
