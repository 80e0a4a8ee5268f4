"""Violations decided and recorded per second through ``EnforcementService.report_violation``.

Two scenarios, on SQLite and on PostgreSQL, each in a fresh database of its own:

- fresh: every violation on a new account (the stored standing is empty);
- long: every violation on ONE account that already has ``--history`` events (10,000 by default):
  a realistic mix over more than 90 days of violations with their decisions, notices, delivery
  receipts, dismissals, completed and missed remediations, suspensions ended, appeals. The
  history is made by the real decision functions in memory and appended through the store in big
  batches (fast), and then ``rebuild_standings`` makes its stored standing row current, so every
  measured request starts from a row at the head of the log, as in production.

Both scenarios report the same violation, ``sustained_abuse`` (AUP §3, also raised from gate
denials: the category that recurs on one account), so every request records the same three
events (``ViolationReported``, ``ThrottleApplied``, ``NoticeIssued``) whatever the history; the
only difference between the scenarios is the history. The write path must not replay the whole
stream: the long scenario should cost at most 1.5x the fresh one per violation.

Each request is timed from the call to the commit (one thread, fake clock moving a day and a
second a request, so each request's 24-hour throttle has run out before the next: see ``STEP``).
Scenarios alternate in chunks, every measurement runs ``--repeats`` times, the table shows the
median. ``--profile`` runs the long scenario under cProfile and prints where the time goes,
with a breakdown of the stored standing's cost (row size, ``from_json``, ``to_json``).

Run from the repository root: ``.venv/bin/python benchmarks/bench_decide.py --help``.
"""

from __future__ import annotations

import argparse
import cProfile
import heapq
import io
import json
import os
import platform
import pstats
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402
from common import add_pg_url_argument, load_average, pg_database  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from enforcement import operator_decisions as ops  # noqa: E402
from enforcement import policy as rules  # noqa: E402
from enforcement.bootstrap import Container, bootstrap  # noqa: E402
from enforcement.errors import DomainError  # noqa: E402
from enforcement.migrations import upgrade  # noqa: E402
from enforcement.policy import Context, Policy, ViolationReport  # noqa: E402
from enforcement.service import Actor  # noqa: E402
from enforcement.settings import Settings  # noqa: E402
from events import NewEvent, RecordedEvent  # noqa: E402
from events.timefmt import parse_time  # noqa: E402
from projections import aup_events as ev  # noqa: E402
from projections.runner import rebuild_standings  # noqa: E402
from projections.standing import (  # noqa: E402
    DECISION_TYPES,
    StandingState,
    active_strikes,
    apply_all,
    view,
)
from projections.stored import changed_records, read_state  # noqa: E402
from projections.tables import standing_records, standings  # noqa: E402

NOW = datetime(2026, 11, 24, 10, 0, 0, tzinfo=UTC)
LONG = "acct_long_history"
REPORTER = Actor(name="reporter:bench", correlation_id="bench", source="bench")
HISTORY_CATEGORIES = (
    ["spam"] * 6
    + ["impersonation"] * 3
    + ["safety_probing"] * 3
    + ["ip_infringement"] * 2
    + ["phishing", "sustained_abuse", "unapproved_adult_content", "personal_data_harvesting"]
)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


# --------------------------------------------------------------------------- databases


@contextmanager
def database(backend: str, pg_admin_url: str, tmp: Path) -> Iterator[str]:
    """A fresh, migrated database; PostgreSQL ones are dropped afterwards."""
    if backend == "sqlite":
        url = f"sqlite:///{tmp / f'bench_{uuid.uuid4().hex[:8]}.db'}"
        upgrade(url)
        yield url
        return
    with pg_database(pg_admin_url, "bench_decide") as url:
        upgrade(url)
        yield url


# --------------------------------------------------------------------------- the long history


def as_recorded(
    state: StandingState, new_events: list[NewEvent], at: datetime
) -> list[RecordedEvent]:
    """``new_events`` as if appended after ``state`` at ``at`` (in memory, no chain)."""
    return [
        RecordedEvent(
            0,
            e.event_id,
            state.account_id,
            state.version + i,
            e.type,
            e.schema_version,
            e.data,
            e.metadata,
            e.occurred_at,
            at,
            "",
            "",
        )
        for i, e in enumerate(new_events, start=1)
    ]


Action = Callable[[datetime], object]  # a follow-up, run at its time; its result is unused


class History:
    """An account's history made by the real decision functions on an in-memory state.

    A busy account whose detector findings are mostly false positives: each finding is decided
    by the ladder at once (warning and remediation, or a suspension for a high one) and then
    dismissed by an operator an hour later (with a reinstatement when it had suspended the
    account). About one in a hundred is genuine while the account has no strike: its
    remediation is completed, or missed (expired, a 7-day suspension that ends by itself), and
    some of its decisions are appealed (upheld or overturned). Every notice has a delivery
    receipt, some after a failed attempt. Follow-ups happen at their own time (an agenda), so
    the log is in time order.
    """

    def __init__(self, policy: Policy, account: str, seed: int = 7) -> None:
        self.policy, self.account = policy, account
        self.state = StandingState.empty(account)
        self.batches: list[tuple[datetime, list[NewEvent]]] = []
        self.events = 0
        self.rng = random.Random(seed)
        self.agenda: list[tuple[datetime, int, Action]] = []

    def ctx(self, now: datetime, actor: str = "operator:bench") -> Context:
        return Context(now=now, actor=actor, correlation_id=f"hist-{self.events}", source="bench")

    def later(self, when: datetime, action: Action) -> None:
        # Lambdas that bind loop variables as default arguments need cast(Action, ...): mypy
        # cannot infer a lambda with more parameters than the callable it is passed as.
        heapq.heappush(self.agenda, (when, len(self.batches) + len(self.agenda), action))

    def run_agenda(self, until: datetime) -> None:
        while self.agenda and self.agenda[0][0] <= until:
            when, _, action = heapq.heappop(self.agenda)
            action(when)

    def record(self, now: datetime, new_events: list[NewEvent]) -> list[NewEvent]:
        recorded = as_recorded(self.state, new_events, now)
        self.state = apply_all(self.state, recorded)
        self.batches.append((now, new_events))
        self.events += len(new_events)
        return new_events

    def attempt(self, now: datetime, decide: Callable[[], list[NewEvent]]) -> list[NewEvent]:
        """Record what ``decide`` returns (nothing if it refuses), with its notices' receipts."""
        try:
            decided = self.record(now, decide())
        except DomainError:
            return []
        self.later(now + timedelta(seconds=30), lambda when: self.receipts(when, decided))
        return decided

    def receipts(self, now: datetime, decided: list[NewEvent]) -> None:
        for notice in (e for e in decided if e.type == "NoticeIssued"):
            meta = {
                "actor": "worker",
                "causation_id": notice.event_id,
                "source": "bench",
                "policy_version": self.policy.version,
                "correlation_id": "receipt",
            }
            nid = notice.data["notice_id"]
            made = []
            if self.rng.random() < 0.15:
                failed = ev.NoticeDeliveryFailed(nid, notice.event_id, "email", 1, "timeout", False)
                made.append(ev.CODEC.encode(failed, occurred_at=now, metadata=meta))
            delivered = ev.NoticeDelivered(nid, notice.event_id, "email", len(made) + 1)
            made.append(ev.CODEC.encode(delivered, occurred_at=now, metadata=meta))
            self.record(now, made)

    def operator(self, now: datetime, command: ops.Command) -> list[NewEvent]:
        return self.attempt(
            now, lambda: ops.decide(self.policy, self.state, command, self.ctx(now))
        )

    def episode(self, now: datetime) -> None:
        """One detector finding, what the policy decided, and its follow-ups."""
        p, rng = self.policy, self.rng
        category = rng.choice(HISTORY_CATEGORIES)
        report = ViolationReport(
            category,
            now - timedelta(minutes=rng.randint(1, 120)),
            description=f"detector finding #{self.events}",
        )
        decided = self.attempt(
            now,
            lambda: rules.decide_violation(
                p, self.state, report, self.ctx(now, "reporter:detector")
            ),
        )
        strikes = len(active_strikes(self.state, now, p.strike_lookback))
        if strikes == 0 and rng.random() < 0.01:
            self.genuine(now, decided)
        else:
            self.later(now + timedelta(hours=1), lambda when: self.false_positive(when, decided))

    def false_positive(self, now: datetime, decided: list[NewEvent]) -> None:
        self.operator(now, ops.DismissViolation(decided[0].data["violation_id"], "false positive"))
        if any(e.type == "AccountSuspended" for e in decided):
            self.operator(now, ops.Reinstate("suspended for a false positive"))
        for throttle in (e for e in decided if e.type == "ThrottleApplied"):
            self.operator(now, ops.LiftThrottle(throttle.data["throttle_id"]))

    def genuine(self, now: datetime, decided: list[NewEvent]) -> None:
        rng = self.rng
        for remediation in (e for e in decided if e.type == "RemediationRequested"):
            rid = remediation.data["remediation_id"]
            if rng.random() < 0.7:
                done = now + timedelta(days=rng.randint(1, 6))
                self.later(
                    done,
                    cast(
                        Action,
                        lambda when, rid=rid: self.operator(
                            when, ops.CompleteRemediation(rid, "fixed")
                        ),
                    ),
                )
            else:
                due = parse_time(remediation.data["due_at"]) + timedelta(minutes=1)
                self.later(due, cast(Action, lambda when, rid=rid: self.expire(when, rid)))
        for decision in (e for e in decided if e.type in DECISION_TYPES):
            if rng.random() < 0.3:
                self.later(
                    now + timedelta(days=2),
                    cast(Action, lambda when, d=decision: self.appeal(when, d)),
                )

    def expire(self, now: datetime, remediation_id: str) -> None:
        out = self.attempt(
            now,
            lambda: rules.decide_remediation_expired(
                self.policy, self.state, remediation_id, self.ctx(now, "scheduler")
            ),
        )
        for suspension in (e for e in out if e.type == "AccountSuspended"):
            sid, until = suspension.data["suspension_id"], parse_time(suspension.data["until"])
            self.later(
                until,
                cast(
                    Action,
                    lambda when, sid=sid: self.attempt(
                        when,
                        lambda: ops.decide_suspension_ended(
                            self.policy, self.state, sid, self.ctx(when, "scheduler")
                        ),
                    ),
                ),
            )

    def appeal(self, now: datetime, decision: NewEvent) -> None:
        filed = self.attempt(
            now,
            lambda: rules.decide_appeal_filing(
                self.policy, self.state, decision.event_id, "we fixed it", self.ctx(now)
            ),
        )
        if filed:
            appeal_id = filed[0].data["appeal_id"]
            outcome = self.rng.choice(["upheld", "overturned"])
            self.later(
                now + timedelta(days=3),
                lambda when: self.attempt(
                    when,
                    lambda: rules.decide_appeal(
                        self.policy, self.state, appeal_id, outcome, "reviewed", self.ctx(when)
                    ),
                ),
            )


def build_history(container: Container, clock: Clock, target: int, days: int) -> History:
    """``target`` events on ``LONG`` over ``days`` days ending an hour before ``NOW``."""
    history = History(container.policy, LONG)
    end = NOW - timedelta(hours=1)
    t = end - timedelta(days=days)
    step = timedelta(days=days) / max(1, int(target / 5.4))  # ~5.5 events an episode
    while history.events < target and t < end:
        history.run_agenda(t)
        history.episode(t)
        t += step
    history.run_agenda(end)
    if history.events < target:
        raise RuntimeError(f"only {history.events} events in {days} days; raise --days")
    if history.state.terminated:
        raise RuntimeError("the generated history terminated the account; use another --seed")
    # Append in big batches (one transaction each), recorded at the time of their last event.
    version, batch, batch_time = 0, [], NOW
    for when, new_events in history.batches:
        batch.extend(new_events)
        batch_time = when
        if len(batch) >= 500:
            clock.now = batch_time
            version += len(container.store.append(LONG, version, batch))
            batch = []
    if batch:
        clock.now = batch_time
        version += len(container.store.append(LONG, version, batch))
    clock.now = NOW
    rebuild_standings(container.store, container.standings, account=LONG)
    assert container.standings.load(LONG).version == version == history.events
    return history


# --------------------------------------------------------------------------- measuring


# Between two requests the fake clock moves past the 24-hour throttle a sustained_abuse report
# applies, in both scenarios: otherwise the measured requests themselves would leave the long
# account with hundreds of throttles in force at once (the standing lists each one), which is
# another account, not a longer history. (With 1 s steps the run ended with ~600 active
# throttles on it and its requests cost 2x a fresh one's, mostly drawing that list.)
STEP = timedelta(days=1, seconds=1)


def report_once(container: Container, clock: Clock, account: str) -> None:
    clock.now += STEP
    violation = ViolationReport("sustained_abuse", clock.now, description="gate denials")
    outcome = container.service.report_violation(account, violation, REPORTER)
    assert [e.type for e in outcome.events] == [
        "ViolationReported",
        "ThrottleApplied",
        "NoticeIssued",
    ], outcome.events


def timed(container: Container, clock: Clock, accounts: list[str]) -> float:
    """Seconds per violation over ``accounts`` (one request each, in order)."""
    started = time.perf_counter()
    for account in accounts:
        report_once(container, clock, account)
    return (time.perf_counter() - started) / len(accounts)


SCENARIOS = {
    "fresh": "fresh accounts",
    "long": "one account, {events:,} events",
    "long-row": "same, loaded from its row",
}


@dataclass
class Result:
    backend: str
    seconds: dict[str, list[float]]
    history_events: int
    history_days: float
    row_bytes: tuple[int, int]
    breakdown: dict[str, tuple[float, float]]


def stored_row_bytes(container: Container, account: str) -> tuple[int, int]:
    """Bytes of the account's stored standing (head and records, as JSON) and its record count."""
    with container.engine.connect() as conn:
        head = conn.execute(
            sa.select(standings.c.state).where(standings.c.account_id == account)
        ).scalar_one()
        records = conn.execute(
            sa.select(standing_records.c.data).where(standing_records.c.account_id == account)
        ).scalars()
        sizes = [len(json.dumps(r, separators=(",", ":"))) for r in records]
    return len(json.dumps(head, separators=(",", ":"))) + sum(sizes), len(sizes)


def breakdown(container: Container, account: str) -> dict[str, float]:
    """Milliseconds of each in-process step of one request on ``account``."""

    def ms(fn: Callable[[], Any], n: int = 5) -> float:
        started = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - started) / n * 1000

    repo = container.standings
    with container.engine.connect() as conn:
        state = read_state(conn, account)
        assert state is not None
        fetch = ms(lambda: read_state(conn, account))
    ctx = Context(now=NOW, actor="bench", correlation_id="x")
    report = ViolationReport("sustained_abuse", NOW)
    decided = rules.decide_violation(container.policy, state, report, ctx)
    recorded = as_recorded(state, decided, NOW)
    after = apply_all(state, recorded)
    min_version, repo.cache_min_version = repo.cache_min_version, 0
    repo.remember(state)
    remembered = ms(lambda: repo.load(account))
    repo.cache_min_version = min_version
    repo.forget()
    return {
        "row path: read_state (head + records, decoded)": fetch,
        "remembered path: state + tail query": remembered,
        "decide_violation": ms(
            lambda: rules.decide_violation(container.policy, state, report, ctx)
        ),
        "apply_all of 3 events": ms(lambda: apply_all(state, recorded)),
        "save: changed_records (the rows an append writes)": ms(
            lambda: changed_records(state, after)
        ),
        "view": ms(lambda: view(state, NOW, container.policy.strike_lookback)),
    }


def run_backend(backend: str, url: str, args: argparse.Namespace, console: Console) -> Result:
    clock = Clock(NOW)
    container = bootstrap(Settings(database_url=url), clock=clock)
    repo = container.standings
    cache_size = repo.cache_size
    try:
        started = time.perf_counter()
        history = build_history(container, clock, args.history, args.days)
        console.print(
            f"  {backend}: {history.events} history events built in "
            f"{time.perf_counter() - started:.1f} s",
            highlight=False,
        )
        first = container.store.read_stream(LONG, limit=1)[0].recorded_at
        days = (NOW - first).total_seconds() / 86400
        n, counter = args.violations, 0

        def accounts(scenario: str) -> list[str]:
            nonlocal counter
            if scenario != "fresh":
                return [LONG] * n
            counter += n
            return [f"acct_fresh_{i}" for i in range(counter - n, counter)]

        def measure(scenario: str) -> float:
            # "long-row": nothing remembered, every request loads the row (as the first request
            # after a restart, or one that another process served last, does).
            repo.cache_size = 0 if scenario == "long-row" else cache_size
            repo.forget()
            report_once(container, clock, LONG if scenario != "fresh" else "acct_warm")
            return timed(container, clock, accounts(scenario))

        timed(container, clock, [f"acct_warm_{i}" for i in range(5)])  # pools, statements
        seconds: dict[str, list[float]] = {name: [] for name in SCENARIOS}
        order = list(SCENARIOS)
        for rep in range(args.repeats):
            for scenario in order if rep % 2 == 0 else order[::-1]:
                seconds[scenario].append(measure(scenario))
        repo.cache_size = cache_size
        repo.forget()
        report_once(container, clock, LONG)
        parts_long = breakdown(container, LONG)
        parts_fresh = breakdown(container, "acct_fresh_0")
        if args.profile:
            profile_long(container, clock, console, backend)
        return Result(
            backend,
            seconds,
            history.events,
            days,
            stored_row_bytes(container, LONG),
            {k: (parts_fresh[k], parts_long[k]) for k in parts_long},
        )
    finally:
        container.close()


def profile_long(container: Container, clock: Clock, console: Console, backend: str) -> None:
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(30):
        report_once(container, clock, LONG)
    profiler.disable()
    for key in ("cumulative", "tottime"):
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats(key).print_stats(25)
        console.print(
            f"[bold]cProfile, {backend}, 30 violations on the long account (state remembered), "
            f"sorted by {key}[/bold]"
        )
        console.print(out.getvalue(), highlight=False, markup=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--violations",
        type=int,
        default=200,
        help="violations per measurement and scenario (default 200)",
    )
    parser.add_argument(
        "--history",
        type=int,
        default=10_000,
        help="events of the long account's history (default 10000)",
    )
    parser.add_argument(
        "--days", type=int, default=120, help="days the history spans (default 120)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs of each (default 3)")
    parser.add_argument(
        "--backends",
        default="sqlite,postgres",
        help="comma-separated: sqlite, postgres (default both)",
    )
    add_pg_url_argument(parser)
    parser.add_argument(
        "--profile", action="store_true", help="also profile the long scenario under cProfile"
    )
    args = parser.parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if not backends or set(backends) - {"sqlite", "postgres"}:
        parser.error("--backends takes sqlite and/or postgres")

    console = Console(width=max(120, Console().width))
    load_before = load_average()
    started = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_decide_") as tmp:
        for backend in backends:
            with database(backend, args.pg_url, Path(tmp)) as url:
                results.append(run_backend(backend, url, args, console))
    elapsed = time.perf_counter() - started

    console.print(
        "[bold]Violations decided and recorded per second "
        "(EnforcementService.report_violation)[/bold]"
    )
    conditions = [
        f"machine: {os.cpu_count()} cores, {platform.system()} {platform.release()}, Python "
        f"{platform.python_version()}, SQLAlchemy {sa.__version__}",
        f"load average (1 min) before {load_before}, after {load_average()} "
        "(above ~0.5 means other work shared the cores)",
        "each request: sustained_abuse → ViolationReported + ThrottleApplied + NoticeIssued, "
        "one transaction, stored standing updated in it; one thread, timed call → commit; the "
        "fake clock moves 1 day 1 s per request (each request's 24 h throttle has run out by "
        "the next)",
        f"fresh: each violation on a new account; long: every violation on one account whose "
        f"history is {results[0].history_events} events over {results[0].history_days:.0f} days "
        "(violations, decisions, notices, receipts, dismissals, remediations, appeals), row "
        "current before the run",
        "long: the state is remembered in process after each append (StandingRepository."
        "remember), so a request loads it + the tail and skips the row; 'loaded from its row': "
        "nothing remembered (first request after a restart, or another process wrote last); "
        "both write only the head row and the records the append changed",
        f"{args.violations} violations per measurement, median of {args.repeats}, scenarios "
        "alternating",
    ]
    for line in conditions:
        console.print(f"  {line}", highlight=False, markup=False)

    table = Table(title=f"violations per second (run took {elapsed:.0f} s)")
    for column in ("backend", "scenario", "violations/s", "ms/violation", "ratio long/fresh"):
        table.add_column(column, justify="left" if column in ("backend", "scenario") else "right")
    for r in results:
        fresh = statistics.median(r.seconds["fresh"])
        for scenario, label in SCENARIOS.items():
            sec = statistics.median(r.seconds[scenario])
            ratio = "" if scenario == "fresh" else f"{sec / fresh:.2f}x"
            if ratio:
                ratio = f"[{'red' if sec / fresh > 1.5 else 'green'}]{ratio}[/]"
            table.add_row(
                r.backend,
                label.format(events=r.history_events),
                f"{1 / sec:,.1f}",
                f"{sec * 1000:.2f}",
                ratio,
            )
    console.print(table)

    parts = Table(title="in-process steps of one request (ms; the database's own work not shown)")
    for column in ("backend", "step", "fresh", "long"):
        parts.add_column(column, justify="left" if column in ("backend", "step") else "right")
    for r in results:
        size, count = r.row_bytes
        parts.add_row(
            r.backend, "stored standing (bytes of JSON, records)", "", f"{size:,}, {count:,}"
        )
        for step, (fresh_ms, long_ms) in r.breakdown.items():
            parts.add_row(r.backend, step, f"{fresh_ms:.2f}", f"{long_ms:.2f}")
    console.print(parts)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
