"""Random sequences of use cases, with the clock jumping by random amounts, on SQLite and
PostgreSQL. Whatever happens, every account keeps its invariants (see ``test_service_support``):
contiguous versions, an intact chain, a stored standing equal to the fold of the log; a refused
command writes nothing; and dismissing every violation leaves no strike."""

from __future__ import annotations

import itertools
from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_service_support import (
    OPERATOR,
    REPORTER,
    FakeClock,
    assert_account_consistent,
    stored_row,
)

from enforcement import operator_decisions as ops
from enforcement.bootstrap import Container
from enforcement.errors import DomainError
from enforcement.policy import ViolationReport
from projections.standing import StandingState

CATEGORIES = [
    "spam",
    "phishing",
    "csam",
    "sustained_abuse",
    "unapproved_adult_content",
    "safety_probing",
    "violence_facilitation",
    "impersonation",
]
SEVERITIES = [None, "low", "medium", "high", "critical"]
ACCOUNTS = itertools.count()

index = st.integers(min_value=0, max_value=50)
advance = st.tuples(
    st.just("advance"), st.sampled_from([1, 60, 3600, 86_400, 7 * 86_400, 40 * 86_400])
)
report = st.tuples(
    st.just("report"),
    st.sampled_from(CATEGORIES),
    st.sampled_from(SEVERITIES),
    st.sampled_from([0, 0, 0, 30, 95]),
)
# Reports and time are the most frequent (a strategy listed twice is drawn twice as often).
commands = st.one_of(
    report,
    report,
    report,
    report,
    advance,
    advance,
    advance,
    st.tuples(st.just("abuse"), st.sampled_from(CATEGORIES)),
    st.tuples(
        st.just("triage"),
        index,
        st.sampled_from(["confirmed", "rejected"]),
        st.sampled_from(SEVERITIES[:-1]),
    ),
    st.tuples(st.just("dismiss"), index),
    st.tuples(st.just("complete"), index),
    st.tuples(st.just("expire"), index),
    st.tuples(st.just("end_suspension")),
    st.tuples(st.just("suspend"), st.sampled_from([None, 1, 30]), st.booleans()),
    st.tuples(st.just("reinstate")),
    st.tuples(st.just("terminate"), st.booleans()),
    st.tuples(
        st.just("throttle"),
        st.sampled_from([0.1, 0.5, 1.0]),
        st.sampled_from([None, "key_1"]),
        st.sampled_from([None, 1, 48]),
    ),
    st.tuples(st.just("lift"), index),
    st.tuples(st.just("adult"), st.booleans()),
    st.tuples(st.just("limits"), st.sampled_from([None, "key_1"]), st.integers(1, 1000)),
    st.tuples(st.just("appeal"), index),
    st.tuples(st.just("decide"), index, st.sampled_from(["upheld", "overturned"])),
)


def pick(items: list[Any], i: int) -> Any:
    return items[i % len(items)] if items else f"missing_{i}"


def run(system: Container, clock: FakeClock, account: str, cmd: tuple[Any, ...]) -> None:
    """One use case; a ``DomainError`` is an allowed answer (and must have written nothing)."""
    service, now = system.service, clock()
    state = system.standings.load(account)
    match cmd:
        case ("advance", seconds):
            clock.advance(timedelta(seconds=seconds))
        case ("report", category, severity, days_ago):
            violation = ViolationReport(category, now - timedelta(days=days_ago), severity)
            service.report_violation(account, violation, REPORTER)
        case ("abuse", category):
            service.file_abuse_report(account, category, "seen it", None, None, REPORTER)
        case ("triage", i, outcome, severity):
            report_id = pick(list(state.abuse_reports), i)
            service.triage_abuse_report(account, report_id, outcome, severity, OPERATOR)
        case ("dismiss", i):
            vid = pick(list(state.violations), i)
            service.operator(account, ops.DismissViolation(vid, "random"), OPERATOR)
        case ("complete", i):
            rid = pick(list(state.remediations), i)
            service.operator(account, ops.CompleteRemediation(rid, "done"), OPERATOR)
        case ("expire", i):
            service.expire_remediation(account, pick(list(state.remediations), i), OPERATOR)
        case ("end_suspension",):
            current = state.suspension
            sid = current.suspension_id if current is not None else "sus_none"
            service.end_suspension(account, sid, OPERATOR)
        case ("suspend", days, notify):
            until = None if days is None else now + timedelta(days=days)
            service.operator(account, ops.Suspend("random", until, notify), OPERATOR)
        case ("reinstate",):
            service.operator(account, ops.Reinstate("random"), OPERATOR)
        case ("terminate", notify):
            service.operator(account, ops.Terminate("random", notify), OPERATOR)
        case ("throttle", factor, key_id, hours):
            expires = None if hours is None else now + timedelta(hours=hours)
            cmd_ = ops.ApplyThrottle(factor, "random", key_id, expires)
            service.operator(account, cmd_, OPERATOR)
        case ("lift", i):
            tid = pick(list(state.throttles), i)
            service.operator(account, ops.LiftThrottle(tid), OPERATOR)
        case ("adult", approved):
            service.operator(account, ops.SetAdultContentApproval(approved, "random"), OPERATOR)
        case ("limits", key_id, rpm):
            service.operator(account, ops.ConfigureLimits(rpm, rpm * 100, key_id), OPERATOR)
        case ("appeal", i):
            service.file_appeal(account, pick(list(state.decisions), i), "random", OPERATOR)
        case ("decide", i, outcome):
            service.decide_appeal(account, pick(list(state.appeals), i), outcome, "r", OPERATOR)
        case _:  # pragma: no cover - the strategy makes no other command
            raise AssertionError(cmd)


def dismiss_everything(system: Container, account: str) -> None:
    state: StandingState = system.standings.load(account)
    for violation in state.violations.values():
        if not violation.dismissed:
            dismissal = ops.DismissViolation(violation.violation_id, "clean slate")
            system.service.operator(account, dismissal, OPERATOR)


def test_random_use_cases_keep_the_stored_standing_equal_to_the_fold(
    system: Container, clock: FakeClock
) -> None:
    examples = 40 if system.engine.dialect.name == "sqlite" else 12
    # Half of the accounts load from a remembered state (as big accounts do), half from the row.
    remember = st.booleans()

    @settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(st.lists(commands, min_size=5, max_size=30), remember)
    def check(script: list[tuple[Any, ...]], remembered: bool) -> None:
        account = f"acct_h{next(ACCOUNTS)}"
        system.standings.cache_min_version = 0 if remembered else 10**9
        for cmd in script:
            before = system.store.head(account)
            try:
                run(system, clock, account, cmd)
            except DomainError:
                assert system.store.head(account) == before, f"{cmd} failed but wrote"
            row = stored_row(system, account)
            head = system.store.head(account).version
            assert (row[0] if row else 0) == head, "the stored standing lags the log"
        assert_account_consistent(system, account)

        dismiss_everything(system, account)
        standing = system.service.standing(account)
        assert standing.strikes == 0
        assert standing.open_violations == ()
        assert standing.status in ("good_standing", "throttled", "suspended", "terminated")
        assert_account_consistent(system, account)

    check()
