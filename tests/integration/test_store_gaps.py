"""Gap-safe catch-up (ARCHITECTURE.md): a reader following ``position > checkpoint`` while writers
commit concurrently sees every event exactly once.

On PostgreSQL a transaction may take position 10, another take 11 and commit first; without the
append lock a follower reads 11, moves past 10 and never sees it. The tests below provoke exactly
that interleaving, with the lock (nothing skipped) and without it (the skip happens, so the test
can tell).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from enforcement.migrations import upgrade
from events import EventStore, NewEvent, RecordedEvent, create_engine, dialects

T0 = datetime(2026, 11, 24, 10, 0, 0, tzinfo=UTC)
PATIENCE = 10.0  # seconds; only reached when something is broken


@pytest.fixture(params=[pytest.param("postgres", marks=pytest.mark.postgres)])
def pg_store(pg_url: str) -> Iterator[EventStore]:
    upgrade(pg_url)
    engine = create_engine(pg_url)
    yield EventStore(engine)
    engine.dispose()


def new(**data: object) -> NewEvent:
    return NewEvent("Noted", dict(data), T0)


class Follower(threading.Thread):
    """A subscription: pages ``read_all(after checkpoint)`` and advances its checkpoint."""

    def __init__(self, store: EventStore, page_size: int = 50) -> None:
        super().__init__(daemon=True)
        self.store = store
        self.page_size = page_size
        self.checkpoint = 0
        self.delivered: list[RecordedEvent] = []
        self.error: BaseException | None = None
        self._stop_after_catching_up = threading.Event()

    def run(self) -> None:
        try:
            while True:
                last_round = self._stop_after_catching_up.is_set()
                page = self.store.read_all(self.checkpoint, self.page_size)
                for event in page:
                    self.delivered.append(event)
                    self.checkpoint = event.position
                if last_round and not page:
                    return
                if not page:
                    time.sleep(0.001)
        except BaseException as exc:
            self.error = exc

    def finish(self) -> list[RecordedEvent]:
        """Catch up with everything committed so far, stop, and return what was delivered."""
        self._stop_after_catching_up.set()
        self.join(PATIENCE)
        assert not self.is_alive(), "the follower did not finish"
        assert self.error is None, self.error
        return self.delivered


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + PATIENCE
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.002)


def waiting_on_advisory_lock(engine: sa.Engine) -> bool:
    with engine.connect() as conn:
        waiting = conn.exec_driver_sql(
            "SELECT count(*) FROM pg_locks JOIN pg_database d ON d.oid = pg_locks.database"
            " WHERE locktype = 'advisory' AND NOT granted AND d.datname = current_database()"
        ).scalar_one()
    return bool(waiting)


@dataclass
class Interleaving:
    """What happened when A held its transaction open while B appended and tried to commit."""

    a: RecordedEvent
    b: RecordedEvent
    b_committed_while_a_was_open: bool
    b_waited_for_a: bool
    delivered: list[RecordedEvent] = field(default_factory=list)


def a_open_while_b_commits(store: EventStore) -> Interleaving:
    """Transaction A takes its position, then stays open until B has either committed (no lock:
    out-of-order commit, and the follower has read past A's position) or is seen waiting on the
    append lock. Then A commits, B finishes, and the follower catches up."""
    follower = Follower(store)
    follower.start()
    a_inserted, b_done = threading.Event(), threading.Event()
    seen: dict[str, object] = {}

    def hold_a_open(_conn: sa.Connection, _recorded: list[RecordedEvent]) -> None:
        a_inserted.set()
        wait_until(
            lambda: b_done.is_set() or waiting_on_advisory_lock(store.engine),
            "B commits or waits for A",
        )
        seen["b_committed_while_a_was_open"] = b_done.is_set()
        seen["b_waited_for_a"] = not b_done.is_set()
        if b_done.is_set():
            b_position = seen["b"].position  # type: ignore[attr-defined]
            wait_until(lambda: follower.checkpoint >= b_position, "the follower reads B")

    def append_a() -> None:
        [seen["a"]] = store.append("acct_a", 0, [new(who="A")], after_append=hold_a_open)

    # B appends as another process would, through a store of its own: appends of one store's
    # threads queue in-process behind A (they would share A's transaction), never on the lock.
    other_process = EventStore(store.engine)

    def append_b() -> None:
        [seen["b"]] = other_process.append("acct_b", 0, [new(who="B")])
        b_done.set()

    with ThreadPoolExecutor(2) as pool:
        a_done = pool.submit(append_a)
        assert a_inserted.wait(PATIENCE)
        b_finished = pool.submit(append_b)
        a_done.result(PATIENCE)  # re-raises what went wrong in the thread
        b_finished.result(PATIENCE)

    outcome = Interleaving(
        a=seen["a"],  # type: ignore[arg-type]
        b=seen["b"],  # type: ignore[arg-type]
        b_committed_while_a_was_open=bool(seen["b_committed_while_a_was_open"]),
        b_waited_for_a=bool(seen["b_waited_for_a"]),
    )
    outcome.delivered = follower.finish()
    return outcome


def test_an_out_of_order_commit_is_not_skipped(pg_store: EventStore) -> None:
    outcome = a_open_while_b_commits(pg_store)

    # B, which started after A took its position, could not commit before A…
    assert outcome.a.position < outcome.b.position
    assert outcome.b_waited_for_a and not outcome.b_committed_while_a_was_open
    # …so the follower delivered both, once each, in position order.
    assert [e.event_id for e in outcome.delivered] == [outcome.a.event_id, outcome.b.event_id]


def test_control_without_the_append_lock_the_follower_skips_an_event(
    pg_store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dialects, "take_append_lock", lambda conn: None)

    outcome = a_open_while_b_commits(pg_store)

    # B committed while A was still open, the follower moved past A's position, and A's event,
    # committed a moment later, is never delivered: the bug the lock exists to prevent.
    assert outcome.a.position < outcome.b.position
    assert outcome.b_committed_while_a_was_open
    assert [e.event_id for e in outcome.delivered] == [outcome.b.event_id]
    assert len(pg_store.read_all()) == 2


def test_a_follower_sees_every_event_once_while_many_writers_commit(store: EventStore) -> None:
    writers, appends = 4, 15
    rng = random.Random(7)
    pauses = [[rng.uniform(0, 0.004) for _ in range(appends)] for _ in range(writers)]

    def writer(w: int) -> list[str]:
        ids = []
        for seq in range(appends):

            def linger(
                _conn: sa.Connection, _recorded: list, pause: float = pauses[w][seq]
            ) -> None:
                time.sleep(pause)  # keep the transaction open after taking positions

            stream = f"acct_{(w + seq) % 3}"  # writers share streams and collide
            [event] = store.append(stream, None, [new(w=w, seq=seq)], after_append=linger)
            ids.append(event.event_id)
        return ids

    follower = Follower(store, page_size=7)
    follower.start()
    with ThreadPoolExecutor(writers) as pool:
        written = [i for ids in pool.map(writer, range(writers)) for i in ids]
    delivered = [e.event_id for e in follower.finish()]

    assert len(set(written)) == writers * appends
    assert len(delivered) == len(set(delivered))  # none twice
    assert sorted(delivered) == sorted(written)  # none skipped
    assert [e.position for e in follower.delivered] == sorted(
        e.position for e in follower.delivered
    )
