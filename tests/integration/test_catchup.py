"""The catch-up runner and the standings projection on a real database (SQLite and PostgreSQL).

What must hold: a rebuild writes exactly the rows the write path keeps inline; a crash at any
point loses nothing and applies nothing twice (the checkpoint commits with the rows), so resuming
gives the rows of an uninterrupted run; the checkpoint never claims an event whose row does not
reflect it; concurrent appenders and runners never make a projection skip or repeat an event.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import pytest
import sqlalchemy as sa
from aup_population import (
    populate,
    system_fixture,
    template_fixture,
)
from locks import waiting_on_a_lock
from sqlalchemy.engine import Connection
from test_service_support import T0, all_stored_rows
from test_store_gaps import wait_until, waiting_on_advisory_lock

from enforcement.bootstrap import Container
from enforcement.migrations import upgrade
from events import EventStore, NewEvent, RecordedEvent, create_engine
from projections import aup_events as ev
from projections import runner
from projections.catchup import CatchUpRunner, CatchUpStats, Progress
from projections.runner import StandingsProjection, rebuild_standings
from projections.standing import StandingState, apply_all
from projections.stored import StandingRepository, replace_range
from projections.tables import standings

Rows = dict[str, tuple[int, dict[str, Any]]]


class Crash(Exception):
    """Stands for the process dying mid-run."""


template = template_fixture(
    "catchup", lambda system, clock: populate(system, clock, accounts=9, steps=6)
)
system = system_fixture()


def folded_rows(system: Container) -> Rows:
    """Every account's row as the fold of its whole log computes it."""
    rows: Rows = {}
    for account in system.store.account_ids():
        state = apply_all(StandingState.empty(account), system.store.read_stream(account))
        rows[account] = (state.version, state.to_json())
    return rows


def head(system: Container) -> int:
    return system.store.max_position()


def runner_for(system: Container, **kw: int) -> CatchUpRunner:
    return CatchUpRunner(system.store, StandingsProjection(system.standings), **kw)


def assert_checkpoint_honest(system: Container, checkpoint: int) -> None:
    """Every event at or below the checkpoint is reflected by a row that is a true fold."""
    rows = all_stored_rows(system)
    for account in system.store.account_ids():
        log = system.store.read_stream(account)
        needed = max((e.version for e in log if e.position <= checkpoint), default=0)
        if needed == 0:
            continue
        assert account in rows, f"{account}: events up to v{needed} claimed, no row"
        version, state = rows[account]
        assert version >= needed, f"{account}: checkpoint {checkpoint} passed v{version + 1}"
        assert state == apply_all(StandingState.empty(account), log[:version]).to_json()


def damage(system: Container) -> None:
    """Rows a rebuild must repair: one deleted, one stale, one of an older state schema."""
    accounts = sorted(all_stored_rows(system))
    with system.engine.begin() as conn:
        conn.execute(standings.delete().where(standings.c.account_id == accounts[0]))
        conn.execute(
            standings.update()
            .where(standings.c.account_id == accounts[1])
            .values(state={**StandingState.empty(accounts[1]).to_json(), "version": 99}, version=99)
        )
        conn.execute(
            standings.update()
            .where(standings.c.account_id == accounts[2])
            .values(state={"schema": 0, "account_id": accounts[2]})
        )


def append_without_projection(system: Container, account: str, *payloads: Any) -> None:
    """Events recorded by a writer that does not update the stored standing."""
    events = [
        ev.CODEC.encode(p, occurred_at=system.clock(), metadata={"actor": "test"}) for p in payloads
    ]
    system.store.append(account, None, events)


def at_call(n: int, action: Callable[[], None]) -> Progress:
    """A progress callback that does ``action`` at its ``n``-th call (the first is the start)."""
    calls = 0

    def progress(done: int, total: int) -> None:
        nonlocal calls
        calls += 1
        if calls == n:
            action()

    return progress


# --------------------------------------------------------------------------- rebuild


def test_a_rebuild_writes_exactly_the_inline_rows(system: Container) -> None:
    inline = all_stored_rows(system)
    assert inline == folded_rows(system)
    damage(system)

    stats = rebuild_standings(system.store, system.standings, page_size=7)

    assert all_stored_rows(system) == inline
    assert stats.accounts == len(inline)
    assert stats.events == head(system)
    assert runner_for(system).checkpoint() == head(system)


def test_a_rebuild_finds_streams_of_one_event_whatever_their_ids(system: Container) -> None:
    """A pass finds the streams by their first event, from the first id (digits and capitals
    sort before the populated ``acct_...``)."""
    for account in ("0_first", "ACCT_1"):
        append_without_projection(system, account, ev.AdultContentApprovalChanged(True, "ok"))

    stats = rebuild_standings(system.store, system.standings)

    assert all_stored_rows(system) == folded_rows(system)
    assert stats.accounts == len(folded_rows(system))


def test_rebuilding_one_account_rewrites_only_its_row(system: Container) -> None:
    inline = all_stored_rows(system)
    damage(system)
    target = sorted(inline)[1]

    stats = rebuild_standings(system.store, system.standings, account=target)

    rows = all_stored_rows(system)
    assert rows[target] == inline[target]
    assert stats.events == inline[target][0] and stats.accounts == 1
    assert rows[sorted(inline)[2]] != inline[sorted(inline)[2]]  # the others are left alone


def test_events_appended_during_a_rebuild_are_caught_up(system: Container) -> None:
    accounts = sorted(all_stored_rows(system))
    appended = []

    progress_seen: list[tuple[int, int]] = []

    def progress(done: int, total: int) -> None:
        progress_seen.append((done, total))
        if len(appended) < 3:  # a writer that does not maintain the standings, mid-rebuild
            account = accounts[len(appended) * 3]
            append_without_projection(system, account, ev.AdultContentApprovalChanged(True, "ok"))
            appended.append(account)

    stats = runner_for(system, streams_per_batch=2).rebuild(progress)

    assert all_stored_rows(system) == folded_rows(system)
    assert runner_for(system).checkpoint() == head(system)
    # The pass rebuilt every stream; the page after it applied the appended events, which the
    # progress counts beyond the total it began with.
    assert (stats.events, stats.streams) == (head(system), len(accounts))
    assert progress_seen[-1] == (head(system), head(system))


# --------------------------------------------------------------------------- crashes


def test_a_crash_during_a_rebuild_resumes_to_the_same_rows(system: Container) -> None:
    inline = all_stored_rows(system)
    damage(system)
    steps = 0

    def crash_on_third_step(done: int, total: int) -> None:
        nonlocal steps
        assert_checkpoint_honest(system, runner_for(system).checkpoint())
        steps += 1
        if steps == 3:
            raise Crash

    with pytest.raises(Crash):
        runner_for(system, streams_per_batch=2).rebuild(crash_on_third_step)
    assert runner_for(system).checkpoint() == 0  # the pass is unfinished: nothing is claimed
    assert_checkpoint_honest(system, 0)

    resumed = runner_for(system, streams_per_batch=2).run()

    assert all_stored_rows(system) == inline
    assert resumed.checkpoint == head(system)
    assert resumed.streams == len(inline) - 2 * 2  # two batches of two were already rebuilt


def test_a_rebuild_after_an_interrupted_one_starts_again_from_the_first_stream(
    system: Container,
) -> None:
    inline = all_stored_rows(system)

    def crash() -> None:
        raise Crash

    with pytest.raises(Crash):  # after the start and two batches of two streams
        runner_for(system, streams_per_batch=2).rebuild(at_call(3, crash))
    damage(system)  # the rows of streams that the interrupted pass had already rebuilt

    stats = runner_for(system, streams_per_batch=2).rebuild()

    assert all_stored_rows(system) == inline
    assert stats.streams == len(inline)


@pytest.mark.parametrize("collecting", [True, False])
def test_a_fold_leaves_the_cycle_collector_as_it_found_it(
    system: Container, monkeypatch: pytest.MonkeyPatch, collecting: bool
) -> None:
    """A batch is folded with the cycle collector paused (``runner._cycles_uncollected``), which
    runs again after it, even when a stream's fold fails; one its caller had paused stays so."""
    folded = 0

    def fold_new(account_id: str, events: Sequence[Any]) -> StandingState:
        nonlocal folded
        assert not gc.isenabled()
        folded += 1
        if folded == 3:
            raise Crash
        return apply_all(StandingState.empty(account_id), events)

    monkeypatch.setattr(runner, "fold_new", fold_new)
    (gc.enable if collecting else gc.disable)()
    try:
        with pytest.raises(Crash):
            rebuild_standings(system.store, system.standings)
        assert gc.isenabled() is collecting
    finally:
        gc.enable()
    assert folded == 3


def test_a_crash_inside_a_page_rolls_the_page_back(
    system: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    caught_up = runner_for(system, page_size=4).run()
    assert caught_up.checkpoint == head(system)
    for i, account in enumerate(sorted(all_stored_rows(system))):
        notice = ev.NoticeDelivered(f"ntc_{i}", f"evt_{i}", "email", 2)
        lift = ev.AdultContentApprovalChanged(i % 2 == 0, "review")
        append_without_projection(system, account, notice, lift)
    before = all_stored_rows(system)
    saved_pages = 0
    real_save = runner.write_states

    def save_then_die_on_third_page(
        conn: Connection, changes: Sequence[Any], *, force: bool
    ) -> None:
        nonlocal saved_pages
        real_save(conn, changes, force=force)  # the writes happen, then the process dies
        if not force:
            saved_pages += 1
            if saved_pages == 3:
                raise Crash

    monkeypatch.setattr(runner, "write_states", save_then_die_on_third_page)
    with pytest.raises(Crash):
        runner_for(system, page_size=4).run()
    monkeypatch.undo()

    checkpoint = runner_for(system).checkpoint()
    assert checkpoint == caught_up.checkpoint + 2 * 4  # two pages committed, the third rolled back
    assert_checkpoint_honest(system, checkpoint)
    after_crash = all_stored_rows(system)
    assert sum(after_crash[a] != before[a] for a in before) == 4  # 2 pages x 2 accounts

    resumed = runner_for(system, page_size=4).run()
    assert resumed.events == head(system) - checkpoint
    assert all_stored_rows(system) == folded_rows(system)


# --------------------------------------------------------------------------- catch-up


def test_catch_up_applies_what_the_write_path_did_not(
    system: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert runner_for(system).pending() == head(system)
    first = runner_for(system, page_size=5).run()  # rows are current: nothing changes
    assert first.checkpoint == head(system) and all_stored_rows(system) == folded_rows(system)
    account = sorted(all_stored_rows(system))[0]
    append_without_projection(system, account, ev.AdultContentApprovalChanged(True, "approved"))
    assert all_stored_rows(system) != folded_rows(system)
    assert runner_for(system).pending() == 1

    reads: list[str] = []
    real = EventStore.read_stream
    monkeypatch.setattr(
        EventStore, "read_stream", lambda self, a, **kw: reads.append(a) or real(self, a, **kw)
    )
    second = runner_for(system, page_size=5).run()
    monkeypatch.undo()

    assert second.events == 1
    assert reads == []  # the page is applied to the stored row, which it trusts
    assert all_stored_rows(system) == folded_rows(system)
    assert runner_for(system, page_size=5).run().events == 0


def test_a_missing_or_stale_row_is_recomputed_from_the_log(system: Container) -> None:
    stale = sorted(all_stored_rows(system))[1]
    for account in ("acct_short", stale):
        append_without_projection(system, account, ev.AdultContentApprovalChanged(True, "ok"))
    runner_for(system).run()
    # Two rows lost: one of a long stream, one whose next event is its stream's second; and
    # one a version behind (it misses the approval).
    lost = [sorted(all_stored_rows(system))[0], "acct_short"]
    behind = apply_all(StandingState.empty(stale), system.store.read_stream(stale)[:-1])
    with system.engine.begin() as conn:
        conn.execute(standings.delete().where(standings.c.account_id.in_(lost)))
        replace_range(conn, stale, stale, [behind])
    for account in [*lost, stale]:  # an event that leaves the approval as it was
        append_without_projection(system, account, ev.NoticeDelivered("ntc_1", "evt_1", "email", 2))

    runner_for(system).run()

    assert all_stored_rows(system) == folded_rows(system)


def test_a_projection_gets_its_checkpoint_beside_another_ones(system: Container) -> None:
    ledger = PositionLedger()
    ledger.table.create(system.engine)
    assert runner_for(system).run().checkpoint == head(system)

    assert CatchUpRunner(system.store, ledger).run().checkpoint == head(system)


# --------------------------------------------------------------------------- exactly once


class PositionLedger:
    """A projection that inserts each event's position once: a repeat violates the key."""

    name = "test_ledger"
    table = sa.Table(
        "test_ledger", sa.MetaData(), sa.Column("position", sa.BigInteger, primary_key=True)
    )

    def apply(self, conn: Connection, page: Sequence[RecordedEvent]) -> None:
        conn.execute(self.table.insert(), [{"position": e.position} for e in page])

    def reset(self, conn: Connection) -> None:
        conn.execute(self.table.delete())


def test_concurrent_appends_and_runners_apply_every_event_exactly_once(system: Container) -> None:
    clock = system.clock
    ledger = PositionLedger()
    ledger.table.create(system.engine)
    appenders_done = threading.Event()
    errors: list[BaseException] = []

    def append(worker: int) -> None:
        try:
            for i in range(15):
                event = NewEvent("Noted", {"worker": worker, "i": i}, clock())
                system.store.append(f"acct_conc_{worker}_{i % 3}", None, [event])
        except BaseException as exc:
            errors.append(exc)

    def follow() -> None:
        try:
            follower = CatchUpRunner(system.store, ledger, page_size=3)
            while not appenders_done.is_set():
                follower.step()
            follower.run()
        except BaseException as exc:
            errors.append(exc)

    appenders = [threading.Thread(target=append, args=(w,)) for w in range(3)]
    followers = [threading.Thread(target=follow) for _ in range(2)]
    for thread in followers + appenders:
        thread.start()
    for thread in appenders:
        thread.join()
    appenders_done.set()
    for thread in followers:
        thread.join()

    assert errors == []
    with system.engine.connect() as conn:
        applied = sorted(conn.execute(sa.select(ledger.table.c.position)).scalars())
    assert applied == list(range(1, head(system) + 1))

    # A plain projection: reset and replay, in this process whatever the jobs.
    rebuilt = CatchUpRunner(system.store, ledger, jobs=2, parallel_min_events=0).rebuild()
    assert rebuilt.events == head(system) and rebuilt.checkpoint == head(system)


@pytest.mark.postgres
def test_an_append_in_flight_is_never_passed_over(pg_url: str) -> None:
    """PostgreSQL: while A holds its inserted but uncommitted event, B (which would take the next
    position and commit first without the append lock) waits, and the runner does not move.

    B appends through a store of its own, as another process would: appends of one store's
    threads queue in-process behind A and never reach the lock, so they could not show it."""
    upgrade(pg_url)
    engine = create_engine(pg_url)
    store = EventStore(engine)
    other_process = EventStore(engine)
    ledger = PositionLedger()
    ledger.table.create(engine)
    store.append("acct_x", None, [NewEvent("Noted", {}, T0)])
    runner = CatchUpRunner(store, ledger)
    assert runner.run().checkpoint == 1
    assert runner.pending() == 0
    inserted, release = threading.Event(), threading.Event()

    def hold(conn: Connection, recorded: list[RecordedEvent]) -> None:
        inserted.set()
        release.wait(10)

    a = threading.Thread(
        target=lambda: store.append("acct_a", None, [NewEvent("Noted", {}, T0)], after_append=hold)
    )
    b_done = threading.Event()

    def append_b() -> None:
        other_process.append("acct_b", None, [NewEvent("Noted", {}, T0)])
        b_done.set()

    b = threading.Thread(target=append_b)
    try:
        a.start()
        assert inserted.wait(10)
        b.start()
        # B waits for the append lock (or, without it, commits past A's open position).
        wait_until(
            lambda: b_done.is_set() or waiting_on_advisory_lock(engine), "B commits or waits"
        )

        assert not b_done.is_set()
        assert runner.step() is None
        assert runner.checkpoint() == 1
    finally:
        release.set()
        a.join(10)
        b.join(10)

    assert runner.run().events == 2
    with engine.connect() as conn:
        applied = sorted(conn.execute(sa.select(ledger.table.c.position)).scalars())
    a_position = store.read_stream("acct_a")[0].position
    assert applied == [1, 2, 3] and a_position == 2
    engine.dispose()


@pytest.mark.postgres
def test_a_rebuild_waits_for_a_page_in_flight(pg_url: str) -> None:
    """PostgreSQL: a rebuild that reset the projection while another runner's page was applied
    but uncommitted (invisible to its delete) would then set the checkpoint to 0 over that page's
    rows and apply them again; it waits for the page on the checkpoint row's lock instead."""
    upgrade(pg_url)
    engine = create_engine(pg_url)
    store = EventStore(engine)
    PositionLedger.table.create(engine)
    store.append("acct_x", None, [NewEvent("Noted", {}, T0), NewEvent("Noted", {}, T0)])
    applied, release = threading.Event(), threading.Event()

    class HeldLedger(PositionLedger):
        def apply(self, conn: Connection, page: Sequence[RecordedEvent]) -> None:
            super().apply(conn, page)
            applied.set()
            release.wait(10)

    stepping = threading.Thread(target=CatchUpRunner(store, HeldLedger(), page_size=1).step)
    rebuilt: list[Any] = []
    rebuilding = threading.Thread(
        target=lambda: rebuilt.append(CatchUpRunner(store, PositionLedger()).rebuild())
    )
    try:
        stepping.start()
        assert applied.wait(10)
        rebuilding.start()
        wait_until(lambda: waiting_on_a_lock(engine), "the rebuild waits")
    finally:
        release.set()
        stepping.join(10)
        rebuilding.join(10)

    with engine.connect() as conn:
        applied_positions = sorted(conn.execute(sa.select(PositionLedger.table.c.position)))
    assert [p for (p,) in applied_positions] == [1, 2] and rebuilt[0].checkpoint == 2
    engine.dispose()


@pytest.mark.parametrize("size", ["page_size", "streams_per_batch", "jobs"])
def test_a_runner_needs_sizes_of_at_least_one(size: str) -> None:
    store = cast(EventStore, None)  # not read until the runner runs
    CatchUpRunner(store, PositionLedger(), **{size: 1})
    with pytest.raises(ValueError, match="must be at least 1"):
        CatchUpRunner(store, PositionLedger(), **{size: 0})


def test_pending_counts_the_events_after_the_checkpoint_and_a_run_times_itself(
    system: Container,
) -> None:
    ledger = PositionLedger()
    ledger.table.create(system.engine)
    follower = CatchUpRunner(system.store, ledger, page_size=1)
    assert follower.pending() == head(system)

    started = time.perf_counter()
    step = follower.step()
    step_took = time.perf_counter() - started

    assert (follower.checkpoint(), follower.pending()) == (1, head(system) - 1)
    started = time.perf_counter()
    run = follower.run()
    run_took = time.perf_counter() - started
    # What the CLI reports as the time a replay took.
    assert step is not None and 0 <= step.seconds <= step_took
    assert 0 <= run.seconds <= run_took and run.events == head(system) - 1


def test_a_rebuild_of_an_empty_log_passes_over_nothing(tmp_path: Path) -> None:
    """Its checkpoint stays 0, so the first event appended after it is caught up."""
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    upgrade(url)
    store = EventStore(create_engine(url))
    empty = CatchUpRunner(store, StandingsProjection(StandingRepository(store)))
    assert empty.run().checkpoint == 0
    assert empty.rebuild().checkpoint == 0

    approval = ev.CODEC.encode(ev.AdultContentApprovalChanged(True, "ok"), occurred_at=T0)
    store.append("acct_1", None, [approval])

    assert (empty.run().events, empty.checkpoint()) == (1, 1)
    store.engine.dispose()


def test_events_per_second_is_zero_for_a_run_that_took_no_time() -> None:
    assert CatchUpStats(10, 0, 10, 4.0).events_per_second == 2.5
    assert CatchUpStats(1, 0, 1, 0.5).events_per_second == 2.0
    assert CatchUpStats(10, 0, 10, 0.0).events_per_second == 0.0


# --------------------------------------------------------------------------- parallel rebuild


def count_parallel_folds(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Record each range the pass hands to a worker process (only a parallel pass does)."""
    ranges: list[tuple[str, str]] = []
    real = StandingsProjection.fold_job

    def fold_job(self: StandingsProjection, first: str, last: str, up_to: int) -> Any:
        ranges.append((first, last))
        return real(self, first, last, up_to)

    monkeypatch.setattr(StandingsProjection, "fold_job", fold_job)
    return ranges


def test_a_parallel_pass_overtaken_by_another_rebuild_writes_nothing(
    system: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another runner rebuilds from zero (a new horizon, the cursor back at 0) while the parallel
    pass folds: the batches it folded up to the old horizon are never written."""
    real = StandingsProjection.fold_job
    overtaken: list[str] = []

    def fold_job(self: StandingsProjection, first: str, last: str, up_to: int) -> Any:
        if not overtaken:
            overtaken.append(first)
            append_without_projection(system, first, ev.AdultContentApprovalChanged(True, "ok"))
            runner_for(system).rebuild()  # in this process: no fold job
        return real(self, first, last, up_to)

    monkeypatch.setattr(StandingsProjection, "fold_job", fold_job)
    stats = runner_for(system, streams_per_batch=2, jobs=2, parallel_min_events=0).rebuild()

    assert overtaken and all_stored_rows(system) == folded_rows(system)
    assert stats.checkpoint == head(system)


@pytest.mark.parametrize(
    "template", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
def test_a_parallel_pass_waits_for_a_rebuild_in_flight_before_it_writes(
    system: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL: another runner's rebuild (a new horizon, the cursor back at 0) uncommitted
    when the parallel pass checks its first batch would let it write that batch, folded up to
    the old horizon, and move the new pass's cursor past it; it waits on the checkpoint row's
    lock instead, then sees the new pass and writes nothing."""
    name = StandingsProjection(system.standings).name
    reset, held, rebuilt = threading.Event(), threading.Thread(), list[object]()

    class HeldStore(EventStore):
        def set_checkpoint(self, conn: Connection, checkpoint: str, position: int) -> None:
            super().set_checkpoint(conn, checkpoint, position)
            if checkpoint == name:  # the rebuild's last write, its transaction still open
                reset.set()
                wait_until(lambda: waiting_on_a_lock(self.engine), "the pass's write waits")

    other = CatchUpRunner(HeldStore(system.engine), StandingsProjection(system.standings))
    monkeypatch.setattr(other, "run", lambda progress=None: None)  # the new pass is left to us
    real = StandingsProjection.fold_job

    def fold_job(self: StandingsProjection, first: str, last: str, up_to: int) -> Any:
        nonlocal held
        if not held.is_alive() and not reset.is_set():
            append_without_projection(system, first, ev.AdultContentApprovalChanged(True, "ok"))
            held = threading.Thread(target=lambda: rebuilt.append(other.rebuild()))
            held.start()
            assert reset.wait(10)
        return real(self, first, last, up_to)

    monkeypatch.setattr(StandingsProjection, "fold_job", fold_job)
    try:
        stats = runner_for(system, streams_per_batch=2, jobs=2, parallel_min_events=0).rebuild()
    finally:
        held.join(10)

    assert rebuilt == [None]  # the other runner's reset committed
    assert all_stored_rows(system) == folded_rows(system)
    assert stats.checkpoint == head(system)


def count_folds_in_process(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Record each range a runner folds in its own process (``step``)."""
    ranges: list[tuple[str, str]] = []
    real = StandingsProjection.rebuild_streams

    def rebuild_streams(
        self: StandingsProjection, conn: Connection, first: str, last: str, up_to: int
    ) -> int:
        ranges.append((first, last))
        return real(self, conn, first, last, up_to)

    monkeypatch.setattr(StandingsProjection, "rebuild_streams", rebuild_streams)
    return ranges


@pytest.mark.parametrize("jobs", [1, 2])
def test_one_job_or_a_pass_below_parallel_min_events_folds_in_this_process(
    system: Container, monkeypatch: pytest.MonkeyPatch, jobs: int
) -> None:
    ranges = count_parallel_folds(monkeypatch)
    min_events = 0 if jobs == 1 else head(system) + 1  # one job: whatever the pass

    runner_for(system, jobs=jobs, parallel_min_events=min_events).rebuild()

    assert ranges == []
    assert all_stored_rows(system) == folded_rows(system)


@pytest.mark.parametrize("moved_after", [1, 6])
def test_a_parallel_pass_stops_where_another_runner_moved_it(
    system: Container, monkeypatch: pytest.MonkeyPatch, moved_after: int
) -> None:
    """Another runner's step between two writes of a parallel pass (one batch a stream: the
    first writes come while batches are still being queued, the last ones after): the parallel
    pass stops and leaves the rest to ``step``, which finishes it."""
    inline = all_stored_rows(system)
    damage(system)
    in_process = count_folds_in_process(monkeypatch)

    def another_runner_steps() -> None:
        assert runner_for(system, streams_per_batch=1).step() is not None

    # After the start and ``moved_after`` batches.
    stats = runner_for(system, streams_per_batch=1, jobs=2, parallel_min_events=0).rebuild(
        at_call(1 + moved_after, another_runner_steps)
    )

    assert all_stored_rows(system) == inline
    assert stats.checkpoint == head(system)
    # The parallel pass wrote ``moved_after`` batches; the other runner's step and ours the rest.
    assert len(in_process) == len(inline) - moved_after


def test_a_rebuild_folded_in_worker_processes_writes_exactly_the_inline_rows(
    system: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    inline = all_stored_rows(system)
    damage(system)
    ranges = count_parallel_folds(monkeypatch)
    in_process = count_folds_in_process(monkeypatch)

    # A pass of exactly ``parallel_min_events`` is folded in processes; 9 streams, 3 batches.
    progress: list[tuple[int, int]] = []
    stats = runner_for(
        system, streams_per_batch=3, jobs=2, parallel_min_events=head(system)
    ).rebuild(lambda done, total: progress.append((done, total)))

    assert len(ranges) == len(inline) // 3  # every batch was folded by a worker
    assert {total for _, total in progress} == {head(system)}
    assert in_process == []  # and written by the parallel pass, none left to ``step``
    assert all_stored_rows(system) == inline
    assert (stats.streams, stats.events, stats.checkpoint) == (
        len(inline),
        head(system),
        head(system),
    )


def test_a_crash_during_a_parallel_rebuild_resumes_to_the_same_rows(
    system: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    inline = all_stored_rows(system)
    damage(system)
    ranges = count_parallel_folds(monkeypatch)
    batches = 0

    def crash_on_second_batch(done: int, total: int) -> None:
        nonlocal batches
        assert_checkpoint_honest(system, runner_for(system).checkpoint())
        if done:
            batches += 1
            if batches == 2:
                raise Crash

    with pytest.raises(Crash):
        runner_for(system, streams_per_batch=2, jobs=2, parallel_min_events=0).rebuild(
            crash_on_second_batch
        )
    assert ranges and runner_for(system).checkpoint() == 0  # unfinished: nothing claimed

    resumed = runner_for(system, streams_per_batch=2).run()  # a sequential runner finishes it

    assert all_stored_rows(system) == inline
    assert resumed.checkpoint == head(system)
    assert resumed.streams == len(inline) - 2 * 2  # the two batches written before the crash


ORPHANED_POOL = """
import sys, time
from projections.catchup import fold_pool

if __name__ == "__main__":
    pool = fold_pool(2)
    for _ in range(2):
        pool.submit(time.sleep, 120)  # a long fold each
    while len(pool._processes) < 2:
        time.sleep(0.05)
    print(*pool._processes, flush=True)
    time.sleep(120)
"""


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie no reaper collected has ended)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_fold_processes_end_soon_after_their_parent_is_killed(tmp_path: Any) -> None:
    """``replay --jobs N`` killed outright (SIGKILL, OOM) used to leave its fold processes
    folding on, holding the database open, for as long as their work lasted."""
    script = tmp_path / "orphaned_pool.py"
    script.write_text(ORPHANED_POOL, encoding="utf-8")
    root = str(Path(__file__).resolve().parents[2])
    parent = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": root},
    )
    try:
        assert parent.stdout is not None
        workers = [int(pid) for pid in parent.stdout.readline().split()]
        assert len(workers) == 2 and all(_alive(pid) for pid in workers)
        parent.kill()
        parent.wait(10)
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(pid) for pid in workers)
    finally:
        parent.kill()
        for pid in workers if "workers" in locals() else []:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
