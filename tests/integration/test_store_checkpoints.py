"""Checkpoints, on SQLite and on PostgreSQL: one that only moves forward
(``EventStore.advance_checkpoint``) keeps the greater position whichever of two writers writes
last; a plain one (``EventStore.set_checkpoint``) keeps the last writer's, forward or back, and
two first writers at once do not collide on its name."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
import sqlalchemy as sa

from events import EventStore
from events.dialects import write_connection
from tests.locks import waiting_on_a_lock
from tests.workers.system import wait_until

PATIENCE = 20.0


def checkpoint(store: EventStore, name: str) -> int:
    with store.engine.connect() as conn:
        return store.get_checkpoint(conn, name)


Write = Callable[[sa.Connection, str, int], None]


def written(store: EventStore, write: Write, name: str, position: int) -> None:
    """``write`` (a store's checkpoint write) in a transaction of its own."""
    with write_connection(store.engine) as conn, conn.begin():
        write(conn, name, position)


def two_writers_at_once(store: EventStore, write: Write, recorded_before: int | None) -> int:
    """On PostgreSQL the first writer writes 200 and its transaction is open when the second
    one writes 100, so the second waits for the row until the first commits; the position
    after both (neither may fail: without a row before, both insert the name)."""
    if recorded_before is not None:
        written(store, write, "looks", recorded_before)
    failed: list[BaseException] = []

    def second() -> None:
        try:
            written(store, write, "looks", 100)
        except BaseException as exc:
            failed.append(exc)

    with store.engine.connect() as first, first.begin():
        write(first, "looks", 200)
        writer = threading.Thread(target=second)
        writer.start()
        wait_until(lambda: waiting_on_a_lock(store.engine), "the second write waits")
    writer.join(PATIENCE)
    assert not writer.is_alive()
    assert failed == []
    return checkpoint(store, "looks")


def test_a_set_checkpoint_keeps_the_last_position_written(store: EventStore) -> None:
    put = store.set_checkpoint
    written(store, put, "looks", 7)  # the first write makes the row
    assert checkpoint(store, "looks") == 7
    written(store, put, "looks", 200)
    written(store, put, "looks", 100)  # back: a plain checkpoint may move back
    assert checkpoint(store, "looks") == 100
    assert checkpoint(store, "other") == 0  # one row per name


@pytest.mark.parametrize("recorded_before", [None, 50])
def test_two_writers_at_once_of_a_set_checkpoint_keep_the_last_one(
    pg_store: EventStore, recorded_before: int | None
) -> None:
    """The second writer writes over the first one's, also when both write the name for the
    first time (an update, then an insert when nothing was updated, failed there)."""
    assert two_writers_at_once(pg_store, pg_store.set_checkpoint, recorded_before) == 100


def test_an_advanced_checkpoint_keeps_the_greater_position(store: EventStore) -> None:
    advance = store.advance_checkpoint
    written(store, advance, "looks", 7)  # the first write makes the row
    assert checkpoint(store, "looks") == 7
    written(store, advance, "looks", 200)
    written(store, advance, "looks", 100)  # the smaller, written last
    assert checkpoint(store, "looks") == 200
    written(store, advance, "looks", 200)
    written(store, advance, "looks", 201)
    assert checkpoint(store, "looks") == 201
    assert checkpoint(store, "other") == 0  # one row per name


@pytest.mark.parametrize("recorded_before", [None, 50])
def test_two_writers_at_once_keep_the_greater_position(
    pg_store: EventStore, recorded_before: int | None
) -> None:
    """The smaller, written second, changes nothing: it neither moves the position back (with
    a row there before) nor fails on the name (without)."""
    assert two_writers_at_once(pg_store, pg_store.advance_checkpoint, recorded_before) == 200
