"""The stored standings as a checkpointed projection, and their rebuild (``enforcement replay``).

``StandingsProjection`` keeps the ``standings`` rows (``projections.stored``) current from the log
under ``projections.catchup``: by position it loads the affected rows, applies the page with the
same fold as the write path (``standing.apply_all``) and saves them, in the runner's transaction.
Rebuilt from zero, it folds whole streams instead, which reads each stream once and writes each
row once; the rows it writes are ``apply_all(StandingState.empty(a), events of a)``, exactly what
the write path stores inline.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from itertools import groupby
from operator import itemgetter
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from events import EventStore, RecordedEvent, dialects
from events.fastjson import loads as _loads
from events.schema import events
from events.timefmt import canonical_time, stamp_of_sqlite_time
from projections.catchup import CatchUpRunner, Progress
from projections.standing import FOLDED_TYPES, StandingState, apply_all, fold_new
from projections.stored import (
    Change,
    StandingRepository,
    StoredRows,
    delete_all,
    delete_without_events,
    read_states,
    replace_range,
    write_states,
)

# The event types the fold reads beyond their version and time. Any other event only advances a
# standing's version and ``last_recorded_at``, which the stream's last event sets again, so a
# rebuild need not fetch or decode it unless it is the last (notices: about half of the log).
_FOLDED_LIST = sorted(FOLDED_TYPES)

# A stream's events as the fold reads them (``_Fact``): no metadata or hashes, and ``data`` only
# where the fold decodes it, as text. The times come as text too: SQLite's stored text, and on
# PostgreSQL already the fold's canonical text (``format_time``), made by ``to_char`` on the
# server (``_postgres_stamp`` redoes in Python any that is not of the canonical shape, e.g. a
# year before 1000). Run on the driver's own cursor (the rebuild is the one place that reads the
# whole log, and SQLAlchemy's row objects were a third of its time), server-side on PostgreSQL,
# so a batch is never all in memory at once.
_STREAMS_SQL = (
    "SELECT account_id, version, type, {event_id}, schema_version, "
    "CASE WHEN type IN ({folded}) THEN {data} END AS data, {occurred}, {recorded} "
    "FROM events WHERE account_id >= {p} AND account_id <= {p} AND position <= {p} "
    "ORDER BY account_id, version"
)
_POSTGRES_STAMP = "to_char({0} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"


def _streams_sql(dialect: str) -> str:
    postgres = dialect == "postgresql"
    mark = "%s" if postgres else "?"
    return _STREAMS_SQL.format(
        event_id="event_id::text" if postgres else "event_id",
        data="data::text" if postgres else "data",
        occurred=_POSTGRES_STAMP.format("occurred_at") if postgres else "occurred_at",
        recorded=_POSTGRES_STAMP.format("recorded_at") if postgres else "recorded_at",
        folded=", ".join([mark] * len(_FOLDED_LIST)),
        p=mark,
    )


def _stream_rows(conn: Connection, first: str, last: str, up_to: int) -> Iterator[Any]:
    """The rows of ``_STREAMS_SQL`` from the driver, in the caller's transaction."""
    driver: Any = conn.connection.dbapi_connection
    assert driver is not None
    if conn.dialect.name == "postgresql":
        cursor = driver.cursor(name="rebuild_streams")  # psycopg: a server-side cursor
        cursor.itersize = 5000
    else:
        cursor = driver.cursor()
    try:
        cursor.execute(_streams_sql(conn.dialect.name), (*_FOLDED_LIST, first, last, up_to))
        yield from cursor
    finally:
        cursor.close()


@dataclass(frozen=True, slots=True)
class RebuildStats:
    accounts: int
    events: int
    seconds: float

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


class StandingsProjection:
    """The ``standings`` rows as a ``catchup.StreamProjection`` named ``standings``."""

    name = "standings"

    def __init__(self, repository: StandingRepository) -> None:
        self.repository = repository
        self.store = repository.store

    def apply(self, conn: Connection, page: Sequence[RecordedEvent]) -> None:
        """Load the rows the page touches, apply its events, save the rows that moved.

        A row must reflect every version of its stream before the page's first one (the
        checkpoint says so); a row that does not (deleted, or of an older state schema) is
        recomputed from the whole stream and written whatever it held.
        """
        by_account: dict[str, list[RecordedEvent]] = {}
        for event in page:
            by_account.setdefault(event.account_id, []).append(event)
        stored = read_states(conn, by_account)
        moved: list[Change] = []
        recomputed: list[Change] = []
        for account_id, account_events in by_account.items():
            state = _trusted(stored.get(account_id), account_id, account_events[0].version)
            if state is None:
                log = self.store.read_stream(account_id, conn=conn)
                recomputed.append((None, apply_all(StandingState.empty(account_id), log)))
                continue
            after = apply_all(state, account_events)
            if after.version != state.version:
                moved.append((state, after))
        write_states(conn, moved, force=False)
        write_states(conn, recomputed, force=True)

    def reset(self, conn: Connection) -> None:
        """Delete every row (readers fold the log meanwhile: ``StandingRepository.load``)."""
        delete_all(conn)

    def rebuild_streams(self, conn: Connection, first: str, last: str, up_to: int) -> int:
        """Rewrite the rows of the accounts ``first`` to ``last`` (in id order, inclusive) from
        their events at or below position ``up_to``."""
        with _cycles_uncollected():
            return self.write_folded(conn, fold_streams(conn, first, last, up_to))

    def fold_job(self, first: str, last: str, up_to: int) -> Callable[[], FoldedStreams]:
        """``fold_streams`` of the range as a picklable call, for another process: it opens
        its own connection to the same database."""
        url = self.store.engine.url.render_as_string(hide_password=False)
        return partial(_fold_in_worker, url, first, last, up_to)

    def write_folded(self, conn: Connection, folded: FoldedStreams) -> int:
        """Write what ``fold_streams`` made, in the caller's transaction; returns its events."""
        replace_range(conn, folded.first, folded.last, folded.rows)
        return folded.events


@dataclass(frozen=True, slots=True)
class FoldedStreams:
    """The stored standings of the accounts ``first`` to ``last`` folded from the log, as rows."""

    first: str
    last: str
    events: int
    rows: StoredRows


def fold_streams(conn: Connection, first: str, last: str, up_to: int) -> FoldedStreams:
    """Fold every stream of the accounts ``first`` to ``last`` from its events at or below
    ``up_to`` (only reads: the events there never change)."""
    folded = 0
    rebuilt: list[StandingState] = []
    fact = _postgres_fact if conn.dialect.name == "postgresql" else _sqlite_fact
    for account_id, rows in groupby(_stream_rows(conn, first, last, up_to), key=itemgetter(0)):
        fold_input, count = _fold_input(rows, fact)
        rebuilt.append(fold_new(account_id, fold_input))
        folded += count
    return FoldedStreams(first, last, folded, StoredRows.of(rebuilt))


@contextmanager
def _cycles_uncollected() -> Iterator[None]:
    """The cyclic garbage collector paused while a batch is folded (and, in one process,
    written). A batch makes hundreds of thousands of containers (rows, decoded payloads,
    records), each freed by its reference count when the batch is done: the collector, which
    their allocations set off every few hundred, walked the live ones again and again for no
    garbage (0.2 s of a 3.5 s rebuild of 200,000 events, in about 500 passes). Whatever cycle a
    batch leaves is collected once the collector runs again after it; a collector the caller
    had paused stays paused."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


_WORKER_ENGINES: dict[str, sa.Engine] = {}


def _fold_in_worker(url: str, first: str, last: str, up_to: int) -> FoldedStreams:
    """``fold_streams`` in a worker process, on an engine of its own (one per process)."""
    engine = _WORKER_ENGINES.get(url)
    if engine is None:
        engine = _WORKER_ENGINES[url] = dialects.create_engine(url)
    with engine.connect() as conn, conn.begin(), _cycles_uncollected():
        return fold_streams(conn, first, last, up_to)


def rebuild_standings(
    store: EventStore,
    standings: StandingRepository,
    *,
    account: str | None = None,
    page_size: int = 2000,
    progress: Progress | None = None,
    jobs: int = 1,
    parallel_min_events: int = 50_000,
) -> RebuildStats:
    """Recompute every (or one) stored standing from the log, then catch up to the head.

    Every account: a rebuild of the ``standings`` projection (``CatchUpRunner.rebuild``), which
    survives a crash: the next run or catch-up resumes where it stopped; then the rows of
    accounts without events are deleted; with ``jobs`` > 1 a
    log of at least ``parallel_min_events`` is folded in that many processes. One account: its
    row is rewritten from its stream; the checkpoint is left alone (the row reflects every
    event).
    """
    projection = StandingsProjection(standings)
    if account is None:
        runner = CatchUpRunner(
            store,
            projection,
            page_size=page_size,
            jobs=jobs,
            parallel_min_events=parallel_min_events,
        )
        stats = runner.rebuild(progress)
        with dialects.write_connection(store.engine) as conn, conn.begin():
            delete_without_events(conn)  # rows of no stream: no pass rewrites them
        return RebuildStats(stats.streams, stats.events, stats.seconds)
    started = time.perf_counter()
    with dialects.write_connection(store.engine) as conn, conn.begin():
        up_to = conn.execute(sa.select(sa.func.coalesce(sa.func.max(events.c.position), 0)))
        done = projection.rebuild_streams(conn, account, account, int(up_to.scalar_one()))
    if progress is not None:
        progress(done, done)
    return RebuildStats(1 if done else 0, done, time.perf_counter() - started)


# --------------------------------------------------------------------------- rows


def _trusted(
    state: StandingState | None, account_id: str, first_version: int
) -> StandingState | None:
    """The stored state if it reflects every version before ``first_version``, else None."""
    if state is None:
        return StandingState.empty(account_id) if first_version == 1 else None
    if state.account_id != account_id or state.version < first_version - 1:
        return None
    return state


# --------------------------------------------------------------------------- fold input


class _Fact(NamedTuple):
    """A row of ``_STREAMS_SQL`` as the fold reads it (``standing.FoldEvent``)."""

    account_id: str
    version: int
    type: str
    event_id: str
    schema_version: int
    data: dict[str, Any]
    occurred_stamp: str
    recorded_stamp: str


def _fold_input(rows: Iterable[Any], fact: Callable[[Any], _Fact]) -> tuple[list[_Fact], int]:
    """One stream's rows as the events the fold needs: the folded types, and the last event
    (whatever its type: it sets the version and ``last_recorded_at``). Returns them and the
    number of rows read. ``fact``: ``_sqlite_fact`` or ``_postgres_fact``."""
    read = list(rows)
    chosen = [fact(row) for row in read if row[5] is not None]  # data: only folded types have it
    if read and read[-1][5] is None:
        chosen.append(fact(read[-1]))
    return chosen, len(read)


_new_fact = tuple.__new__


def _sqlite_fact(row: Any) -> _Fact:
    """A row of ``_STREAMS_SQL`` on SQLite as a ``_Fact``: its data decoded exactly as the store
    does (``fastjson.loads``), its times as ``format_time`` writes them (``stamp_of_sqlite_time``,
    its common case inline: this runs for most events of the log)."""
    data, occurred, recorded = row[5], row[6], row[7]
    if len(occurred) == 26 and occurred[0] != "0":
        occurred = f"{occurred[:10]}T{occurred[11:]}Z"
    else:
        occurred = stamp_of_sqlite_time(occurred)
    if len(recorded) == 26 and recorded[0] != "0":
        recorded = f"{recorded[:10]}T{recorded[11:]}Z"
    else:
        recorded = stamp_of_sqlite_time(recorded)
    return _new_fact(
        _Fact,
        (*row[:5], {} if data is None else _loads(data), occurred, recorded),
    )


def _postgres_fact(row: Any) -> _Fact:
    """A row of ``_STREAMS_SQL`` on PostgreSQL as a ``_Fact`` (see ``_sqlite_fact``)."""
    data, occurred, recorded = row[5], row[6], row[7]
    return _new_fact(
        _Fact,
        (
            *row[:5],
            {} if data is None else _loads(data),
            _postgres_stamp(occurred),
            _postgres_stamp(recorded),
        ),
    )


def _postgres_stamp(text: str) -> str:
    """``_POSTGRES_STAMP``'s text as ``format_time`` writes it: the same but for the years that
    ``to_char`` pads (before 1000) and those Python refuses (after 9999; this raises)."""
    return text if len(text) == 27 and text[0] != "0" else canonical_time(text)
