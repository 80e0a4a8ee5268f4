"""On PostgreSQL an append to one stream whose head is known, the empty stream's for
``expected_version=0`` or one the caller read, is one pipeline: BEGIN, keys, lock, insert,
``after_append``'s writes (and COMMIT for a new stream), without reading the stream's head
(``events.writing.write_pipelined``). What it must keep: the same results, nothing written when
the head was not the stream's head after all, and connections that go back to the pool as
they came."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa

from events import (
    ConcurrencyError,
    EventStore,
    IdempotencyConflict,
    NewEvent,
    RecordedEvent,
    StoreError,
    StreamHead,
)
from events import writing as events_writing
from events.dialects import driver_call
from events.schema import checkpoints
from tests.conftest import migrated_store

pytestmark = pytest.mark.postgres

T0 = datetime(2026, 11, 24, 10, 0, 0, tzinfo=UTC)


def noted(n: int) -> NewEvent:
    return NewEvent("Noted", {"n": n}, T0, metadata={"actor": "t"})


@pytest.fixture
def one_connection_store(pg_url: str) -> Iterator[EventStore]:
    """A store whose pool holds one connection: every append reuses it."""
    with migrated_store(pg_url, {"pool_size": 1, "max_overflow": 0}) as store:
        yield store


def no_head_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: Any) -> None:
        raise AssertionError("a new stream's head was read")

    monkeypatch.setattr("events.writing.locked_heads", refuse)


def test_a_new_streams_events_are_appended_without_reading_its_head(
    pg_store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    no_head_reads(monkeypatch)
    seen: list[list[RecordedEvent]] = []

    one = pg_store.append("acct_one", 0, [noted(1)])
    three = pg_store.append(
        "acct_three", 0, [noted(2), noted(3), noted(4)], after_append=pipeline_safe(seen.append)
    )
    keyed = pg_store.append("acct_keyed", 0, [noted(5)], "key-1")

    assert pg_store.read_all(0, 100) == one + three + keyed
    assert [e.version for e in three] == [1, 2, 3]
    assert all(pg_store.verify(a).ok for a in ("acct_one", "acct_three", "acct_keyed"))
    # after_append saw the events as recorded, but for the positions not known yet.
    assert [[dataclasses.replace(e, position=0) for e in three]] == seen
    assert pg_store.append("acct_keyed", 0, [noted(5)], "key-1") == keyed  # a replay
    with pytest.raises(IdempotencyConflict):
        pg_store.append("acct_keyed", 0, [noted(6)], "key-1")


def test_an_append_at_a_head_the_caller_read_does_not_read_it_again(
    pg_store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    [first] = pg_store.append("acct_1", 0, [noted(1)])
    head = pg_store.head("acct_1")
    no_head_reads(monkeypatch)

    more = pg_store.append("acct_1", 1, [noted(2), noted(3)], head=head)
    last = pg_store.append("acct_1", 3, [noted(4)], head=StreamHead(3, more[-1].hash))

    assert pg_store.read_stream("acct_1") == [first, *more, *last]
    assert pg_store.verify("acct_1").ok


@pytest.mark.parametrize("stale", ["moved", "another_hash"])
def test_an_append_at_a_head_that_is_not_the_streams_appends_nothing(
    one_connection_store: EventStore, stale: str
) -> None:
    store = one_connection_store
    [first] = store.append("acct_1", 0, [noted(1)])
    head = store.head("acct_1")
    if stale == "moved":  # another writer appended after the head was read
        store.append("acct_1", 1, [noted(2)])
    else:  # a head at the right version but with another hash: no such head in this log
        head = StreamHead(1, "f" * 64)
    before = store.read_stream("acct_1")

    for events in ([noted(3)], [noted(3), noted(4)]):
        with pytest.raises(ConcurrencyError) as refused:
            store.append("acct_1", 1, events, after_append=write_checkpoint("lost"), head=head)
        assert (refused.value.account_id, refused.value.expected_version) == ("acct_1", 1)

    assert store.read_stream("acct_1") == before
    assert checkpoint_names(store) == []
    assert store.append("acct_1", len(before), [noted(5)])[0].prev_hash == before[-1].hash
    assert before[0] == first


def test_a_head_at_another_version_than_expected_is_not_used(
    pg_store: EventStore,
) -> None:
    pg_store.append("acct_1", 0, [noted(1)])
    pg_store.append("acct_1", 1, [noted(2)])

    with pytest.raises(ConcurrencyError):  # read under the lock, as without a head
        pg_store.append("acct_1", 1, [noted(3)], head=StreamHead(2, "f" * 64))
    [appended] = pg_store.append("acct_1", 2, [noted(3)], head=StreamHead(1, "f" * 64))

    assert appended.version == 3 and pg_store.verify("acct_1").ok


def pipeline_safe(call: Callable[[list[RecordedEvent]], object]) -> Any:
    """An ``after_append`` that may run in the pipeline, calling ``call`` with the events."""

    def after(_conn: sa.Connection, recorded: list[RecordedEvent]) -> None:
        call(recorded)

    after.pipeline_safe = True  # type: ignore[attr-defined]
    return after


def write_checkpoint(name: str) -> Any:
    """An ``after_append`` writing a row of its own in the append's transaction."""

    def after(conn: sa.Connection, _recorded: list[RecordedEvent]) -> None:
        conn.execute(checkpoints.insert().values(name=name, position=1, updated_at=T0))

    after.pipeline_safe = True  # type: ignore[attr-defined]
    return after


def checkpoint_names(store: EventStore) -> list[str]:
    with store.engine.connect() as conn:
        return list(conn.execute(sa.select(checkpoints.c.name)).scalars())


def test_a_stream_that_was_not_new_gets_nothing_not_even_after_appends_writes(
    one_connection_store: EventStore,
) -> None:
    store = one_connection_store
    [first] = store.append("acct_1", 0, [noted(1)])

    with pytest.raises(ConcurrencyError):
        store.append("acct_1", 0, [noted(2)], after_append=write_checkpoint("lost"))

    assert store.read_stream("acct_1") == [first]
    assert checkpoint_names(store) == []
    store.append("acct_2", 0, [noted(3)], after_append=write_checkpoint("kept"))
    assert checkpoint_names(store) == ["kept"]


@pytest.mark.parametrize("fails", [False, True])
def test_the_connection_goes_back_to_the_pool_in_transactions(
    one_connection_store: EventStore, fails: bool
) -> None:
    store = one_connection_store
    store.append("acct_1", 0, [noted(1)])
    if fails:
        with pytest.raises(ConcurrencyError):
            store.append("acct_1", 0, [noted(2)])
    else:
        store.append("acct_2", 0, [noted(2)])

    # The pool's one connection again: a transaction rolled back must leave nothing behind
    # (in autocommit, the insert would have stayed).
    with store.engine.connect() as conn:
        transaction = conn.begin()
        conn.execute(checkpoints.insert().values(name="rolled back", position=1, updated_at=T0))
        transaction.rollback()
    assert checkpoint_names(store) == []


def test_a_pipelined_append_begins_its_transaction_itself_and_only_once(
    one_connection_store: EventStore,
) -> None:
    # In autocommit, psycopg sends no BEGIN of its own (which would sync the pipeline, a round
    # trip): the server is not told BEGIN inside a transaction, which it would warn of.
    store = one_connection_store
    notices: list[str] = []
    with store.engine.connect() as conn:
        driver_conn: Any = conn.connection.dbapi_connection
        driver_conn.add_notice_handler(lambda notice: notices.append(notice.message_primary))
    [first] = store.append("acct_1", 0, [noted(1)])
    store.append("acct_1", 1, [noted(2)], head=StreamHead(1, first.hash))

    assert notices == []


def test_a_pipelined_append_whose_after_append_caught_a_database_error_is_not_recorded(
    pg_store: EventStore,
) -> None:
    """The server answers the COMMIT of a transaction that had an error (one ``after_append``
    caught) with ROLLBACK: the append at a known head must fail, not return events it did not
    record. A new stream's COMMIT, inside the pipeline, is skipped: that append fails the same
    way, not with the driver's "pipeline aborted"."""

    def swallowing(conn: sa.Connection, _recorded: list[RecordedEvent]) -> None:
        with contextlib.suppress(sa.exc.DBAPIError):
            driver_call(conn, "SELECT 1 / 0", lambda c: c.execute("SELECT 1 / 0").fetchall())

    swallowing.pipeline_safe = True  # type: ignore[attr-defined]
    with pytest.raises(StoreError, match="rolled back"):
        pg_store.append("acct_1", 0, [noted(0)], after_append=swallowing)
    assert pg_store.read_all(0, 10) == []
    [first] = pg_store.append("acct_1", 0, [noted(1)])

    with pytest.raises(StoreError, match="rolled back"):
        pg_store.append(
            "acct_1", 1, [noted(3)], after_append=swallowing, head=StreamHead(1, first.hash)
        )
    assert pg_store.read_all(0, 10) == [first]


def test_without_pipelining_every_head_is_read_under_the_lock(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[list[str]] = []
    locked_heads = events_writing.locked_heads

    def counting(driver: Any, sql: Any, account_ids: list[str]) -> Any:
        reads.append(account_ids)
        return locked_heads(driver, sql, account_ids)

    monkeypatch.setattr(events_writing, "locked_heads", counting)
    with migrated_store(pg_url, pipeline_known_heads=False) as store:
        [first] = store.append("acct_1", 0, [noted(1)])
        store.append("acct_1", 1, [noted(2)], head=StreamHead(1, first.hash))

    assert reads == [["acct_1"], ["acct_1"]]


def test_a_new_stream_chains_onto_the_empty_head_whatever_head_it_is_given(
    pg_store: EventStore,
) -> None:
    [event] = pg_store.append("acct_1", 0, [noted(1)], head=StreamHead(0, "f" * 64))

    assert event.prev_hash == "0" * 64
    assert pg_store.verify("acct_1").ok


def test_a_keyed_append_at_a_known_head_replays_and_conflicts_like_any_other(
    pg_store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    [first] = pg_store.append("acct_1", 0, [noted(1)])
    head = StreamHead(1, first.hash)
    no_head_reads(monkeypatch)

    second = pg_store.append("acct_1", 1, [noted(2)], "key-2", head=head)

    assert pg_store.append("acct_1", 1, [noted(2)], "key-2", head=head) == second
    with pytest.raises(IdempotencyConflict):
        pg_store.append("acct_1", 1, [noted(3)], "key-2", head=head)
    assert pg_store.read_stream("acct_1") == [first, *second]


def test_an_after_append_that_is_not_pipeline_safe_keeps_the_read_head_path(
    pg_store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[list[RecordedEvent]] = []
    no_head_reads(monkeypatch)

    with pytest.raises(AssertionError, match="head was read"):
        pg_store.append("acct_1", 0, [noted(1)], after_append=lambda _c, r: seen.append(r))
    assert seen == []
