"""The crash soaks' checks (``soak_embedded.py``, ``soak_production.py``): what must hold once
their last processes have stopped, and the result they print."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from soak_clients import REPORTS, Ledger
from soak_services import MailWatch, Receiver, Soak

from enforcement.bootstrap import bootstrap
from enforcement.settings import Settings
from enforcement.workers.sweep import due_deadlines
from events import EventStore, RecordedEvent, create_engine
from events.schema import idempotency_keys as keys_table
from events.timefmt import format_time
from projections.stored import iter_stored_states, read_states
from projections.tables import standings

# A notice delivered again is one whose delivery a kill cut off if a kill came this soon after
# its first delivery (before the worker could record it; seconds, to leave a loaded machine room).
DUPLICATE_SECONDS = 5.0
# A notice delivered again is one relayed to a Redis that came back (restarted: the leader takes
# it for one that lost its data, whatever its persistence) before the leader saw it (it looks
# every 5 s), and so sent again by the leader's re-send, if its first delivery came this soon
# after Redis came back (the look, and a retry's wait of up to 4 s here; docs/design.md, "A
# Redis that lost its data").
REDIS_BACK_SECONDS = 15.0
# A deadline the sweep (every second here) has had this long to escalate is overdue.
OVERDUE_SECONDS = 5.0
# The soak's last processes are stopped once no deadline is due this soon (seconds).
STOP_SECONDS = 3.0
# The fields of an event's data that an ``Expect`` may name.
MARKED = ("evidence_ref", "reason", "note", "statement", "report_id")


# ------------------------------------------------------------------ the checks

Check = tuple[str, bool, str]  # what must hold, whether it did, the figures behind it


@dataclass
class Ending:
    """What the last start of the soak saw: the deadlines still overdue once it had settled,
    the acknowledged requests whose answer differed when sent again, how many part files a
    kill had left (aged before it started), and the exit status of each process's SIGTERM
    (by name)."""

    late: list[Any]
    replays_differ: list[str]
    parts_aged: int
    stop_statuses: dict[str, int]


@dataclass
class Result:
    figures: dict[str, Any]
    checks: list[tuple[str, bool, str]]
    notes: list[str]
    workdir: Path

    @property
    def ok(self) -> bool:
        return all(passed for _, passed, _ in self.checks)

    @property
    def failures(self) -> list[str]:
        return [f"{name}: {detail}" for name, passed, detail in self.checks if not passed]


def show(result: Result, console: Console, title: str) -> None:
    table = Table(title=f"{title}: figures", show_header=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for name, value in result.figures.items():
        table.add_row(name, str(value))
    console.print(table)
    checks = Table(title="checks")
    for column in ("check", "", "detail"):
        checks.add_column(column, overflow="fold")
    for name, passed, detail in result.checks:
        checks.add_row(name, "[green]ok[/]" if passed else "[red]FAILED[/]", detail)
    console.print(checks)
    if result.notes:
        console.print(f"[yellow]{len(result.notes)} notes[/] (answers and log lines to look at):")
        for note in result.notes[:20]:
            console.print(f"  {note}", markup=False, highlight=False)


def read_log(soak: Soak) -> list[RecordedEvent]:
    engine = create_engine(soak.database_url)
    try:
        return list(EventStore(engine).iter_all(0))
    finally:
        engine.dispose()


def _channels(ledger: Ledger, account: str) -> list[str]:
    email, webhook = ledger.contacts[account]
    return [c for c, on in (("email", email), ("webhook", webhook)) if on]


def undelivered(ledger: Ledger, log: list[RecordedEvent]) -> list[tuple[str, str]]:
    """(notice event id, channel) of each notice not yet delivered on a channel of its own."""
    delivered = {
        (e.data["notice_event_id"], e.data["channel"]) for e in log if e.type == "NoticeDelivered"
    }
    return [
        (e.event_id, channel)
        for e in log
        if e.type == "NoticeIssued"
        for channel in _channels(ledger, e.account_id)
        if (e.event_id, channel) not in delivered
    ]


def due(soak: Soak, ahead: float) -> list[tuple[str, str, str]]:
    """(account, kind, id) of each deadline due before ``ahead`` seconds from now."""
    engine = create_engine(soak.database_url)
    try:
        moment = format_time(datetime.now(UTC) + timedelta(seconds=ahead))
        return [
            (state.account_id, kind, ident)
            for state in iter_stored_states(EventStore(engine), kinds=("remediations",))
            for kind, ident in due_deadlines(state, moment)
        ]
    finally:
        engine.dispose()


def overdue(soak: Soak) -> list[tuple[str, str, str]]:
    """(account, kind, id) of each deadline the scheduler has had time to escalate and has not."""
    return due(soak, -OVERDUE_SECONDS)


def settle(soak: Soak, ledger: Ledger) -> tuple[list[tuple[str, str]], list[Any]]:
    """Wait until every notice is delivered on each of its channels and no deadline is due
    within ``STOP_SECONDS`` (a stop that follows must not cut off the notice of an escalation);
    what is still undelivered, and overdue, when ``soak.settle_seconds`` have passed."""
    deadline = time.monotonic() + soak.settle_seconds
    while True:
        waiting = undelivered(ledger, read_log(soak))
        if not waiting and not due(soak, STOP_SECONDS):
            return [], []
        if time.monotonic() > deadline:
            return waiting, overdue(soak)
        time.sleep(0.5)


def stored_standings(soak: Soak, accounts: list[str], as_of: datetime) -> tuple[Any, Any]:
    """Every stored standing row (version, state) and every account's standing ``as_of``."""
    settings = Settings(
        database_url=soak.database_url,
        mail_dir=str(soak.mail_dir),
        policy_file=str(soak.workdir / "policy.toml"),
    )
    container = bootstrap(settings)
    try:
        with container.engine.connect() as conn:
            heads = {
                r[0]: (r[1], r[2])
                for r in conn.execute(
                    standings.select().with_only_columns(
                        standings.c.account_id, standings.c.version, standings.c.state
                    )
                )
            }
            states = read_states(conn, heads)
        rows = {a: (v, states[a].to_json() if a in states else h) for a, (v, h) in heads.items()}
        views = {a: container.service.standing(a, as_of).to_json() for a in accounts}
        return rows, views
    finally:
        container.close()


def idempotency_keys(soak: Soak) -> dict[str, list[str]]:
    """The store's idempotency keys: each key and the events recorded under it."""
    engine = create_engine(soak.database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                keys_table.select().with_only_columns(keys_table.c.key, keys_table.c.event_ids)
            )
            return {key: ids for key, ids in rows}
    finally:
        engine.dispose()


def check_keys(
    ledger: Ledger, log: list[RecordedEvent], keys: dict[str, list[str]]
) -> tuple[Check, str]:
    """Each key of a request answered 2xx is recorded once, with the events it recorded (its
    marked event among them), and a key answered 4xx is not recorded at all."""
    marked = {(e.type, name, str(e.data.get(name))): e.event_id for e in log for name in MARKED}
    ids = {e.event_id for e in log}
    wrong, counts = [], []
    for call in ledger.calls:
        for key, expect in call.keyed():
            recorded = keys.get(key)
            if expect.status is not None and 200 <= expect.status < 300:
                counts.append(len(recorded or []))
                found = set(recorded or [])
                if not found or not found <= ids or marked.get(expect.fact) not in found:
                    wrong.append(key)
            elif recorded is not None:
                wrong.append(key)
    per_key = (
        f"{sum(counts) / max(1, len(counts)):.1f} on average, at most {max(counts, default=0)}"
    )
    check = (
        "each 2xx request's key recorded once with its events, a 4xx one's not at all",
        not wrong,
        f"{len(counts)} keys answered 2xx; {len(wrong)} wrong {wrong[:3]}",
    )
    return check, per_key


def check_requests(ledger: Ledger, log: list[RecordedEvent]) -> list[Check]:
    expected: Counter[tuple[str, str, str]] = Counter()
    named: set[tuple[str, str, str]] = set()
    unanswered = 0
    for call in ledger.calls:
        for expect in call.expects:
            named.add(expect.fact)
            if expect.status is None:
                unanswered += 1
            elif 200 <= expect.status < 300:
                expected[expect.fact] += 1
    fields: dict[str, set[str]] = {}
    for type_, name, _ in named:
        fields.setdefault(type_, set()).add(name)
    recorded: Counter[tuple[str, str, str]] = Counter()
    for event in log:
        if event.type == "ViolationReported" and event.data.get("abuse_report_id") is not None:
            continue  # a confirmed abuse report's violation: the triage's, not a report's
        for name in fields.get(event.type, ()):
            fact = (event.type, name, str(event.data.get(name)))
            if fact in named:
                recorded[fact] += 1
    wrong = sorted(f for f in named if recorded[f] != expected[f])
    twice = sum(recorded[f] > 1 for f in named)
    ids = {e.event_id for e in log}
    missing = sorted(ledger.acked_events - ids)
    violation_of = {
        e.data["evidence_ref"]: e.data["violation_id"]
        for e in log
        if e.type == "ViolationReported" and e.data.get("abuse_report_id") is None
    }
    other_ids = sorted(m for m, v in ledger.acked_violations.items() if violation_of.get(m) != v)
    sends = {e.fact: c.history for c in ledger.calls for e in c.expects}
    details = ", ".join(
        f"{t} {m}: {recorded[(t, n, m)]} recorded for {expected[(t, n, m)]} (sends: "
        f"{' '.join(sends[(t, n, m)])})"
        for t, n, m in wrong[:5]
    )
    return [
        ("every request has a definitive answer", unanswered == 0, f"{unanswered} without"),
        (
            "2xx recorded exactly once, 4xx not at all",
            not wrong,
            f"{len(named)} requests and batch items; {len(wrong)} wrong ({twice} twice) {details}",
        ),
        (
            "every event a 2xx answer named is in the log",
            not missing and not other_ids,
            f"{len(ledger.acked_events)} events; {len(missing)} missing, "
            f"{len(other_ids)} violations recorded under another id",
        ),
    ]


def check_notices(
    soak: Soak, ledger: Ledger, log: list[RecordedEvent], receiver: Receiver, mail: MailWatch
) -> tuple[list[Check], dict[str, Any]]:
    notices = [e for e in log if e.type == "NoticeIssued"]
    delivered = Counter(
        (e.data["notice_event_id"], e.data["channel"]) for e in log if e.type == "NoticeDelivered"
    )
    final_failures = [e for e in log if e.type == "NoticeDeliveryFailed" and e.data["final"]]
    attempts_failed = sum(e.type == "NoticeDeliveryFailed" for e in log)
    wanted = [(n.event_id, c) for n in notices for c in _channels(ledger, n.account_id)]
    missing = [w for w in wanted if delivered[w] == 0]
    recorded_twice = [w for w in wanted if delivered[w] > 1]
    no_file = [n for n, c in wanted if c == "email" and not (soak.mail_dir / f"{n}.eml").exists()]
    not_received = [n for n, c in wanted if c == "webhook" and not receiver.taken[n]]
    unexplained = [
        name
        for name, first in [
            *((n, receiver.first_taken_at[n]) for n, c in receiver.taken.items() if c > 1),
            *((n, mail.first_seen_at[n]) for n in mail.rewritten),
        ]
        # (the mail watch sees a file up to 0.1 s after it was written)
        if not any(first - 1 <= kill <= first + DUPLICATE_SECONDS for kill in ledger.kills)
        and not any(0 <= first - back <= REDIS_BACK_SECONDS for back in ledger.redis_back)
        # A worker frozen past its heartbeat finishes, once it goes on, the send its message's
        # next try (another worker's) made meanwhile (``docs/design.md``, "Two copies of one
        # delivery take turns"): the first delivery came during the freeze, or just after it.
        and not any(
            stopped - 1 <= first <= went_on + DUPLICATE_SECONDS
            for stopped, went_on in ledger.handed_on
        )
        # A delivery sent as the database went silent, whose outcome's record then timed out,
        # is sent again by its retry (at least once): the first came as the silence began (a
        # send follows the database's answer to "delivered?" at once, so none starts during it).
        and not any(stopped - 1 <= first <= stopped + 1 for stopped, _ in ledger.silent_database)
    ]
    email_again = sum(mail.rewritten.values())
    webhook_again = sum(count - 1 for count in receiver.taken.values() if count > 1)
    figures = {
        "notices issued": len(notices),
        "deliveries recorded (email, webhook)": (
            f"{sum(c == 'email' for _, c in delivered)}, "
            f"{sum(c == 'webhook' for _, c in delivered)}"
        ),
        "failed attempts recorded (the receiver's 500s)": attempts_failed,
        "duplicates: .eml written again": f"{email_again} ({len(mail.rewritten)} notices)",
        "duplicates: webhook received again": (
            f"{webhook_again} ({sum(c > 1 for c in receiver.taken.values())} notices)"
        ),
    }
    checks = [
        (
            "every notice delivered on each channel, recorded once",
            not missing and not recorded_twice and not final_failures,
            f"{len(wanted)} deliveries due; {len(missing)} missing, {len(recorded_twice)} "
            f"recorded twice, {len(final_failures)} failed for good",
        ),
        (
            "a notice went out twice only when a kill cut its delivery off (or Redis came "
            "back just before, or a worker froze past its heartbeat meanwhile, or the "
            "database went silent then)",
            not unexplained,
            f"{len(unexplained)} sent again with no kill within {DUPLICATE_SECONDS:g} s after "
            f"the first (nor Redis back within {REDIS_BACK_SECONDS:g} s before, nor a worker "
            "frozen past its heartbeat, nor the database silent then): "
            f"{unexplained[:3]}",
        ),
        (
            "each e-mail delivery has its .eml, each webhook one its receipt",
            not no_file and not not_received,
            f"{len(no_file)} .eml missing, {len(not_received)} webhooks not received",
        ),
    ]
    return checks, figures


def check_deadlines(log: list[RecordedEvent], late: list[Any]) -> list[Check]:
    expired = Counter(e.data["remediation_id"] for e in log if e.type == "RemediationExpired")
    ended = Counter(e.data["suspension_id"] for e in log if e.type == "SuspensionEnded")
    twice = [k for k, n in (expired + ended).items() if n > 1]
    return [
        (
            "deadlines escalated once each, none left overdue",
            not twice and not late,
            f"{len(expired)} remediations expired, {len(ended)} suspensions ended; "
            f"{len(twice)} twice, {len(late)} overdue {late[:3]}",
        )
    ]


def age_parts(soak: Soak, seconds: float) -> int:
    """Set the times of the part files in the mail directory ``seconds`` back (as if that much
    time had passed since a kill cut their writes off); how many there are."""
    parts = [p for p in soak.mail_dir.glob(".*.part")]
    then = time.time() - seconds
    for part in parts:
        os.utime(part, (then, then))
    return len(parts)


def check_files(soak: Soak, log: list[RecordedEvent], aged: int) -> Check:
    """Only notices in the mail directory (the ``aged`` part files a kill left, made older than
    10 minutes, are gone: the last start's first notice swept them, as operations.md says),
    only SQLite's files and the relay's lock beside the database (on SQLite)."""
    notices = {e.event_id for e in log if e.type == "NoticeIssued"}
    parts, stray = 0, []
    for entry in os.scandir(soak.mail_dir):
        if entry.name.startswith(".") and entry.name.endswith(".part"):
            parts += 1
        elif not (entry.name.endswith(".eml") and entry.name[: -len(".eml")] in notices):
            stray.append(entry.name)
    if not soak.production:
        name = soak.database.name
        own = {name, f"{name}-wal", f"{name}-shm", f"{name}-journal", f"{name}.leader"}
        stray += [f"db/{p.name}" for p in soak.database.parent.iterdir() if p.name not in own]
    return (
        "no stray file; the part files kills left are swept once 10 minutes old",
        not stray and parts == 0,
        f"{aged} part files left by kills, {parts} still there; stray: {stray[:5]}",
    )


def integrity(soak: Soak) -> str:
    conn = sqlite3.connect(soak.database)
    try:
        return "; ".join(str(r[0]) for r in conn.execute("PRAGMA integrity_check"))
    finally:
        conn.close()


# The figures of the production soak's last gate check, over every account.
SETTLED_GATE = "gate checks once the workers settled"
SETTLED_GATE_WRONG = "gate answers that disagree once the workers settled"

RESENT = {
    "notice deliveries re-sent at start-up": re.compile(
        r"re-sent (\d+) notice deliveries without an outcome"
    ),
    "notice deliveries re-sent by the lost-retry scan": re.compile(
        r"re-sent (\d+) notice deliveries whose retry or first message was lost"
    ),
}


def read_logs(soak: Soak) -> tuple[list[str], dict[str, int]]:
    """What the servers' (and workers') logs say: their records at ERROR or above, each message
    once with its count (notes, not checks; but for the failed attempts that the receiver's
    500s make), and how many notice deliveries each of the two ways re-sent."""
    found: Counter[str] = Counter()
    resent = dict.fromkeys(RESENT, 0)
    for path in sorted((soak.workdir / "logs").glob("*.log")):
        for line in path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                found[line[:200]] += 1  # not a log record: a crash's own output
                continue
            for name, pattern in RESENT.items():
                if match := pattern.match(record.get("message", "")):
                    resent[name] += int(match[1])
            if record.get("level") not in ("error", "critical"):
                continue
            if str(record.get("exception", "")).endswith("webhook answered HTTP 500"):
                continue
            found[f"{record['logger']}: {record['message'][:200]}"] += 1
    return [f"{count} x {text}" for text, count in found.most_common()], resent


def check_all(
    soak: Soak, ledger: Ledger, receiver: Receiver, mail: MailWatch, ending: Ending
) -> tuple[list[Check], dict[str, Any], list[str]]:
    """Every check, once the last ``serve`` has stopped; the figures; the notes to look at."""
    log = read_log(soak)
    checks = check_requests(ledger, log)
    key_check, per_key = check_keys(ledger, log, idempotency_keys(soak))
    checks.append(key_check)
    checks.append(
        (
            "acknowledged requests sent again answer 200, the same",
            not ending.replays_differ,
            f"{sum(c.replay_checked for c in ledger.calls)} sent; {ending.replays_differ[:3]}",
        )
    )
    notice_checks, notice_figures = check_notices(soak, ledger, log, receiver, mail)
    checks += notice_checks
    checks += check_deadlines(log, ending.late)
    log_errors, resent = read_logs(soak)
    scanned = resent["notice deliveries re-sent by the lost-retry scan"]
    # A consumer whose Redis went silent drops the delayed messages it held (notice retries
    # among them) until its worker restarts: the scan is what sends those (docs/operations.md).
    silent = len(ledger.silent_redis)
    checks.append(
        (
            "start-up re-sends cover every kill (the lost-retry scan finds nothing, unless "
            "Redis went silent)",
            scanned == 0 or silent > 0,
            f"{resent['notice deliveries re-sent at start-up']} re-sent at start-up, "
            f"{scanned} by the scan" + (f"; Redis went silent {silent} times" if silent else ""),
        )
    )
    verify = soak.cli("verify")
    checks.append(("enforcement verify exits 0", verify.returncode == 0, verify.stdout.strip()))
    checks.append(check_replay(soak, ledger.accounts))
    checks.append(check_files(soak, log, ending.parts_aged))
    if not soak.production:
        verdict = integrity(soak)
        checks.append(("PRAGMA integrity_check", verdict == "ok", verdict))
    gate_wrong = ledger.figures["gate answers that disagree with the standing"]
    checks.append(
        (
            "after each restart the gate refuses suspended and terminated accounts",
            gate_wrong == 0,
            f"{ledger.figures['gate checks after a restart']} checked, {gate_wrong} disagree",
        )
    )
    if soak.production:
        settled_wrong = ledger.figures[SETTLED_GATE_WRONG]
        checks.append(
            (
                "once the workers settled, the gate (each account asked of one API process, "
                "in turn) refuses every suspended and terminated account and allows the others",
                settled_wrong == 0 and ledger.figures[SETTLED_GATE] > 0,
                f"{ledger.figures[SETTLED_GATE]} accounts checked, {settled_wrong} disagree",
            )
        )
    server_errors = sum(n for k, n in ledger.answers.items() if k.endswith(" 500"))
    checks.append(("no 500 answer", server_errors == 0, f"{server_errors} answered 500"))
    # uvicorn re-raises the SIGTERM it handled: -15 is clean
    unclean = {name: s for name, s in ending.stop_statuses.items() if s not in (0, -15)}
    checks.append(
        (
            f"the last {', '.join(ending.stop_statuses)} stop cleanly on SIGTERM",
            not unclean,
            f"exit statuses {ending.stop_statuses}",
        )
    )
    batch_items = sum(len(c.expects) for c in ledger.calls if c.kind == "batch")
    figures: dict[str, Any] = {
        "accounts": len(ledger.accounts),
        "requests (batch items)": f"{len(ledger.calls)} ({batch_items})",
        **{k: v for k, v in sorted(ledger.figures.items()) if k.startswith(("sent:", "no answer"))},
        "requests sent again": ledger.figures["requests sent again"],
        # A report (or batch item) answered 200 when sent again had been recorded before the
        # kill cut its answer off.
        "reports sent again that were recorded already (200)": sum(
            e.status == 200
            for c in ledger.calls
            if c.sends > 1 and c.kind in REPORTS
            for e in c.expects
        ),
        "answered 2xx": sum(c.acknowledged for c in ledger.calls),
        "answered 4xx": sum(c.status is not None and c.status >= 400 for c in ledger.calls),
        "answered 5xx (sent again)": sum(
            n for k, n in ledger.answers.items() if k.rsplit(" ", 1)[1].startswith("5")
        ),
        "events in the log": len(log),
        "events recorded per client key": per_key,
        "by type": ", ".join(f"{t} {n}" for t, n in Counter(e.type for e in log).most_common()),
        **notice_figures,
        "part files left by kills": ending.parts_aged,
        **resent,
    }
    return checks, figures, ledger.notes + log_errors


def check_replay(soak: Soak, accounts: list[str]) -> Check:
    """``enforcement replay`` rebuilds the stored standings as the write path kept them."""
    as_of = datetime.now(UTC)
    before = stored_standings(soak, accounts, as_of)
    replay = soak.cli("replay")
    after = stored_standings(soak, accounts, as_of)
    rows_differ = [a for a in before[0] if before[0][a] != after[0].get(a)]
    views_differ = [a for a in before[1] if before[1][a] != after[1][a]]
    return (
        "enforcement replay rebuilds the same standings",
        replay.returncode == 0 and not rows_differ and not views_differ,
        f"{len(before[0])} stored rows, {len(rows_differ)} differ; {len(before[1])} "
        f"standings at one instant, {len(views_differ)} differ {rows_differ[:3]}",
    )
