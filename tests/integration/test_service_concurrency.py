"""Many threads reporting on ONE account at once, on SQLite and PostgreSQL: every violation is
recorded exactly once and every ladder step is taken exactly once, because each request decides
on the standing at the version it appends to and re-decides when another request got there
first. Threads share one service (one process), or each group of threads has its own service and
engine, as separate processes would: then only the version check keeps them apart."""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from datetime import timedelta
from typing import Any

import pytest
from test_service_support import (
    REPORTER,
    FakeClock,
    assert_account_consistent,
    open_system,
    types_of,
)

from enforcement.bootstrap import Container
from enforcement.policy import ViolationReport
from enforcement.service import Outcome
from events import ConcurrencyError, RecordedEvent

THREADS, REPORTS = 8, 5
ACCOUNT = "acct_contended"


def count_lost_races(system: Container) -> list[int]:
    """Make ``system``'s store note each append that lost to another writer."""
    lost: list[int] = []
    append = system.store.append

    def counting_append(*args: Any, **kwargs: Any) -> list[RecordedEvent]:
        try:
            return append(*args, **kwargs)
        except ConcurrencyError:
            lost.append(1)
            raise

    system.store.append = counting_append  # type: ignore[method-assign]
    return lost


def reporter(system: Container, start: threading.Barrier, thread: int) -> list[Outcome]:
    """One thread's requests, one after the other, all at the same instant of the fake clock."""
    start.wait()
    outcomes = []
    for n in range(REPORTS):
        violation = ViolationReport("spam", system.clock(), description=f"thread {thread} #{n}")
        outcomes.append(system.service.report_violation(ACCOUNT, violation, REPORTER))
    return outcomes


@pytest.mark.parametrize("services", [1, 4], ids=["one-service", "four-services"])
def test_racing_reports_are_each_recorded_once_and_each_ladder_step_is_taken_once(
    system: Container, database_url: str, clock: FakeClock, services: int
) -> None:
    start = threading.Barrier(THREADS)
    with ExitStack() as stack, ThreadPoolExecutor(THREADS) as pool:
        others = [
            stack.enter_context(open_system(database_url, clock)) for _ in range(services - 1)
        ]
        systems = [system, *others]
        for s in systems[1:]:
            s.standings.cache_min_version = 0  # these load from memory + the log's tail
        lost = [count_lost_races(s) for s in systems]
        futures = [pool.submit(reporter, systems[t % services], start, t) for t in range(THREADS)]
        outcomes = [o for f in futures for o in f.result()]
    if services > 1:
        # Separate services do race: some appends were turned away and decided again.
        assert sum(len(n) for n in lost) > 0

    log = assert_account_consistent(system, ACCOUNT)
    reported = [e for e in log if e.type == "ViolationReported"]
    assert len(reported) == THREADS * REPORTS
    assert Counter(e.data["description"] for e in reported) == Counter(
        {f"thread {t} #{n}": 1 for t in range(THREADS) for n in range(REPORTS)}
    )
    # Each request's answer holds its own violation, and no two answers share one.
    answered = [o.events[0].data["violation_id"] for o in outcomes]
    assert sorted(answered) == sorted(e.data["violation_id"] for e in reported)

    # The ladder, each step once and in order, then nothing more after the termination.
    decisions = [e for e in log if e.type != "ViolationReported"]
    assert [(e.type, e.data.get("kind")) for e in decisions] == [
        ("NoticeIssued", "warning"),
        ("RemediationRequested", None),
        ("ThrottleApplied", None),
        ("NoticeIssued", "throttle"),
        ("RemediationRequested", None),
        ("AccountSuspended", None),
        ("NoticeIssued", "suspension"),
        ("AccountTerminated", None),
        ("NoticeIssued", "termination"),
    ]
    assert types_of(log[:14]) == [
        "ViolationReported",
        "NoticeIssued",
        "RemediationRequested",
        "ViolationReported",
        "ThrottleApplied",
        "NoticeIssued",
        "RemediationRequested",
        "ViolationReported",
        "AccountSuspended",
        "NoticeIssued",
        "ViolationReported",
        "AccountTerminated",
        "NoticeIssued",
        "ViolationReported",
    ]
    assert types_of(log[13:]) == ["ViolationReported"] * (THREADS * REPORTS - 4)
    [suspension] = [e for e in decisions if e.type == "AccountSuspended"]
    assert suspension.data["until"] is not None
    assert suspension.data["until"] == (clock() + timedelta(days=30)).strftime(
        "%Y-%m-%dT%H:%M:%S.%fZ"
    )
    # Every decision was caused by the violation reported just before it.
    cause = None
    for event in log:
        if event.type == "ViolationReported":
            cause = event.event_id
        elif event.type != "NoticeIssued":
            assert event.metadata["causation_id"] == cause

    standing = system.service.standing(ACCOUNT)
    assert standing.terminated
    assert standing.strikes == THREADS * REPORTS
