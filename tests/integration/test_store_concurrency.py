"""Concurrent appenders on one stream, on SQLite and on PostgreSQL: threads sharing a store and
processes each with its own engine lose nothing, never duplicate a version, and keep the chain."""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pytest

from events import ConcurrencyError, EventStore, NewEvent, RecordedEvent, create_engine

T0 = datetime(2026, 11, 24, 10, 0, 0, tzinfo=UTC)
STREAM = "acct_contended"


def noted(writer: int, seq: int) -> NewEvent:
    return NewEvent("Noted", {"writer": writer, "seq": seq}, T0)


def append_with_retry(
    store: EventStore, writer: int, seq: int, with_head: bool = True
) -> tuple[RecordedEvent, int]:
    """The write path's loop: read the head, decide, append at it (passing the head read, as
    the service does, or only its version); on a conflict, start over."""
    conflicts = 0
    while True:
        head = store.head(STREAM)
        try:
            [recorded] = store.append(
                STREAM, head.version, [noted(writer, seq)], head=head if with_head else None
            )
            return recorded, conflicts
        except ConcurrencyError:
            conflicts += 1


def run_writer(
    store: EventStore,
    writer: int,
    appends: int,
    start: Callable[[], Any],
    with_head: bool = True,
) -> tuple:
    start()
    recorded, conflicts = [], 0
    for seq in range(appends):
        event, lost = append_with_retry(store, writer, seq, with_head)
        recorded.append(event.event_id)
        conflicts += lost
    return recorded, conflicts


def assert_one_intact_stream(store: EventStore, writers: int, appends: int, acked: list) -> None:
    stream = store.read_stream(STREAM)
    total = writers * appends

    assert [e.version for e in stream] == list(range(1, total + 1))  # contiguous, no duplicate
    assert [e.position for e in stream] == sorted(e.position for e in stream)
    assert Counter((e.data["writer"], e.data["seq"]) for e in stream) == Counter(
        {(w, s): 1 for w in range(writers) for s in range(appends)}
    )
    # Every acknowledged append is there, and nothing else is.
    assert sorted(e.event_id for e in stream) == sorted(acked)
    # Each writer's appends are in its own order.
    for w in range(writers):
        assert [e.data["seq"] for e in stream if e.data["writer"] == w] == list(range(appends))
    result = store.verify(STREAM)
    assert result.ok and result.events == total
    assert result.head_hash == stream[-1].hash


@pytest.mark.parametrize("with_head", [True, False], ids=["head-given", "version-only"])
def test_threads_appending_to_one_stream_lose_nothing(store: EventStore, with_head: bool) -> None:
    writers, appends = 8, 20
    barrier = threading.Barrier(writers)

    with ThreadPoolExecutor(writers) as pool:
        futures = [
            pool.submit(run_writer, store, w, appends, barrier.wait, with_head)
            for w in range(writers)
        ]
        results = [f.result() for f in futures]

    acked = [event_id for recorded, _ in results for event_id in recorded]
    assert_one_intact_stream(store, writers, appends, acked)
    # The race was real: writers did collide and were turned away, not silently merged.
    assert sum(conflicts for _, conflicts in results) > 0


def test_threads_appending_at_head_lose_nothing(store: EventStore) -> None:
    writers, appends = 8, 20
    barrier = threading.Barrier(writers)

    def writer(w: int) -> list[str]:
        barrier.wait()
        return [store.append(STREAM, None, [noted(w, s)])[0].event_id for s in range(appends)]

    with ThreadPoolExecutor(writers) as pool:
        acked = [i for ids in pool.map(writer, range(writers)) for i in ids]

    assert_one_intact_stream(store, writers, appends, acked)


def process_writer(url: str, writer: int, appends: int, go: Any, results: Any) -> None:
    """Runs in a spawned process: its own interpreter, engine and connection pool."""
    engine = create_engine(url)
    try:
        store = EventStore(engine)
        store.head(STREAM)  # connect before the start signal, so the writers really overlap
        results.put((writer, run_writer(store, writer, appends, go.wait)))
    except BaseException as exc:  # report, so the parent fails with the reason
        results.put((writer, repr(exc)))
    finally:
        engine.dispose()


def test_processes_appending_to_one_stream_lose_nothing(
    store: EventStore, database_url: str
) -> None:
    writers, appends = 3, 20
    ctx = multiprocessing.get_context("spawn")
    go, results = ctx.Event(), ctx.Queue()
    processes = [
        ctx.Process(target=process_writer, args=(database_url, w, appends, go, results))
        for w in range(writers)
    ]
    for p in processes:
        p.start()
    try:
        go.set()
        outcomes = dict(results.get(timeout=120) for _ in processes)
    finally:
        for p in processes:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()

    failures = {w: o for w, o in outcomes.items() if isinstance(o, str)}
    assert failures == {}
    assert all(p.exitcode == 0 for p in processes)
    acked = [event_id for recorded, _ in outcomes.values() for event_id in recorded]
    assert_one_intact_stream(store, writers, appends, acked)


@pytest.mark.parametrize("expected_version", [None, 0])
def test_concurrent_retries_with_one_idempotency_key_record_once(
    store: EventStore, expected_version: int | None
) -> None:
    threads = 8
    barrier = threading.Barrier(threads)

    def retry(_: int) -> list[RecordedEvent]:
        barrier.wait()
        # Every retry builds its events afresh (new event ids), as a client resending would.
        return store.append(
            STREAM, expected_version, [noted(0, 0), noted(0, 1)], idempotency_key="req-1"
        )

    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(retry, range(threads)))

    stream = store.read_stream(STREAM)
    assert [e.version for e in stream] == [1, 2]
    assert all(result == stream for result in results)


def test_appends_that_meet_share_one_transaction_and_a_stale_one_fails_alone(
    store: EventStore,
) -> None:
    """While one append's transaction is open, others of the same store queue; they are then
    written together, each in a savepoint: a stale one fails alone, the rest commit as one.
    (Every stream is at version 1, its head unknown to the appends: on PostgreSQL an append
    with a known head, such as a new stream's, is pipelined alone instead.)"""
    for account in ("acct_lead", "acct_1", "acct_2", "acct_stale", "acct_bug"):
        store.append(account, 0, [noted(0, 0)])
    store.append("acct_stale", 1, [noted(0, 1)])  # now at version 2
    [earlier] = store.append("acct_keyed", 0, [noted(5, 0)], "key-1")
    leader_in, release = threading.Event(), threading.Event()
    connections: dict[str, Any] = {}

    def hold(conn: Any, _recorded: list[RecordedEvent]) -> None:
        leader_in.set()
        assert release.wait(30)

    def note(name: str) -> Callable[[Any, list[RecordedEvent]], None]:
        return lambda conn, _recorded: connections.__setitem__(name, conn)

    def broken(_conn: Any, _recorded: list[RecordedEvent]) -> None:
        raise RuntimeError("a projection bug")

    with ThreadPoolExecutor(6) as pool:
        leader = pool.submit(store.append, "acct_lead", 1, [noted(1, 0)], after_append=hold)
        assert leader_in.wait(30)
        first = pool.submit(store.append, "acct_1", 1, [noted(2, 0)], after_append=note("1"))
        second = pool.submit(store.append, "acct_2", 1, [noted(3, 0)], after_append=note("2"))
        stale = pool.submit(store.append, "acct_stale", 1, [noted(4, 0)], after_append=note("s"))
        failing = pool.submit(store.append, "acct_bug", 1, [noted(7, 0)], after_append=broken)
        # With an idempotency key: in the group on SQLite, alone on PostgreSQL (after it).
        keyed = pool.submit(
            store.append, "acct_keyed", 1, [noted(6, 0)], "key-2", after_append=note("k")
        )
        deadline = time.monotonic() + 30
        waiting = 4 if store.engine.dialect.name == "postgresql" else 5
        while len(store._writes._pending) < waiting and time.monotonic() < deadline:
            time.sleep(0.001)
        assert len(store._writes._pending) == waiting  # they wait for the open transaction
        release.set()
        leader.result(30)
        [one], [two] = first.result(30), second.result(30)
        with pytest.raises(ConcurrencyError):
            stale.result(30)
        with pytest.raises(RuntimeError, match="projection bug"):  # alone: the others commit
            failing.result(30)
        [second_keyed] = keyed.result(30)

    assert connections["1"] is connections["2"]  # the two that met: one transaction
    assert "s" not in connections
    assert (one.version, two.version) == (2, 2)
    assert [e.version for e in store.read_stream("acct_stale")] == [1, 2]
    assert [e.version for e in store.read_stream("acct_bug")] == [1]
    assert second_keyed.version == 2 and earlier.version == 1
    sqlite = store.engine.dialect.name == "sqlite"
    assert (connections["k"] is connections["1"]) == sqlite
    for account in ("acct_lead", "acct_1", "acct_2", "acct_stale", "acct_keyed"):
        assert store.verify(account).ok
