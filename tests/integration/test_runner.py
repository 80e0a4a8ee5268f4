"""Rebuilding stored standings from the log (``projections.runner.rebuild_standings``) on SQLite
and PostgreSQL: whatever happened to the rows, a rebuild writes exactly the rows that the inline
updates of the write path wrote."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
import sqlalchemy as sa
from test_service_support import (
    OPERATOR,
    REPORTER,
    FakeClock,
    all_stored_rows,
    assert_account_consistent,
    open_system,
)

from enforcement import operator_decisions as ops
from enforcement.bootstrap import Container
from enforcement.policy import ViolationReport
from projections.runner import rebuild_standings
from projections.standing import StandingState
from projections.stored import replace_range
from projections.tables import standings

ACCOUNTS = [f"acct_{n:02d}" for n in range(9)]
CATEGORIES = ["spam", "phishing", "sustained_abuse", "safety_probing", "csam"]


@pytest.fixture
def system(database_url: str, clock: FakeClock) -> Iterator[Container]:
    with open_system(database_url, clock) as container:
        populate(container, clock)
        yield container


def populate(system: Container, clock: FakeClock) -> None:
    """A few days of varied use cases on a dozen accounts (some with dozens of events)."""
    service = system.service
    expired = 0
    for day in range(5):
        for n, account in enumerate(ACCOUNTS):
            if (n + day) % 3 == 0:
                continue
            category = CATEGORIES[(n * 7 + day) % len(CATEGORIES)]
            if category == "csam" and day < 4:
                category = "spam"
            outcome = service.report_violation(
                account, ViolationReport(category, clock(), description=f"day {day}"), REPORTER
            )
            if n % 4 == 0 and outcome.standing.open_remediations:
                rid = outcome.standing.open_remediations[0].remediation_id
                service.operator(account, ops.CompleteRemediation(rid, "fixed"), OPERATOR)
            if n % 5 == 1 and day == 2:
                vid = outcome.events[0].data["violation_id"]
                service.operator(account, ops.DismissViolation(vid, "false positive"), OPERATOR)
            if n == 3 and day == 1:
                service.operator(account, ops.ConfigureLimits(60, 1000, "key_1"), OPERATOR)
                service.operator(account, ops.SetAdultContentApproval(True, "ok"), OPERATOR)
        # Two days and more apart: the 7-day remediations of the first days fall due.
        clock.advance(timedelta(days=2, hours=3))
        for account in ACCOUNTS:
            for remediation in service.standing(account).overdue_remediations:
                expired += len(
                    service.expire_remediation(account, remediation.remediation_id, OPERATOR).events
                )
    assert expired > 0  # the rebuilds also meet missed remediations and their suspensions


def test_a_rebuild_after_losing_and_corrupting_rows_writes_the_inline_rows_again(
    system: Container,
) -> None:
    inline = all_stored_rows(system)
    assert sorted(inline) == ACCOUNTS
    for account in ACCOUNTS:
        assert_account_consistent(system, account)
    total = sum(len(system.store.read_stream(a)) for a in ACCOUNTS)
    assert max(len(system.store.read_stream(a)) for a in ACCOUNTS) > 10

    with system.engine.begin() as conn:
        conn.execute(standings.delete().where(standings.c.account_id.in_(ACCOUNTS[:4])))
        conn.execute(
            standings.update()
            .where(standings.c.account_id.in_(ACCOUNTS[4:8]))
            .values(version=1, state=StandingState.empty("acct_99").to_json())
        )
        conn.execute(
            standings.update().where(standings.c.account_id == ACCOUNTS[8]).values(version=10_000)
        )
        # A row of no stream (say, left by a restore of the log alone): the rebuild deletes it.
        replace_range(conn, "acct_ghost", "acct_ghost", [StandingState.empty("acct_ghost")])
    assert all_stored_rows(system) != inline

    progress: list[tuple[int, int]] = []
    stats = rebuild_standings(
        system.store, system.standings, page_size=7, progress=lambda d, t: progress.append((d, t))
    )

    assert all_stored_rows(system) == inline
    assert (stats.accounts, stats.events) == (len(ACCOUNTS), total)
    assert progress[-1] == (total, total)
    assert [d for d, _ in progress] == sorted(d for d, _ in progress)
    for account in ACCOUNTS:
        assert_account_consistent(system, account)

    # Rebuilding rows that are already right changes nothing.
    rebuild_standings(system.store, system.standings, page_size=1000)
    assert all_stored_rows(system) == inline


def test_rebuilding_one_account_rewrites_only_its_row(system: Container) -> None:
    inline = all_stored_rows(system)
    with system.engine.begin() as conn:
        conn.execute(standings.delete().where(standings.c.account_id.in_(ACCOUNTS[:2])))

    progress: list[tuple[int, int]] = []
    stats = rebuild_standings(
        system.store,
        system.standings,
        account=ACCOUNTS[1],
        page_size=5,
        progress=lambda d, t: progress.append((d, t)),
    )

    rows = all_stored_rows(system)
    assert ACCOUNTS[0] not in rows
    assert rows[ACCOUNTS[1]] == inline[ACCOUNTS[1]]
    assert stats.accounts == 1
    assert stats.events == len(system.store.read_stream(ACCOUNTS[1]))
    assert progress == [(stats.events, stats.events)]
    nobody = rebuild_standings(system.store, system.standings, account="acct_nobody")
    assert (nobody.accounts, nobody.events) == (0, 0)
    # The write path also repairs a missing row: the load folds the whole stream.
    with system.engine.connect() as conn:
        count = conn.execute(sa.select(sa.func.count()).select_from(standings)).scalar_one()
    assert count == len(ACCOUNTS) - 1
    system.service.operator(ACCOUNTS[0], ops.ConfigureLimits(1, 1), OPERATOR)
    assert_account_consistent(system, ACCOUNTS[0])


def test_a_rebuild_of_an_empty_log_writes_nothing(database_url: str, clock: FakeClock) -> None:
    with open_system(database_url, clock) as system:
        stats = rebuild_standings(system.store, system.standings)
        assert (stats.accounts, stats.events) == (0, 0)
        assert all_stored_rows(system) == {}
        with system.engine.connect() as conn:  # the first event to come is still to apply
            assert system.store.get_checkpoint(conn, "standings") == 0
