"""The stored standing: a row per account holding the fold's accumulator at some version.

Loading never replays a whole stream: it reads the row and applies only the events after its
version. Saving happens inside the appending transaction (``EventStore.append(after_append=…)``),
so the row and the log can never disagree about what was committed.

The row holds the whole accumulator, so reading and writing it costs in proportion to the
account's history (at 10,000 events a ~1.8 MB row; ``benchmarks/bench_decide.py``). The
repository therefore keeps the last committed state of a few big accounts in memory
(``remember``) and loads those as that state plus the events after it, read from the log,
skipping the row: correct with any number of writers elsewhere, since the log is the truth.
Writing the row in every append still costs in proportion to the state.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from events import EventStore, RecordedEvent
from projections.standing import StandingState, apply_all
from projections.tables import standings


class StandingRepository:
    """Load and save stored standings over an ``EventStore``'s database."""

    def __init__(self, store: EventStore, *, cache_size: int = 64, cache_min_version: int = 500):
        self.store = store
        # Only states of at least ``cache_min_version`` events are kept (smaller ones load fast
        # from their row), at most ``cache_size`` of them, least recently used first out.
        self.cache_size = cache_size
        self.cache_min_version = cache_min_version
        self._cache: OrderedDict[str, StandingState] = OrderedDict()
        self._cache_lock = threading.Lock()

    def load(self, account_id: str, conn: Connection | None = None) -> StandingState:
        """The account's current accumulator: the stored row (or a remembered state) plus any
        events after it."""
        if conn is None:
            with self.store.engine.connect() as own:
                return self.load(account_id, own)
        with self._cache_lock:
            remembered = self._cache.get(account_id)
            if remembered is not None:
                self._cache.move_to_end(account_id)
        if remembered is not None:
            tail = self.store.read_stream(account_id, after_version=remembered.version, conn=conn)
            return apply_all(remembered, tail) if tail else remembered
        row = conn.execute(
            sa.select(standings.c.state).where(standings.c.account_id == account_id)
        ).first()
        state = StandingState.empty(account_id)
        if row is not None:
            try:
                state = StandingState.from_json(row[0])
            except ValueError:
                # A row written by an older state schema: fold the whole stream instead; the
                # next append stores the current shape.
                state = StandingState.empty(account_id)
        tail = self.store.read_stream(account_id, after_version=state.version, conn=conn)
        return apply_all(state, tail) if tail else state

    def save(self, conn: Connection, state: StandingState, *, force: bool = False) -> None:
        """Upsert the row, in the caller's transaction; an older state never replaces a newer
        (unless ``force``: a rebuild rewrites rows from the log whatever they held)."""
        values = {
            "account_id": state.account_id,
            "version": state.version,
            "state": state.to_json(),
            "updated_at": datetime.now(UTC),
        }
        insert = (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(
            standings
        )
        excluded = insert.excluded
        conn.execute(
            insert.values(**values).on_conflict_do_update(
                index_elements=[standings.c.account_id],
                set_={
                    "version": excluded.version,
                    "state": excluded.state,
                    "updated_at": excluded.updated_at,
                },
                where=None if force else standings.c.version < excluded.version,
            )
        )

    def remember(self, state: StandingState) -> None:
        """Keep ``state`` for the next ``load``. Only a COMMITTED state may be given (one that
        ``apply_all`` made from events an append returned): loading trusts it as the log's."""
        if state.version < self.cache_min_version or self.cache_size <= 0:
            return
        with self._cache_lock:
            known = self._cache.get(state.account_id)
            if known is None or known.version < state.version:
                self._cache[state.account_id] = state
            self._cache.move_to_end(state.account_id)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)

    def forget(self) -> None:
        """Drop every remembered state (loads read the rows again)."""
        with self._cache_lock:
            self._cache.clear()

    def saver(self, state: StandingState):  # type: ignore[no-untyped-def]
        """An ``after_append`` callback that stores ``state`` advanced by the recorded events."""

        def after_append(conn: Connection, recorded: Sequence[RecordedEvent]) -> None:
            self.save(conn, apply_all(state, recorded))

        return after_append
