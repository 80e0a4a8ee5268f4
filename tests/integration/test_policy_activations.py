"""The policies the deployment began with (``enforcement.policy_activations``), on SQLite and
PostgreSQL: what a serving process records as it starts, what the database refuses, which one a
standing ``as_of`` an instant counts strikes with, and how an auditor reads them (HTTP, CLI).

POLICY.md: "replaying the log gives the standing that the policy of the day produced". A policy
is in force from the moment it begins, before it acts on an account: a standing as of an instant
after a change, before the account's next event, is the one the new policy decides on.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from api_support import api_system
from sqlalchemy.exc import DBAPIError
from test_service_support import T0, FakeClock
from typer.testing import CliRunner

from enforcement import policy_activations
from enforcement.cli import app
from enforcement.cli_output import console
from enforcement.migrations import upgrade
from enforcement.policy_file import DEFAULT_POLICY
from enforcement.roles import Role
from enforcement.tables import policy_activations as activations_table
from enforcement.workers.leader import LEADER_LOCK_KEY
from events import create_engine

DAY = timedelta(days=1)
SHORT = replace(DEFAULT_POLICY, version="aup-short", strike_lookback=timedelta(days=30))


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    engine = create_engine(database_url)
    yield engine
    engine.dispose()


def test_every_start_is_recorded_in_time_order(engine: sa.Engine) -> None:
    # A lookback with a fraction of a second: no policy file gives one, none to count with.
    odd = replace(SHORT, strike_lookback=timedelta(days=1, microseconds=1))
    assert policy_activations.record(engine, odd, T0) is None
    first = policy_activations.record(engine, DEFAULT_POLICY, T0)
    assert first is not None
    assert (first.policy_version, first.strike_lookback, first.activated_at) == (
        "aup-2026-11",
        "90d",
        T0,
    )
    second = policy_activations.record(engine, SHORT, T0 + 2 * DAY)
    assert second is not None and second.strike_lookback == "30d"
    # The same policy again (a restart, another process): a start all the same, since a process
    # of an older policy may have written events in between.
    # (A clock without a zone reads UTC.)
    again = policy_activations.record(engine, SHORT, (T0 + 3 * DAY).replace(tzinfo=None))
    assert again is not None and again.position > second.position
    # A process whose clock is behind the last row's: recorded a microsecond after it, so that
    # position order and time order agree.
    late_clock = policy_activations.record(engine, DEFAULT_POLICY, T0 + DAY)
    assert late_clock is not None
    assert late_clock.activated_at == T0 + 3 * DAY + timedelta(microseconds=1)

    listed = policy_activations.listed(engine)
    assert [(a.policy_version, a.strike_lookback) for a in listed] == [
        ("aup-2026-11", "90d"),
        ("aup-short", "30d"),
        ("aup-short", "30d"),
        ("aup-2026-11", "90d"),
    ]
    assert [a.activated_at for a in listed] == [
        T0,
        T0 + 2 * DAY,
        T0 + 3 * DAY,
        T0 + 3 * DAY + timedelta(microseconds=1),
    ]
    assert [a.position for a in listed] == sorted({a.position for a in listed})
    assert listed == [first, second, again, late_clock]
    assert listed[1].to_json() == {
        "position": listed[1].position,
        "policy_version": "aup-short",
        "strike_lookback": "30d",
        "activated_at": "2026-11-26T10:00:00.000000Z",
    }
    assert policy_activations.listed(engine, after_position=second.position, limit=1) == [again]


def test_processes_that_start_at_once_are_recorded_one_after_the_other(
    database_url: str, engine: sa.Engine
) -> None:
    policy_activations.record(engine, DEFAULT_POLICY, T0)
    starters = 8
    # An engine each, connected before they start together, as processes' would be.
    engines = [create_engine(database_url) for _ in range(starters)]
    for each in engines:
        each.connect().close()
    barrier = threading.Barrier(starters)
    recorded: list[object] = []

    def start(own: sa.Engine) -> None:
        barrier.wait()
        recorded.append(policy_activations.record(own, SHORT, T0 + DAY))

    threads = [threading.Thread(target=start, args=(each,)) for each in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    for each in engines:
        each.dispose()
    assert len(recorded) == starters  # none refused
    listed = policy_activations.listed(engine)
    # Each after the one before it, in position order: the same clock reading, a microsecond on.
    assert [a.activated_at for a in listed] == [T0] + [
        T0 + DAY + timedelta(microseconds=n) for n in range(starters)
    ]


@pytest.mark.parametrize(
    "database_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
def test_a_start_waiting_for_another_reads_its_row_whatever_the_server_s_isolation(
    database_url: str, engine: sa.Engine
) -> None:
    """Under REPEATABLE READ (a server's default may say so) a transaction's snapshot is taken
    by its first statement, before the lock is granted: the start that waited would not see the
    row the other one committed, and would be dated before it."""
    repeatable = create_engine(database_url, isolation_level="REPEATABLE READ")
    started: list[object] = []
    try:
        with engine.connect() as other, other.begin():
            other.exec_driver_sql(
                f"SELECT pg_advisory_xact_lock({policy_activations.RECORD_LOCK_KEY})"
            )
            later = threading.Thread(
                target=lambda: started.append(policy_activations.record(repeatable, SHORT, T0))
            )
            later.start()
            with engine.connect() as probe:  # until the start waits for the lock
                waiting = (
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                )
                for _ in range(500):
                    if probe.exec_driver_sql(waiting).scalar_one():
                        break
                    threading.Event().wait(0.01)
                else:
                    pytest.fail("the start never waited for the lock")
            other.execute(
                activations_table.insert().values(
                    policy_version="aup-2026-11", strike_lookback="90d", activated_at=T0 + DAY
                )
            )
        later.join(timeout=30)
    finally:
        repeatable.dispose()
    [row] = started
    assert isinstance(row, policy_activations.Activation)
    assert row.activated_at == T0 + DAY + timedelta(microseconds=1)
    assert [a.activated_at for a in policy_activations.listed(engine)] == [
        T0 + DAY,
        T0 + DAY + timedelta(microseconds=1),
    ]


def test_a_start_dated_after_its_own_clock_says_so(
    engine: sa.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    # A host whose clock ran a year ahead recorded a start: every later start is dated after it.
    policy_activations.record(engine, DEFAULT_POLICY, T0 + 365 * DAY)
    caplog.set_level(logging.WARNING, logger="enforcement.policy_activations")
    behind = policy_activations.record(engine, SHORT, T0)
    assert behind is not None
    assert behind.activated_at == T0 + 365 * DAY + timedelta(microseconds=1)
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning == (
        "policy aup-short recorded as in force from 2027-11-24T10:00:00.000001Z, "
        "365 days, 0:00:00.000001 after this process's clock: a start recorded earlier was "
        "dated ahead of it (check the clocks of the hosts)"
    )
    # A microsecond behind is no news: no warning.
    caplog.clear()
    policy_activations.record(engine, SHORT, T0 + 365 * DAY)
    assert [r for r in caplog.records if r.levelno == logging.WARNING] == []


@pytest.mark.parametrize(
    "database_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
def test_a_process_that_starts_while_a_worker_leads_records_its_policy(
    database_url: str, engine: sa.Engine
) -> None:
    """The leading worker holds the leader lock for as long as it lives: recording a policy
    takes a lock of its own, not that one (PostgreSQL's advisory locks)."""
    # Waiting for a lock fails at once instead of hanging.
    starting = create_engine(database_url, connect_args={"options": "-c lock_timeout=2s"})
    try:
        with engine.connect() as holder:
            holder.exec_driver_sql(f"SELECT pg_advisory_lock({LEADER_LOCK_KEY})")
            assert policy_activations.record(starting, DEFAULT_POLICY, T0) is not None
            holder.exec_driver_sql(f"SELECT pg_advisory_unlock({LEADER_LOCK_KEY})")
    finally:
        starting.dispose()


def test_the_policy_in_force_is_the_last_one_begun_by_the_instant(engine: sa.Engine) -> None:
    assert policy_activations.in_force(engine, T0) is None  # nothing recorded
    policy_activations.record(engine, DEFAULT_POLICY, T0)
    policy_activations.record(engine, SHORT, T0 + 2 * DAY)

    assert policy_activations.in_force(engine, T0 - timedelta(microseconds=1)) is None
    at_start = policy_activations.in_force(engine, T0)
    assert at_start is not None
    assert (at_start.at, at_start.policy_version, at_start.strike_lookback) == (
        T0,
        "aup-2026-11",
        timedelta(days=90),
    )
    between = policy_activations.in_force(engine, T0 + 2 * DAY - timedelta(microseconds=1))
    assert between is not None and between.policy_version == "aup-2026-11"
    later = policy_activations.in_force(engine, T0 + 10 * DAY)
    assert later is not None
    assert (later.at, later.strike_lookback) == (T0 + 2 * DAY, timedelta(days=30))
    # A lookback this release does not read (a later one wrote it): none in force.
    with engine.begin() as conn:
        conn.execute(
            activations_table.insert().values(
                policy_version="aup-later", strike_lookback="P30D", activated_at=T0 + 3 * DAY
            )
        )
    assert policy_activations.in_force(engine, T0 + 10 * DAY) is None


def test_the_database_refuses_to_change_remove_or_back_date_a_recorded_policy(
    engine: sa.Engine,
) -> None:
    policy_activations.record(engine, DEFAULT_POLICY, T0)
    statements = [
        "UPDATE policy_activations SET strike_lookback = '1d'",
        "DELETE FROM policy_activations",
    ]
    if engine.dialect.name == "postgresql":
        statements.append("TRUNCATE policy_activations")
    for statement in statements:
        with pytest.raises(DBAPIError) as caught, engine.begin() as conn:
            conn.exec_driver_sql(statement)
        assert "policy activations are append-only" in str(caught.value.orig), statement
    # Nor a row back-dated before the last one, or at its instant: the rows are in time order.
    table = activations_table
    for at in (T0 - DAY, T0):
        with pytest.raises(DBAPIError) as caught, engine.begin() as conn:
            conn.execute(
                table.insert().values(
                    policy_version="forged", strike_lookback="1d", activated_at=at
                )
            )
        assert "policy activations are recorded in time order" in str(caught.value.orig), at
    with engine.begin() as conn:  # a later one is accepted
        conn.execute(
            table.insert().values(
                policy_version="later",
                strike_lookback="1d",
                activated_at=T0 + timedelta(microseconds=1),
            )
        )
    assert [a.policy_version for a in policy_activations.listed(engine)] == ["aup-2026-11", "later"]


def test_a_process_that_starts_before_the_database_answers_records_its_policy_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="enforcement.policy_activations")
    # A database without the schema yet: every try fails, as against one that is down.
    url = f"sqlite:///{tmp_path / 'late.db'}"
    monkeypatch.setattr(policy_activations, "RETRY_SECONDS", (0.05,))
    engine = create_engine(url)
    clock = FakeClock()
    try:
        thread = policy_activations.record_when_possible(engine, SHORT, clock)
        assert thread is not None and thread.is_alive() and thread.daemon
        clock.advance(DAY)
        upgrade(url)
        thread.join(timeout=10)
        assert not thread.is_alive()
        listed = policy_activations.listed(engine)
        assert [(a.policy_version, a.activated_at) for a in listed] == [("aup-short", T0 + DAY)]
        # What the operator reads: the first try's failure, and the record once made.
        messages = [r.getMessage() for r in caplog.records]
        assert messages[0].startswith("policy aup-short not recorded yet, the database said: ")
        assert messages[-1] == (
            "policy aup-short (strike lookback 30d) recorded as in force from"
            " 2026-11-25T10:00:00.000000Z"
        )
        # Once the database answers, at once and with no thread.
        assert policy_activations.record_when_possible(engine, DEFAULT_POLICY, clock) is None
        assert len(policy_activations.listed(engine)) == 2
        # Not waited for (the database did not answer a moment ago): the thread's first try,
        # at once.
        clock.advance(DAY)
        thread = policy_activations.record_when_possible(engine, SHORT, clock, wait=False)
        assert thread is not None
        thread.join(timeout=10)
        assert not thread.is_alive()
        assert policy_activations.listed(engine)[-1].activated_at == T0 + 2 * DAY
    finally:
        engine.dispose()


class CountedWaits(threading.Event):
    """A stop that is never set, whose waits return at once: the tries' schedule, recorded."""

    def __init__(self, tries: int) -> None:
        super().__init__()
        self.tries = tries
        self.waits: list[float | None] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout)
        return len(self.waits) > self.tries  # stopped after that many tries


@pytest.mark.parametrize("wait", [True, False])
def test_the_tries_wait_longer_each_time_up_to_the_longest_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, wait: bool
) -> None:
    monkeypatch.setattr(policy_activations, "RETRY_SECONDS", (1.0, 2.0, 5.0))
    engine = create_engine(f"sqlite:///{tmp_path / 'never.db'}")
    stop = CountedWaits(tries=5)
    clock = FakeClock()
    tries: list[datetime] = []  # a clock reading per try

    def read_clock() -> datetime:
        tries.append(clock())
        return clock()

    try:
        thread = policy_activations.record_when_possible(engine, SHORT, read_clock, stop, wait=wait)
        assert thread is not None
        thread.join(timeout=10)
        assert not thread.is_alive()
    finally:
        engine.dispose()
    # The first try at once (by the caller, or by the thread when not waited for), then one
    # after each wait but the last.
    assert stop.waits == [1.0, 2.0, 5.0, 5.0, 5.0, 5.0]
    assert len(tries) == 6
    # Each failed try in the thread says so.
    still = [r for r in caplog.records if "still not recorded: " in r.getMessage()]
    assert len(still) == (5 if wait else 6)
    assert all(r.levelno == logging.WARNING for r in still)


def test_a_pool_that_ran_dry_is_tried_again_too(
    engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The database answers again while requests hold every pooled connection: SQLAlchemy's
    # TimeoutError, not a DBAPIError. The thread tries again, at once and in the thread.
    monkeypatch.setattr(policy_activations, "RETRY_SECONDS", (0.05,))
    real = policy_activations.record
    calls: list[int] = []

    def record(*args: Any) -> object:
        calls.append(1)
        if len(calls) <= 2:
            raise sa.exc.TimeoutError("QueuePool limit of size 10 overflow 20 reached")
        return real(*args)

    monkeypatch.setattr(policy_activations, "record", record)
    thread = policy_activations.record_when_possible(engine, SHORT, FakeClock())
    assert thread is not None
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert len(calls) == 3
    assert [a.policy_version for a in policy_activations.listed(engine)] == ["aup-short"]


def test_a_stopped_process_stops_trying(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(policy_activations, "RETRY_SECONDS", (0.05,))
    engine = create_engine(f"sqlite:///{tmp_path / 'never.db'}")
    stopped = threading.Event()
    try:
        thread = policy_activations.record_when_possible(engine, SHORT, FakeClock(), stopped)
        assert thread is not None
        stopped.set()
        thread.join(timeout=10)
        assert not thread.is_alive()
    finally:
        engine.dispose()


def test_an_auditor_reads_the_policies_over_http(database_url: str) -> None:
    with api_system(database_url, FakeClock()) as api:
        headers = {role: {"Authorization": f"Bearer {api.tokens[role]}"} for role in Role}
        empty = api.client.get("/v1/policy-activations", headers=headers[Role.AUDITOR])
        assert (empty.status_code, empty.json()) == (
            200,
            {"activations": [], "next_after_position": None},
        )

        policy_activations.record(api.system.engine, api.system.policy, T0)
        for role in (Role.AUDITOR, Role.OPERATOR, Role.ADMIN):
            answer = api.client.get("/v1/policy-activations", headers=headers[role])
            assert answer.status_code == 200, role
            assert [a["strike_lookback"] for a in answer.json()["activations"]] == ["90d"]
            assert answer.json()["activations"][0]["activated_at"] == "2026-11-24T10:00:00.000000Z"

        # Pages, as the events feed's: a full page names the position to read after.
        for day in (1, 2):
            policy_activations.record(api.system.engine, SHORT, T0 + day * DAY)
        auditor = headers[Role.AUDITOR]
        page = api.client.get("/v1/policy-activations?limit=2", headers=auditor).json()
        assert [a["activated_at"][:10] for a in page["activations"]] == ["2026-11-24", "2026-11-25"]
        assert page["next_after_position"] == page["activations"][-1]["position"]
        rest = api.client.get(
            f"/v1/policy-activations?after_position={page['next_after_position']}&limit=2",
            headers=auditor,
        ).json()
        assert [a["activated_at"][:10] for a in rest["activations"]] == ["2026-11-26"]
        assert rest["next_after_position"] is None
        default_page = api.client.get("/v1/policy-activations", headers=auditor).json()
        assert len(default_page["activations"]) == 3
        for bad in ("limit=0", "limit=1001", "after_position=-1"):
            answer = api.client.get(f"/v1/policy-activations?{bad}", headers=auditor)
            assert answer.status_code == 422, bad
        for role in (Role.REPORTER, Role.GATEWAY):
            assert (
                api.client.get("/v1/policy-activations", headers=headers[role]).status_code == 403
            )
        assert api.client.get("/v1/policy-activations").status_code == 401


def test_the_cli_lists_the_policies_as_a_table_and_as_json(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(console, "width", 200)
    runner = CliRunner()

    def run(*args: str) -> Any:
        return runner.invoke(
            app, list(args), env={"ENFORCEMENT_DATABASE_URL": database_url}, catch_exceptions=False
        )

    none = run("policy-activations")
    assert none.exit_code == 0, none.output
    assert "No policy recorded yet" in none.stdout
    assert "policy_version" not in none.stdout  # the sentence alone, no empty table
    assert json.loads(run("policy-activations", "--json").stdout) == {"activations": []}

    engine = create_engine(database_url)
    try:
        policy_activations.record(engine, DEFAULT_POLICY, T0)
        policy_activations.record(engine, SHORT, T0 + DAY)
    finally:
        engine.dispose()
    table = run("policy-activations")
    assert table.exit_code == 0, table.output
    rows = [line for line in table.stdout.splitlines() if "aup-" in line]
    assert len(rows) == 2
    assert all(text in rows[0] for text in ("aup-2026-11", "90d", "2026-11-24T10:00:00.000000Z"))
    assert all(text in rows[1] for text in ("aup-short", "30d", "2026-11-25T10:00:00.000000Z"))
    listed = json.loads(run("policy-activations", "--json").stdout)["activations"]
    assert [(a["policy_version"], a["activated_at"]) for a in listed] == [
        ("aup-2026-11", "2026-11-24T10:00:00.000000Z"),
        ("aup-short", "2026-11-25T10:00:00.000000Z"),
    ]
