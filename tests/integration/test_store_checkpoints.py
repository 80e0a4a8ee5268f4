"""Checkpoints that only move forward (``EventStore.advance_checkpoint``), on SQLite and on
PostgreSQL: whichever of two writers writes last, the greater position stays."""

from __future__ import annotations

import threading

import pytest

from events import EventStore
from events.dialects import write_connection
from tests.locks import waiting_on_a_lock
from tests.workers.system import wait_until

PATIENCE = 20.0


def checkpoint(store: EventStore, name: str) -> int:
    with store.engine.connect() as conn:
        return store.get_checkpoint(conn, name)


def advance(store: EventStore, name: str, position: int) -> None:
    with write_connection(store.engine) as conn, conn.begin():
        store.advance_checkpoint(conn, name, position)


def test_an_advanced_checkpoint_keeps_the_greater_position(store: EventStore) -> None:
    advance(store, "looks", 7)  # the first write makes the row
    assert checkpoint(store, "looks") == 7
    advance(store, "looks", 200)
    advance(store, "looks", 100)  # the smaller, written last
    assert checkpoint(store, "looks") == 200
    advance(store, "looks", 200)
    advance(store, "looks", 201)
    assert checkpoint(store, "looks") == 201
    assert checkpoint(store, "other") == 0  # one row per name


@pytest.mark.parametrize("recorded_before", [None, 50])
def test_two_writers_at_once_keep_the_greater_position(
    pg_store: EventStore, recorded_before: int | None
) -> None:
    """On PostgreSQL two transactions write at once: the greater one's is open when the smaller
    one writes, and commits first. The smaller waits for it, and then changes nothing: it
    neither moves the position back (with a row there before) nor fails on the name (without:
    both inserting it)."""
    store = pg_store
    if recorded_before is not None:
        advance(store, "looks", recorded_before)
    failed: list[BaseException] = []

    def smaller() -> None:
        try:
            advance(store, "looks", 100)
        except BaseException as exc:
            failed.append(exc)

    with store.engine.connect() as greater, greater.begin():
        store.advance_checkpoint(greater, "looks", 200)
        writer = threading.Thread(target=smaller)
        writer.start()
        wait_until(lambda: waiting_on_a_lock(store.engine), "the smaller write waits")
    writer.join(PATIENCE)
    assert not writer.is_alive()
    assert failed == []
    assert checkpoint(store, "looks") == 200
