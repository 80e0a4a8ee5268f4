"""The stored standing: a row per account holding the fold's accumulator at some version.

Loading never replays a whole stream: it reads the row and applies only the events after its
version. Saving happens inside the appending transaction (``EventStore.append(after_append=…)``),
so the row and the log can never disagree about what was committed.
"""

from __future__ import annotations

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

    def __init__(self, store: EventStore):
        self.store = store

    def load(self, account_id: str, conn: Connection | None = None) -> StandingState:
        """The account's current accumulator: the stored row plus any events after it."""
        if conn is None:
            with self.store.engine.connect() as own:
                return self.load(account_id, own)
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

    def saver(self, state: StandingState):  # type: ignore[no-untyped-def]
        """An ``after_append`` callback that stores ``state`` advanced by the recorded events."""

        def after_append(conn: Connection, recorded: Sequence[RecordedEvent]) -> None:
            self.save(conn, apply_all(state, recorded))

        return after_append
