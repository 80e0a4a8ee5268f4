"""The stored standing (``projections.stored.StandingRepository``) on SQLite and PostgreSQL: a
row per account holding the fold's accumulator, saved in the appending transaction, loaded as the
row plus the events after its version."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from test_service_support import (
    OPERATOR,
    REPORTER,
    T0,
    FakeClock,
    assert_account_consistent,
    open_system,
    stored_row,
)

from enforcement import operator_decisions as ops
from enforcement.bootstrap import Container
from enforcement.gate import EmbeddedGate
from enforcement.gatekeeping import GateApplier, seed_gate
from enforcement.policy import ViolationReport
from enforcement.service import Fact
from enforcement.workers.sweep import sweep_once
from events import ConcurrencyError, NewEvent, StreamHead
from events import writing as writing_module
from projections import aup_events as ev
from projections import stored
from projections.standing import StandingState, apply_all
from projections.tables import standing_records, standings


def report(system: Container, account: str, category: str = "spam", **kw: object) -> None:
    violation = ViolationReport(category, system.clock(), **kw)  # type: ignore[arg-type]
    system.service.report_violation(account, violation, REPORTER)


def configured(rpm: int) -> object:
    return ev.CODEC.encode(ev.RateLimitsConfigured(None, rpm, rpm * 10), occurred_at=T0)


def test_an_account_without_events_loads_as_empty_and_has_no_row(system: Container) -> None:
    state = system.standings.load("acct_nobody")

    assert state == StandingState.empty("acct_nobody")
    assert stored_row(system, "acct_nobody") is None
    assert system.service.standing("acct_nobody").to_json()["status"] == "good_standing"


def test_every_command_leaves_the_row_at_the_head_of_the_log(
    system: Container, clock: FakeClock
) -> None:
    report(system, "acct_1")
    assert stored_row(system, "acct_1") is not None
    clock.advance(timedelta(hours=1))
    report(system, "acct_1", description="Überwachung — ünïcödé ✓")
    system.service.operator(
        "acct_1",
        ops.ApplyThrottle(0.3, "x", key_id="k", expires_at=clock() + timedelta(days=1)),
        OPERATOR,
    )

    log = assert_account_consistent(system, "acct_1")
    row = stored_row(system, "acct_1")
    assert row is not None and row[0] == len(log) == system.standings.load("acct_1").version
    # The row resumes to exactly the state it was written from (JSONB keeps it intact).
    resumed = StandingState.from_json(row[1])
    assert resumed == apply_all(StandingState.empty("acct_1"), log)
    assert any(v.description == "Überwachung — ünïcödé ✓" for v in resumed.violations.values())


def test_a_row_behind_the_log_is_completed_by_the_tail_and_caught_up_by_the_next_command(
    system: Container,
) -> None:
    report(system, "acct_lag")
    # Events appended without updating the row (as a writer that skipped it would leave them).
    head = system.store.head("acct_lag").version
    system.store.append("acct_lag", head, [configured(10), configured(20)])
    row = stored_row(system, "acct_lag")
    assert row is not None and row[0] == head

    state = system.standings.load("acct_lag")
    assert state.version == head + 2
    assert state.account_rate_limit is not None
    assert state.account_rate_limit.requests_per_minute == 20
    assert state == apply_all(StandingState.empty("acct_lag"), system.store.read_stream("acct_lag"))

    report(system, "acct_lag")
    assert_account_consistent(system, "acct_lag")


def test_an_older_state_never_replaces_a_newer_row_unless_forced(system: Container) -> None:
    report(system, "acct_o")
    report(system, "acct_o")
    log = system.store.read_stream("acct_o")
    older = apply_all(StandingState.empty("acct_o"), log[:3])
    current = apply_all(StandingState.empty("acct_o"), log)

    with system.engine.begin() as conn:
        system.standings.save(conn, older)
    assert stored_row(system, "acct_o") == (current.version, current.to_json())

    with system.engine.begin() as conn:
        system.standings.save(conn, older, force=True)
    assert stored_row(system, "acct_o") == (older.version, older.to_json())
    # Loading still gives the current state: the tail covers what the row lacks.
    assert system.standings.load("acct_o") == current


def test_the_row_commits_with_the_events_or_not_at_all(system: Container) -> None:
    report(system, "acct_atomic")
    before_row = stored_row(system, "acct_atomic")
    before_head = system.store.head("acct_atomic")
    state = system.standings.load("acct_atomic")
    saver = system.standings.saver(state)

    def failing_saver(conn: sa.Connection, recorded: list) -> None:  # type: ignore[type-arg]
        saver(conn, recorded)
        raise RuntimeError("the read model could not be written")

    with pytest.raises(RuntimeError):
        system.store.append(
            "acct_atomic", state.version, [configured(5)], after_append=failing_saver
        )
    assert system.store.head("acct_atomic") == before_head
    assert stored_row(system, "acct_atomic") == before_row

    # A stale expected version writes neither the events nor the row.
    with pytest.raises(ConcurrencyError):
        system.store.append("acct_atomic", state.version - 1, [configured(6)], after_append=saver)
    assert system.store.head("acct_atomic") == before_head
    assert stored_row(system, "acct_atomic") == before_row
    assert_account_consistent(system, "acct_atomic")


def test_a_row_of_an_older_state_schema_is_not_misread_and_is_rewritten(
    system: Container,
) -> None:
    report(system, "acct_schema")
    report(system, "acct_schema")
    with system.engine.begin() as conn:
        conn.execute(
            standings.update()
            .where(standings.c.account_id == "acct_schema")
            .values(state={"schema": 0, "account_id": "acct_schema", "version": 1})
        )
    log = system.store.read_stream("acct_schema")

    assert system.standings.load("acct_schema") == apply_all(
        StandingState.empty("acct_schema"), log
    )
    third = system.service.report_violation(
        "acct_schema", ViolationReport("spam", system.clock()), REPORTER
    )
    assert third.standing.strikes == 3  # decided on the whole history, not on the broken row
    assert_account_consistent(system, "acct_schema")


def test_an_abuse_report_recorded_before_its_source_reads_and_is_triaged_as_a_user_report(
    system: Container, clock: FakeClock
) -> None:
    """``AbuseReportReceived`` at schema version 1 had no ``source``, nor did its stored record:
    both read as a report received through the API, which triage confirms as a user report."""
    old = {
        "report_id": "rep_old",
        "category": "spam",
        "description": "mails",
        "reporter_contact": None,
        "evidence_ref": None,
    }
    system.store.append("acct_rep", 0, [NewEvent("AbuseReportReceived", old, clock())])
    system.service.operator("acct_rep", ops.ConfigureLimits(60, 1000), OPERATOR)  # a row
    with system.engine.begin() as conn:
        row = conn.execute(
            sa.select(standing_records.c.data).where(standing_records.c.kind == "abuse_reports")
        ).scalar_one()
        assert row["source"] is None
        conn.execute(  # the record as a release before ``source`` stored it
            standing_records.update()
            .where(standing_records.c.kind == "abuse_reports")
            .values(data={k: v for k, v in row.items() if k != "source"})
        )
    log = system.store.read_stream("acct_rep")
    loaded = system.standings.load("acct_rep")
    assert loaded == apply_all(StandingState.empty("acct_rep"), log)
    assert loaded.abuse_reports["rep_old"].source is None

    confirmed = system.service.triage_abuse_report(
        "acct_rep", "rep_old", "confirmed", None, OPERATOR
    )
    reported = confirmed.events[1].data
    assert (reported["source"], reported["detection"]) == ("abuse_report", "user_report")
    assert_account_consistent(system, "acct_rep")


# --- remembered states (big accounts skip their row) ------------------------------------------


def test_a_remembered_state_still_sees_what_other_writers_appended(
    database_url: str, system: Container, clock: FakeClock
) -> None:
    system.standings.cache_min_version = 0  # remember every account, however small
    report(system, "acct_mem")
    with open_system(database_url, clock) as other:  # another process, with its own memory
        report(other, "acct_mem")

    log = system.store.read_stream("acct_mem")
    assert system.standings.load("acct_mem") == apply_all(StandingState.empty("acct_mem"), log)
    third = system.service.report_violation("acct_mem", ViolationReport("spam", clock()), REPORTER)
    assert third.standing.strikes == 3
    assert [e.type for e in third.events][1] == "AccountSuspended"  # the third minor strike
    assert_account_consistent(system, "acct_mem")


def test_a_big_state_read_from_its_rows_is_remembered_for_the_next_read(
    database_url: str, system: Container, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process that only reads a big account (``GET …/standing`` on a 100,000-event account:
    50,000 rows, about a second) read all its rows at every request; the first read keeps it,
    and the next ones see what other writers appended since."""
    with open_system(database_url, clock) as writer:
        writer.standings.cache_min_version = 0
        report(writer, "acct_read")
    reader = system.standings
    reader.cache_min_version = 0
    first = system.service.standing("acct_read")

    def no_row_reads(*args: Any) -> Any:
        raise AssertionError("a remembered state's load read the stored rows")

    with monkeypatch.context() as patched:
        patched.setattr(stored, "read_state_and_head", no_row_reads)
        assert system.service.standing("acct_read") == first
    with open_system(database_url, clock) as writer:
        report(writer, "acct_read")
    with monkeypatch.context() as patched:
        patched.setattr(stored, "read_state_and_head", no_row_reads)
        later = system.service.standing("acct_read")
    assert first.version < later.version == system.store.head("acct_read").version
    assert_account_consistent(system, "acct_read")


def test_a_remembered_state_moves_on_to_the_tail_a_read_found(
    database_url: str, system: Container, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process that only reads a big account that others write to: each read reads the
    events after the remembered state. Were that state never moved on, every read would read
    (and apply) every event written since the first one, ever more of them."""
    reader = system.standings
    reader.cache_min_version = 0
    with open_system(database_url, clock) as writer:
        report(writer, "acct_tail")
        reader.load("acct_tail")  # remembered
        report(writer, "acct_tail")
        reader.load("acct_tail")  # read the writer's events after it
        seen = system.store.head("acct_tail").version
        report(writer, "acct_tail")
    afters: list[int] = []
    read_stream = system.store.read_stream

    def spied(account_id: str, after_version: int = 0, **kw: Any) -> Any:
        afters.append(after_version)
        return read_stream(account_id, after_version, **kw)

    monkeypatch.setattr(system.store, "read_stream", spied)
    loaded = reader.load("acct_tail")
    assert afters == [seen]
    assert loaded == apply_all(StandingState.empty("acct_tail"), read_stream("acct_tail"))


def test_a_write_between_the_load_and_the_append_costs_a_retry(
    database_url: str, system: Container, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A remembered state at the head loads with an empty tail and the remembered hash; should
    another process append right after that read, the append at the stale head is refused, the
    remembered hash forgotten, and the retry decides on the state with the other's event."""
    repo = system.standings
    repo.cache_min_version = 0
    report(system, "acct_race")
    load_with_head = repo.load_with_head
    loads: list[StreamHead | None] = []

    with open_system(database_url, clock) as other:

        def raced_load(account_id: str) -> Any:
            state, head = load_with_head(account_id)
            loads.append(head)
            if len(loads) == 1:  # the log moves on between this load and the append
                report(other, account_id)
            return state, head

        monkeypatch.setattr(repo, "load_with_head", raced_load)
        third = system.service.report_violation(
            "acct_race", ViolationReport("spam", clock()), REPORTER
        )

    log = system.store.read_stream("acct_race")
    first_head = system.store.read_stream("acct_race", limit=3)[-1]
    assert loads[0] == StreamHead(first_head.version, first_head.hash)  # from memory
    assert len(loads) == 2  # refused once, then decided again
    assert [e.type for e in log].count("ViolationReported") == 3
    assert third.standing.strikes == 3  # the retry saw the other process's strike
    assert [e.type for e in third.events][1] == "AccountSuspended"
    assert system.store.verify("acct_race").ok
    assert_account_consistent(system, "acct_race")


def pipelined_appends(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the store's pipelined appends (PostgreSQL, head known): one entry per call."""
    calls: list[int] = []
    write_pipelined = writing_module.write_pipelined

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return write_pipelined(*args, **kwargs)

    monkeypatch.setattr(writing_module, "write_pipelined", counting)
    return calls


def test_a_remembered_state_gives_its_head_without_a_read(
    database_url: str, system: Container, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hash of the last event an append returned is remembered with the state, so a big
    account's load gives its head without reading the rows, and on PostgreSQL the next append
    is pipelined; once another process appended, the tail gives the newer head."""
    repo = system.standings
    repo.cache_min_version = 0
    report(system, "acct_head")
    last = system.store.read_stream("acct_head")[-1]

    def no_row_reads(*args: Any) -> Any:
        raise AssertionError("a remembered state's load read the stored rows")

    with monkeypatch.context() as patched:
        patched.setattr(stored, "read_state_and_head", no_row_reads)
        assert repo.load_with_head("acct_head")[1] == StreamHead(last.version, last.hash)
        pipelined = pipelined_appends(patched)
        report(system, "acct_head")
    postgres = system.engine.dialect.name == "postgresql"
    assert len(pipelined) == (1 if postgres else 0)  # SQLite never pipelines

    with open_system(database_url, clock) as other:
        report(other, "acct_head")
    last = system.store.read_stream("acct_head")[-1]
    state, head = repo.load_with_head("acct_head")
    assert (state.version, head) == (last.version, StreamHead(last.version, last.hash))

    report(system, "acct_head")  # remembered again, at the head, with its hash
    repo.forget_head("acct_head")
    last = system.store.read_stream("acct_head")[-1]
    state, head = repo.load_with_head("acct_head")
    assert head is None and state.version == last.version  # the state itself stays
    assert_account_consistent(system, "acct_head")


def test_facts_recorded_together_remember_each_accounts_head(
    system: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One append to several streams (``record_facts``) remembers every account's state with
    the hash of its own last event: each next load gives that head from memory (no rows read,
    an empty tail), and on PostgreSQL each account's next append is pipelined at it."""
    repo = system.standings
    repo.cache_min_version = 0
    accounts = ["acct_b0", "acct_b1", "acct_b2"]
    for account in accounts:
        report(system, account)
    receipts = [
        Fact(a, ev.NoticeDelivered(f"notice-{a}", a, "webhook", 1), f"cause-{a}", f"key-{a}")
        for a in accounts
    ]
    together = system.service.record_facts(receipts, REPORTER)
    assert [[e.type for e in r] for r in together if isinstance(r, list)] == [
        ["NoticeDelivered"]
    ] * 3

    def no_row_reads(*args: Any) -> Any:
        raise AssertionError("a remembered state's load read the stored rows")

    lasts = [system.store.read_stream(account)[-1] for account in accounts]
    assert [last.type for last in lasts] == ["NoticeDelivered"] * 3
    tails: list[int] = []
    read_stream = system.store.read_stream

    def counted_tail(*args: Any, **kwargs: Any) -> Any:
        tail = read_stream(*args, **kwargs)
        tails.append(len(tail))
        return tail

    with monkeypatch.context() as patched:
        patched.setattr(stored, "read_state_and_head", no_row_reads)
        patched.setattr(system.store, "read_stream", counted_tail)
        for account, last in zip(accounts, lasts, strict=True):
            state, head = repo.load_with_head(account)
            assert (state.version, head) == (last.version, StreamHead(last.version, last.hash))
        assert tails == [0, 0, 0]  # each state was remembered at its head, with its hash
        pipelined = pipelined_appends(patched)
        for account in accounts:
            report(system, account)
    postgres = system.engine.dialect.name == "postgresql"
    assert len(pipelined) == (3 if postgres else 0)  # SQLite never pipelines
    for account in accounts:
        assert system.store.verify(account).ok
        assert_account_consistent(system, account)


def test_a_wrong_remembered_head_costs_a_retry_not_an_error(
    system: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Should a remembered hash ever be wrong, the append at it is refused (PostgreSQL checks
    the head row's hash inside the insert), the hash is forgotten and the retry succeeds
    without it. (SQLite reads every head under its lock: there the append succeeds at once.)"""
    repo = system.standings
    repo.cache_min_version = 0
    report(system, "acct_wrong")
    state = repo.load("acct_wrong")
    repo.forget()
    repo.remember(state, "0" * 64)  # not its head's hash
    assert repo.load_with_head("acct_wrong")[1] == StreamHead(state.version, "0" * 64)
    pipelined = pipelined_appends(monkeypatch)

    report(system, "acct_wrong")

    postgres = system.engine.dialect.name == "postgresql"
    assert len(pipelined) == (1 if postgres else 0)  # the refused attempt; the retry read it
    log = system.store.read_stream("acct_wrong")
    assert len(log) > state.version and system.store.verify("acct_wrong").ok
    assert repo.load_with_head("acct_wrong")[1] == StreamHead(log[-1].version, log[-1].hash)
    assert_account_consistent(system, "acct_wrong")


def test_a_remembered_state_ahead_of_the_log_is_forgotten(system: Container) -> None:
    """A remembered state the log is behind (a database restored under a running process) is
    dropped once an append finds the stream's head below it: the retry reads the rows."""
    repo = system.standings
    repo.cache_min_version = 0
    report(system, "acct_ahead")
    state = repo.load("acct_ahead")
    repo.forget()
    repo.remember(dataclasses.replace(state, version=state.version + 3), "0" * 64)

    report(system, "acct_ahead")

    log = system.store.read_stream("acct_ahead")
    assert len(log) > state.version and system.store.verify("acct_ahead").ok
    assert repo.load("acct_ahead").version == log[-1].version
    assert_account_consistent(system, "acct_ahead")


def test_a_failed_append_leaves_nothing_remembered(system: Container) -> None:
    system.standings.cache_min_version = 0
    report(system, "acct_fail")
    before = system.standings.load("acct_fail")
    saver = system.standings.saver

    def failing(state: StandingState):  # type: ignore[no-untyped-def]
        def after_append(conn: sa.Connection, recorded: list) -> None:  # type: ignore[type-arg]
            saver(state)(conn, recorded)
            raise RuntimeError("disk full")

        return after_append

    system.standings.saver = failing  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        report(system, "acct_fail")
    del system.standings.saver

    assert system.standings.load("acct_fail") == before
    assert_account_consistent(system, "acct_fail")


def test_only_big_states_are_remembered_and_only_a_few(system: Container) -> None:
    repo = system.standings
    repo.cache_size, repo.cache_min_version = 2, 3
    for account in ("acct_m1", "acct_m2", "acct_m3"):
        report(system, account)  # three events each: remembered
    report(system, "acct_small", "sustained_abuse")
    command_events = system.service.operator("acct_m4", ops.ConfigureLimits(1, 1), OPERATOR)
    assert command_events.standing.version == 1  # one event: too small to remember

    assert list(repo._cache) == ["acct_m3", "acct_small"]  # least recently used went first
    for account in ("acct_m1", "acct_m2", "acct_m3", "acct_small", "acct_m4"):
        assert_account_consistent(system, account)


def test_remembered_states_hold_at_most_so_many_events_but_the_last_one_used(
    system: Container,
) -> None:
    """Memory grows with a remembered state's events: the states kept stay within
    ``cache_events`` in all, the least recently used going first, except the last one used,
    which is kept however big (one huge account is still served from memory)."""
    repo = system.standings
    repo.cache_min_version, repo.cache_events = 3, 7
    for account in ("acct_e1", "acct_e2", "acct_e3"):
        report(system, account)  # three events each
    assert list(repo._cache) == ["acct_e2", "acct_e3"]  # 6 events; with acct_e1's, 9

    repo.cache_events = 2  # less than any one state
    report(system, "acct_e4")
    assert list(repo._cache) == ["acct_e4"]
    for account in ("acct_e1", "acct_e2", "acct_e3", "acct_e4"):
        assert_account_consistent(system, account)


# --- only the difference is written -----------------------------------------------------------


def test_an_append_writes_only_the_records_it_changed(
    system: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    account = "acct_big"
    many_keys = [
        ev.CODEC.encode(ev.RateLimitsConfigured(f"key_{i}", 60 + i, 1000), occurred_at=T0)
        for i in range(120)
    ]
    state = system.standings.load(account)
    system.store.append(account, 0, many_keys, after_append=system.standings.saver(state))
    written: list[int] = []
    write_rows = stored._write_rows

    def count_record_rows(conn, whole, deletes, upserts, heads):  # type: ignore[no-untyped-def]
        # A whole rewrite would upsert every record of the account (the 120 limits too).
        written.append(len(deletes) + len(upserts))
        write_rows(conn, whole, deletes, upserts, heads)

    monkeypatch.setattr(stored, "_write_rows", count_record_rows)
    report(system, account)  # ViolationReported + RemediationRequested + NoticeIssued
    monkeypatch.undo()

    # A violation, a remediation and its decision: three records, not the 120 limits again.
    assert sum(written) == 3
    row = stored_row(system, account)
    assert row is not None
    log = system.store.read_stream(account)
    assert row == (len(log), apply_all(StandingState.empty(account), log).to_json())


def test_a_lifted_throttle_leaves_no_record_behind(system: Container, clock: FakeClock) -> None:
    throttle = ops.ApplyThrottle(0.5, "load", expires_at=clock() + timedelta(days=1))
    applied = system.service.operator("acct_lift", throttle, OPERATOR)
    throttle_id = ev.CODEC.decode(applied.events[0]).payload.throttle_id
    system.service.operator("acct_lift", ops.LiftThrottle(throttle_id, "done"), OPERATOR)

    row = stored_row(system, "acct_lift")
    assert row is not None and row[1]["throttles"] == []
    assert_account_consistent(system, "acct_lift")


# --- the gate seeded from the stored standings (reads only the tables it needs) ---------------


def test_a_gate_seeded_from_the_stored_standings_enforces_them(
    system: Container, clock: FakeClock
) -> None:
    service = system.service
    service.operator("acct_lim", ops.ConfigureLimits(2, 1000, key_id="key_1"), OPERATOR)
    report(system, "acct_lim")  # a remediation and a violation the gate does not read
    service.operator("acct_sus", ops.Suspend("abuse"), OPERATOR)
    service.operator("acct_thr", ops.ConfigureLimits(10, 1000, key_id="key_1"), OPERATOR)
    service.operator("acct_thr", ops.ApplyThrottle(0.2, "load", key_id="key_1"), OPERATOR)
    now = clock()
    gate = EmbeddedGate(clock=lambda: now.timestamp())

    assert seed_gate(gate, system.store, now) == 3

    lim = [gate.check("acct_lim", "key_1").allowed for _ in range(3)]
    assert lim == [True, True, False]
    assert gate.check("acct_sus", "key_1").reason == "suspended"
    thr = [gate.check("acct_thr", "key_1").allowed for _ in range(3)]
    assert thr == [True, True, False]  # 10 per minute x 0.2


def _as_an_earlier_release_stored_it(system: Container, account: str) -> None:
    with system.engine.begin() as conn:
        head = conn.execute(
            sa.select(standings.c.state).where(standings.c.account_id == account)
        ).scalar_one()
        older = {**head, "schema": head["schema"] - 1}
        conn.execute(
            standings.update().where(standings.c.account_id == account).values(state=older)
        )
    with system.engine.connect() as conn:
        assert stored.read_states(conn, [account]) == {}  # skipped as of another schema


def test_the_gate_and_the_sweep_see_accounts_whose_rows_an_earlier_release_stored(
    system: Container, clock: FakeClock
) -> None:
    """After an upgrade that changed the state schema, rows are refolded on their next write or
    by ``enforcement replay``; until then the gate's seeding and the deadline sweep fold those
    accounts from their logs rather than skip them (a suspended account must stay refused)."""
    service = system.service
    service.operator("acct_sus", ops.Suspend("abuse"), OPERATOR)
    report(system, "acct_due")  # a remediation due in 7 days
    for account in ("acct_sus", "acct_due"):
        _as_an_earlier_release_stored_it(system, account)
    now = clock()
    gate = EmbeddedGate(clock=lambda: now.timestamp())
    assert seed_gate(gate, system.store, now) == 2
    assert gate.check("acct_sus", "key_1").reason == "suspended"

    clock.advance(timedelta(days=8))
    assert sweep_once(service) == 1
    assert [e.type for e in system.store.read_stream("acct_due")][-3:] == [
        "RemediationExpired",
        "AccountSuspended",
        "NoticeIssued",
    ]


@pytest.mark.parametrize("how", ["operator", "appeal"])
def test_a_lifted_throttle_is_lifted_at_the_gate(
    system: Container, clock: FakeClock, how: str
) -> None:
    """The gate follows each event (``GateApplier``, the ``apply_gate_state`` actor). A lifted
    throttle is no longer in the state, yet the gate must drop it: by an operator's lift or an
    overturned appeal's reversal, whether or not the throttle had an expiry."""
    now = clock()
    gate = EmbeddedGate(clock=lambda: now.timestamp())
    applier = GateApplier(gate, system.store, system.standings, clock)
    service = system.service

    def follow(outcome: Any) -> Any:
        for event in outcome.events:
            applier(event.event_id)
        return outcome

    follow(service.operator("acct_gl", ops.ConfigureLimits(600, 10**6), OPERATOR))
    applied = follow(service.operator("acct_gl", ops.ApplyThrottle(0.25, "load"), OPERATOR))
    assert gate.check("acct_gl", "key_1").limit_requests == 150
    if how == "operator":
        throttle_id = applied.standing.active_throttles[0].throttle_id
        follow(service.operator("acct_gl", ops.LiftThrottle(throttle_id, "done"), OPERATOR))
    else:
        decision = applied.events[0].event_id
        filed = follow(service.file_appeal("acct_gl", decision, "not me", OPERATOR))
        appeal_id = filed.events[0].data["appeal_id"]
        decided = follow(service.decide_appeal("acct_gl", appeal_id, "overturned", "ok", OPERATOR))
        assert "ThrottleLifted" in [e.type for e in decided.events]

    assert service.standing("acct_gl").active_throttles == ()
    assert gate.check("acct_gl", "key_2").limit_requests == 600


def test_the_gate_follows_an_event_that_is_gone_by_doing_nothing(system: Container) -> None:
    """A message for an event the log does not hold (an id not of this log) applies nothing
    and does not fail: a failing actor would be retried for ever."""
    gate = EmbeddedGate()
    applier = GateApplier(gate, system.store, system.standings, system.clock)
    applier(str(uuid.uuid4()))
    applier("not-an-event-id")
    assert not gate.holds_status("acct_1")


def test_seeding_lifts_a_throttle_whose_lift_never_reached_the_gate(
    system: Container, clock: FakeClock
) -> None:
    """A lift whose gate message was lost (or a Redis restored from an older snapshot) leaves
    the throttle at the gate; the state no longer holds it, so seeding lifts what it lacks."""
    now = clock()
    gate = EmbeddedGate(clock=lambda: now.timestamp())
    service = system.service
    service.operator("acct_stale", ops.ConfigureLimits(600, 10**6), OPERATOR)
    applied = service.operator("acct_stale", ops.ApplyThrottle(0.25, "load"), OPERATOR)
    seed_gate(gate, system.store, now)
    assert gate.check("acct_stale", "key_1").limit_requests == 150
    throttle_id = applied.standing.active_throttles[0].throttle_id
    service.operator("acct_stale", ops.LiftThrottle(throttle_id, "done"), OPERATOR)  # not applied

    seed_gate(gate, system.store, now)

    assert gate.check("acct_stale", "key_2").limit_requests == 600
    assert gate.throttle_ids("acct_stale") == set()


def test_load_many_gives_each_accounts_load_with_one_read_of_the_rows(
    system: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An account with current rows, one whose rows are behind the log, one without events, and
    # one remembered (a state of at least cache_min_version events).
    report(system, "acct_rows")
    report(system, "acct_lag")
    head = system.store.head("acct_lag").version
    system.store.append("acct_lag", head, [configured(10)])
    repo = system.standings
    monkeypatch.setattr(repo, "cache_min_version", 1)
    report(system, "acct_kept")
    accounts = ["acct_rows", "acct_lag", "acct_none", "acct_kept"]
    expected = {a: repo.load(a) for a in accounts}
    assert expected["acct_lag"].version == head + 1
    for account in ("acct_rows", "acct_lag"):
        repo.forget(account)  # remembered by the load above

    reads: list[list[str]] = []
    read_many = stored.read_states_and_heads

    def counted(engine: sa.Engine, account_ids: list[str]) -> Any:
        reads.append(list(account_ids))
        return read_many(engine, account_ids)

    monkeypatch.setattr(stored, "read_states_and_heads", counted)
    assert repo.load_many(accounts) == expected
    assert reads == [["acct_rows", "acct_lag", "acct_none"]]  # the remembered one is not read
    # What the one read gives is each account's own read.
    assert read_many(system.engine, accounts) == [
        stored.read_state_and_head(system.engine, a) for a in accounts
    ]
    assert read_many(system.engine, []) == []


def test_fetch_each_errors_come_out_as_sqlalchemys_and_leave_the_pool_usable(
    system: Container,
) -> None:
    from events import dialects

    engine = system.engine
    with pytest.raises(sa.exc.DBAPIError, match="no_such_table"):
        dialects.fetch_each(engine, "SELECT * FROM no_such_table", [(), ()])
    for _ in range(engine.pool.size() + 1):  # every pooled connection, in its usual mode
        assert dialects.fetch_each(engine, "SELECT 1", [(), ()]) == [[(1,)], [(1,)]]
        with engine.begin() as conn:
            assert conn.execute(sa.text("SELECT 1")).scalar() == 1
