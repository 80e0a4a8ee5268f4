"""Rebuilding stored standings from the log.

``rebuild_standings`` walks the log in ``(account_id, version)`` keyset pages, so it holds one
account's state and one page of events at a time (constant memory), and writes each finished
account's row. The rows it writes equal those the write path stores inline: both are
``apply_all`` over the same events.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa

from events import EventStore
from events.schema import events
from events.store import _EVENT_COLUMNS, row_to_event
from projections.standing import StandingState, apply
from projections.stored import StandingRepository

Progress = Callable[[int, int], None]  # (events done, events total)


@dataclass(frozen=True, slots=True)
class RebuildStats:
    accounts: int
    events: int
    seconds: float

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def rebuild_standings(
    store: EventStore,
    standings: StandingRepository,
    *,
    account: str | None = None,
    page_size: int = 2000,
    progress: Progress | None = None,
) -> RebuildStats:
    """Recompute every (or one) stored standing from the log and store it."""
    started = time.perf_counter()
    where = [] if account is None else [events.c.account_id == account]
    with store.engine.connect() as conn:
        total = conn.execute(sa.select(sa.func.count()).select_from(events).where(*where)).scalar_one()
    done = accounts = 0
    state: StandingState | None = None
    finished: list[StandingState] = []
    after: tuple[str, int] | None = None

    def flush() -> None:
        if finished:
            with store.engine.begin() as write:
                for s in finished:
                    standings.save(write, s, force=True)
            finished.clear()

    while True:
        query = sa.select(*_EVENT_COLUMNS).where(*where)
        if after is not None:
            query = query.where(sa.tuple_(events.c.account_id, events.c.version) > sa.tuple_(*after))
        query = query.order_by(events.c.account_id, events.c.version).limit(page_size)
        with store.engine.connect() as conn:
            page = [row_to_event(r) for r in conn.execute(query)]
        for event in page:
            if state is None or state.account_id != event.account_id:
                if state is not None:
                    finished.append(state)
                    accounts += 1
                state = StandingState.empty(event.account_id)
            state = apply(state, event)
        done += len(page)
        if len(finished) >= 500:
            flush()
        if progress is not None:
            progress(done, total)
        if len(page) < page_size:
            break
        after = (page[-1].account_id, page[-1].version)
    if state is not None:
        finished.append(state)
        accounts += 1
    flush()
    return RebuildStats(accounts, done, time.perf_counter() - started)
