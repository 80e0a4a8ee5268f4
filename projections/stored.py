"""The stored standing: the fold's accumulator of each account, kept at the head of its log.

Two tables (``projections.tables``): a ``standings`` row per account with the state's head
(``StandingState.head_json``: version, status flags, suspension, account limits) and a
``standing_records`` row per record of the state's tables (violations, decisions, remediations…),
with ``seq`` keeping their event order.

Loading never replays a whole stream: it reads the rows and applies only the events after their
version. Saving happens inside the appending transaction (``EventStore.append(after_append=…)``),
so the rows and the log can never disagree about what was committed, and it writes only what the
append changed: the head, and the records that are new or different (records are immutable, so
"different" is "not the same object" as in the state the append started from). An append to an
account with 10,000 events writes as much as one to a new account
(``benchmarks/bench_decide.py``).

A change is written as a difference only when the stored rows are exactly the state it started
from (same version, current state schema); anything else (no row, a row behind the log, a row of
an older schema) is rewritten whole. An older state never replaces a newer one unless forced.

The repository also keeps the last committed state of a few big accounts in memory
(``remember``) and loads those as that state plus the events after it, read from the log,
skipping the rows: correct with any number of writers elsewhere, since the log is the truth.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections import OrderedDict
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import groupby, islice
from operator import itemgetter
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from events import EventStore, RecordedEvent, StreamHead, dialects
from events.chain import EMPTY_HEAD
from events.schema import events as events_table
from events.timefmt import sqlite_time_text
from projections.standing import STATE_SCHEMA, TABLES, StandingState, apply_all, record_json
from projections.tables import standing_records, standings

# A change to store: the state it started from as the rows hold it (None: unknown), and the
# state to store.
Change = tuple[StandingState | None, StandingState]


class StandingRepository:
    """Load and save stored standings over an ``EventStore``'s database."""

    def __init__(
        self,
        store: EventStore,
        *,
        cache_size: int = 64,
        cache_min_version: int = 500,
        cache_events: int = 500_000,
    ):
        self.store = store
        # Only states of at least ``cache_min_version`` events are kept (smaller ones load fast
        # from their rows), at most ``cache_size`` of them, least recently used first out, and
        # of ``cache_events`` events in all but the last one used (a state's size grows with its
        # events: a 100,000-event account's is tens of MB).
        self.cache_size = cache_size
        self.cache_min_version = cache_min_version
        self.cache_events = cache_events
        # Each remembered state with the hash of its stream's event at its version, when known.
        self._cache: OrderedDict[str, tuple[StandingState, str | None]] = OrderedDict()
        self._cache_lock = threading.Lock()

    def load(self, account_id: str) -> StandingState:
        """The account's current accumulator (``load_with_head``)."""
        return self.load_with_head(account_id)[0]

    def load_with_head(self, account_id: str) -> tuple[StandingState, StreamHead | None]:
        """The account's current accumulator: the stored rows (or a remembered state, which a
        big one loaded from its rows becomes) plus any events after them; and the head of its
        stream at that state's version, when the reads gave its hash or the state was remembered
        with it (``EventStore.append(head=…)``), else None.

        The rows and the stream's version come in one statement (one snapshot, so they agree;
        ``read_state_and_head``), and only when the log is ahead of the rows the events after
        them in another (``EventStore.read_stream``), each on a pooled connection of its own
        without a transaction around them: events are never changed, so a tail read later only
        holds more of them, and rows plus tail are still the state at the tail's last event.
        One round trip on PostgreSQL when the rows are current.
        """
        with self._cache_lock:
            remembered = self._cache.get(account_id)
            if remembered is not None:
                self._cache.move_to_end(account_id)
        if remembered is None:
            state, head = self._from_rows(
                account_id, *read_state_and_head(self.store.engine, account_id)
            )
            # Read from committed rows and events: a big account's next load (a read of its
            # standing, a request on it) need not read its thousands of rows again.
            self.remember(state, None if head is None else head.hash)
            return state, head
        state, head = self._with_tail(*remembered)
        if state is not remembered[0]:
            # Moved on by what others appended: the next load reads only what follows it,
            # not every event written since this state was remembered (a reader's load).
            self.remember(state, None if head is None else head.hash)
        return state, head

    def _from_rows(
        self, account_id: str, stored: StandingState | None, head: StreamHead
    ) -> tuple[StandingState, StreamHead | None]:
        """``load_with_head`` from the account's stored rows and its stream's head."""
        state = stored or StandingState.empty(account_id)
        if head.version == state.version:
            return state, head  # the rows are at the head of the log: no events after them
        return self._with_tail(state, None)

    def _with_tail(
        self, state: StandingState, known_hash: str | None
    ) -> tuple[StandingState, StreamHead | None]:
        """``state`` plus the events after it (``load_with_head``)."""
        account_id = state.account_id
        tail = self.store.read_stream(account_id, after_version=state.version)
        if not tail:
            # The remembered state was at the head when the tail was read: its hash, if known,
            # is the head's. Should the log have moved on since, or the hash be wrong, the
            # append at it is refused (unique version; PostgreSQL's guarded insert) and retried.
            return state, None if known_hash is None else StreamHead(state.version, known_hash)
        return apply_all(state, tail), StreamHead(tail[-1].version, tail[-1].hash)

    def load_many(self, account_ids: Sequence[str]) -> dict[str, StandingState]:
        """``{a: self.load(a) for a in account_ids}``, with the stored rows of the accounts not
        remembered read in one round trip on PostgreSQL (``read_states_and_heads``)."""
        with self._cache_lock:
            unknown = [a for a in account_ids if a not in self._cache]
        states = {
            account_id: self._from_rows(account_id, stored, head)[0]
            for account_id, (stored, head) in zip(
                unknown, read_states_and_heads(self.store.engine, unknown), strict=True
            )
        }
        for account_id in account_ids:
            if account_id not in states:  # remembered
                states[account_id] = self.load(account_id)
        return states

    def save(
        self,
        conn: Connection,
        state: StandingState,
        *,
        base: StandingState | None = None,
        force: bool = False,
    ) -> None:
        """Store ``state`` in the caller's transaction. ``base``: the state it was made from,
        so that only the difference is written if the rows still hold ``base``."""
        write_states(conn, [(base, state)], force=force)

    def remember(self, state: StandingState, head_hash: str | None = None) -> None:
        """Keep ``state`` for the next ``load``. Only a COMMITTED state may be given (one that
        ``apply_all`` made from events an append returned): loading trusts it as the log's.
        ``head_hash``: the hash of the stream's event at ``state.version`` (the last one that
        append returned), so that a load can give the head without reading it."""
        if state.version < self.cache_min_version or self.cache_size <= 0:
            return
        with self._cache_lock:
            known = self._cache.get(state.account_id)
            if known is None or known[0].version < state.version:
                self._cache[state.account_id] = (state, head_hash)
            self._cache.move_to_end(state.account_id)
            while len(self._cache) > self.cache_size or (
                len(self._cache) > 1
                and sum(s.version for s, _ in self._cache.values()) > self.cache_events
            ):
                self._cache.popitem(last=False)

    def remember_appended(
        self, saver: AfterAppend, state: StandingState, events: Sequence[RecordedEvent]
    ) -> StandingState:
        """The state of ``state``'s account after ``events``, which a committed append returned
        (the one ``saver``, its ``after_append``, stored if it ran), remembered with the hash of
        the last of them; returned."""
        after = saver.saved.get(state.account_id) or apply_all(state, events)
        self.remember(after, events[-1].hash)
        return after

    def append_refused(self, state: StandingState, actual_version: int | None) -> None:
        """An append at ``state``, as loaded, was refused (``ConcurrencyError``, with the
        stream's version if it says): forget the remembered head's hash; and the remembered
        state itself when the stream is below it (the log is behind it: a database restored
        under this process), so that the next load reads the rows."""
        if actual_version is not None and actual_version < state.version:
            self.forget(state.account_id)
        else:
            self.forget_head(state.account_id)

    def forget_head(self, account_id: str) -> None:
        """Keep the remembered state of ``account_id`` but not its head's hash: after an append
        at that head failed, the next load gives no head while its tail is empty, so the next
        append reads the head under the append lock."""
        with self._cache_lock:
            known = self._cache.get(account_id)
            if known is not None:
                self._cache[account_id] = (known[0], None)

    def forget(self, account_id: str | None = None) -> None:
        """Drop the remembered state of ``account_id``, or every one (loads read the rows
        again)."""
        with self._cache_lock:
            if account_id is None:
                self._cache.clear()
            else:
                self._cache.pop(account_id, None)

    def saver(self, *states: StandingState) -> AfterAppend:
        """An ``after_append`` callback for an append to the accounts of ``states`` (one state
        each, as loaded): it stores each advanced by its stream's recorded events; after the
        append, ``.saved`` maps each account to the state it stored."""
        return AfterAppend(states)


class AfterAppend:
    """``EventStore.append(after_append=…)``: store each loaded state advanced by its stream's
    recorded events, in the appending transaction. It uses no positions, writes through the
    driver and reads on it: it may run inside the store's pipeline."""

    pipeline_safe = True

    def __init__(self, states: Sequence[StandingState]) -> None:
        self.states = {s.account_id: s for s in states}
        self.saved: dict[str, StandingState] = {}

    def __call__(self, conn: Connection, recorded: Sequence[RecordedEvent]) -> None:
        by_account: dict[str, list[RecordedEvent]] = {}
        for event in recorded:
            by_account.setdefault(event.account_id, []).append(event)
        self.saved = {a: apply_all(self.states[a], e) for a, e in by_account.items()}
        # A stream whose first event this append recorded had no state before it: whatever
        # rows it may have are of no state of this log, and its whole state is what to write.
        new_streams = {a for a, e in by_account.items() if e[0].version == 1}
        changes = [(self.states[a], s) for a, s in self.saved.items()]
        # The append holds the append lock already: no second round trip to take it again.
        write_states(conn, changes, new_streams=new_streams, append_locked=True)


# --------------------------------------------------------------------------- statements
# Built once: constructing a statement costs more than running it on the hot path.

_R = standing_records.c
_HEAD = sa.select(standings.c.state).where(standings.c.account_id == sa.bindparam("a"))
# One account's records with their JSON as text, on the driver (a big account has thousands:
# orjson decodes them several times faster than the JSON type's per-row processing).
_RECORDS_TEXT = {
    "sqlite": "SELECT kind, data FROM standing_records WHERE account_id = ? ORDER BY kind, seq",
    "postgresql": "SELECT kind, data::text FROM standing_records WHERE account_id = %s "
    "ORDER BY kind, seq",
}
_HEADS_OF = sa.select(standings.c.account_id, standings.c.state).where(
    standings.c.account_id.in_(sa.bindparam("ids", expanding=True))
)
_RECORDS_OF = (
    sa.select(_R.account_id, _R.kind, _R.data)
    .where(_R.account_id.in_(sa.bindparam("ids", expanding=True)))
    .order_by(_R.account_id, _R.kind, _R.seq)
)
_RECORDS_OF_KINDS = _RECORDS_OF.where(_R.kind.in_(sa.bindparam("kinds", expanding=True)))
_HEADS_PAGE = (
    sa.select(standings.c.account_id, standings.c.state)
    .where(standings.c.account_id > sa.bindparam("after"))
    .order_by(standings.c.account_id)
    .limit(sa.bindparam("limit"))
)


# --------------------------------------------------------------------------- reading


def read_state(conn: Connection, account_id: str) -> StandingState | None:
    """The stored state of one account; None without rows or with rows of another schema."""
    head = conn.execute(_HEAD, {"a": account_id}).scalar()
    records = conn.exec_driver_sql(_RECORDS_TEXT[conn.dialect.name], (account_id,))
    return _state_of(head, records)


def _state_of(head: Any, records: Iterable[Sequence[Any]]) -> StandingState | None:
    """The state from its head document and its ``(kind, data as JSON text)`` records in table
    and event order; None without a head or with one of another schema."""
    if not isinstance(head, dict) or head.get("schema") != STATE_SCHEMA:
        return None
    tables = {
        kind: [loads_json(r[1]) for r in rows] for kind, rows in groupby(records, key=itemgetter(0))
    }
    return StandingState.from_parts(head, tables)


# The head and the records of one account, and the version and hash of its last event, in ONE
# statement (one snapshot: they agree): the head first (part 0), then the records in table and
# event order (part 1), then the stream's head (part 2, always one row, the hash in the state's
# column; NULL: no events).
_STATE_TEXT = {
    name: (
        f"SELECT 0, '', 0{bigint}, state{text} FROM standings WHERE account_id = {p} "
        f"UNION ALL SELECT 1, kind, seq, data{text} FROM standing_records WHERE account_id = {p} "
        f"UNION ALL SELECT 2, '', max(version), (SELECT hash FROM events WHERE account_id = {p} "
        f"ORDER BY version DESC LIMIT 1) FROM events WHERE account_id = {p} "
        "ORDER BY 1, 2, 3"
    )
    for name, p, bigint, text in (
        ("sqlite", "?", "", ""),
        ("postgresql", "%s", "::bigint", "::text"),
    )
}


def read_state_and_head(
    engine: sa.Engine, account_id: str
) -> tuple[StandingState | None, StreamHead]:
    """``read_state`` and the stream's head (version 0 and the zero hash without events), in
    one statement on a pooled connection of its own: one round trip, and none more when the
    rows are at the head of the log (the usual case: every append saves them)."""
    rows = dialects.fetch_all(engine, _STATE_TEXT[engine.dialect.name], (account_id,) * 4)
    return _state_and_head(rows)


def read_states_and_heads(
    engine: sa.Engine, account_ids: Sequence[str]
) -> list[tuple[StandingState | None, StreamHead]]:
    """``read_state_and_head`` of each account, in one round trip on PostgreSQL (pipelined)."""
    statement = _STATE_TEXT[engine.dialect.name]
    pages = dialects.fetch_each(engine, statement, [(a,) * 4 for a in account_ids])
    return [_state_and_head(rows) for rows in pages]


def _state_and_head(rows: Sequence[Any]) -> tuple[StandingState | None, StreamHead]:
    last = rows[-1]  # the part-2 row is always there, and last
    head = StreamHead(int(last[2]), last[3]) if last[2] else EMPTY_HEAD
    if rows[0][0] != 0:
        return None, head
    records = ((r[1], r[3]) for r in islice(rows, 1, len(rows) - 1))
    return _state_of(loads_json(rows[0][3]), records), head


def read_states(
    conn: Connection, account_ids: Iterable[str], kinds: Sequence[str] | None = None
) -> dict[str, StandingState]:
    """The stored states of many accounts (those with rows of the current schema).

    ``kinds``: read only these tables (``TABLES``), for a reader that needs no others; the
    states are then partial and must not be saved or folded further.
    """
    ids = list(account_ids)
    if not ids:
        return {}
    return _with_records(conn, _current(conn.execute(_HEADS_OF, {"ids": ids})), kinds)


def iter_stored_states(
    store: EventStore, page_size: int = 500, kinds: Sequence[str] | None = None
) -> Iterable[StandingState]:
    """The state of every account with a stored standing, in account order, a page at a time
    (``kinds`` as in ``read_states``). A row of another state schema (stored by an earlier
    release, until its next write, ``enforcement init`` or ``replay``) is not skipped: that
    account is folded from its log (whole, whatever ``kinds`` says)."""
    after = ""
    while True:
        with store.engine.connect() as conn:
            rows = conn.execute(_HEADS_PAGE, {"after": after, "limit": page_size}).all()
            states = _with_records(conn, _current(rows), kinds)
            for account_id, _ in rows:
                if account_id not in states:
                    log = store.read_stream(account_id, conn=conn)
                    states[account_id] = apply_all(StandingState.empty(account_id), log)
        yield from (states[account_id] for account_id, _ in rows)
        if len(rows) < page_size:
            return
        after = rows[-1][0]


def count_older_states(conn: Connection) -> int:
    """How many stored standings are of another state schema than ``STATE_SCHEMA`` (stored by
    an earlier release): each is folded from its log when read, until rewritten. Compared in
    Python as the readers compare (``_current``), so that any value, or none, counts alike on
    every database."""
    schemas = conn.execute(sa.select(standings.c.state["schema"])).scalars()
    return sum(1 for schema in schemas if schema != STATE_SCHEMA)


def _current(heads: Iterable[Any]) -> dict[str, Any]:
    """(account, head) rows whose head is of the current state schema, as a dict."""
    return {a: head for a, head in heads if head.get("schema") == STATE_SCHEMA}


def _with_records(
    conn: Connection, heads: dict[str, Any], kinds: Sequence[str] | None
) -> dict[str, StandingState]:
    tables: dict[str, dict[str, list[Any]]] = {a: {} for a in heads}
    if heads:
        if kinds is None:
            records = conn.execute(_RECORDS_OF, {"ids": list(heads)})
        else:
            records = conn.execute(_RECORDS_OF_KINDS, {"ids": list(heads), "kinds": list(kinds)})
        for (account_id, kind), rows in groupby(records, key=itemgetter(0, 1)):
            tables[account_id][kind] = [r[2] for r in rows]
    return {a: StandingState.from_parts(head, tables[a]) for a, head in heads.items()}


# --------------------------------------------------------------------------- writing


@dataclass(frozen=True, slots=True)
class RecordChanges:
    """Rows of ``standing_records`` to upsert and to delete."""

    upserts: list[dict[str, Any]]
    deletes: list[dict[str, Any]]


def write_states(
    conn: Connection,
    changes: Sequence[Change],
    *,
    force: bool = False,
    new_streams: Collection[str] = (),
    append_locked: bool = False,
) -> None:
    """Store each change's new state in the caller's transaction: only the difference from its
    base when the rows hold exactly the base, else the whole state. A state not newer than the
    stored one is skipped unless ``force``.

    ``new_streams``: accounts whose first event the caller's transaction appended (under the
    append lock). They had no state before, so their whole state is written without reading
    what their rows hold (at most leftovers of no state of this log, replaced).

    On PostgreSQL the append lock (``write_locks.take_append_lock``) serialises every writer of
    these rows, so the rows read here are the rows replaced; it is taken here unless the caller
    says its transaction holds it already (``append_locked``: an append's ``after_append``).
    """
    if not changes:
        return
    if not append_locked:
        dialects.take_append_lock(conn)
    to_read = [new.account_id for _, new in changes if new.account_id not in new_streams]
    stored = _stored_versions(conn, to_read) if to_read else {}
    whole: list[StandingState] = []
    upserts: list[dict[str, Any]] = []
    deletes: list[dict[str, Any]] = []
    heads: list[StandingState] = []
    for base, new in changes:
        if new.account_id in new_streams:
            heads.append(new)
            whole.append(new)
            continue
        version = stored.get(new.account_id)
        if version is not None and not force and version >= new.version:
            continue
        heads.append(new)
        diff = None
        if base is not None and version is not None and version == base.version:
            diff = changed_records(base, new)
        if diff is None:
            whole.append(new)
        else:
            upserts += diff.upserts
            deletes += diff.deletes
    if whole:
        upserts += [row for s in whole for row in _all_records(s)]
    _write_rows(conn, [s.account_id for s in whole], deletes, upserts, heads)


class _RowSQL:
    """The statements that write the stored standings, in one database's parameter style."""

    def __init__(self, dialect_name: str) -> None:
        pg = dialect_name == "postgresql"
        p = "%s" if pg else "?"
        jsonb = "::jsonb" if pg else ""
        self.postgres = pg
        self.delete_record = (
            f"DELETE FROM standing_records WHERE account_id = {p} AND kind = {p} "
            f"AND record_key = {p}"
        )
        self.upsert_record = (
            "INSERT INTO standing_records (account_id, kind, record_key, seq, data) "
            f"VALUES ({p}, {p}, {p}, {p}, {p}{jsonb}) "
            "ON CONFLICT (account_id, kind, record_key) DO UPDATE SET data = excluded.data"
        )
        self.upsert_head = (
            "INSERT INTO standings (account_id, version, state, updated_at) "
            f"VALUES ({p}, {p}, {p}{jsonb}, {p}) "
            "ON CONFLICT (account_id) DO UPDATE SET version = excluded.version, "
            "state = excluded.state, updated_at = excluded.updated_at"
        )

    def delete_records_of(self, count: int) -> str:
        marks = ", ".join(["%s" if self.postgres else "?"] * count)
        return f"DELETE FROM standing_records WHERE account_id IN ({marks})"


_ROW_SQL = {name: _RowSQL(name) for name in ("sqlite", "postgresql")}


def _write_rows(
    conn: Connection,
    whole: list[str],
    deletes: list[dict[str, Any]],
    upserts: list[dict[str, Any]],
    heads: list[StandingState],
) -> None:
    """Delete every record of the accounts ``whole``, then the records ``deletes``, upsert the
    records ``upserts`` and the heads of ``heads``: on the driver's connection, in ``conn``'s
    transaction, the JSON written as text once; on PostgreSQL in one round trip (a pipeline)."""
    if not heads:
        return
    sql = _ROW_SQL[conn.dialect.name]
    driver = dialects.DriverConnection.of(conn)
    now = datetime.now(UTC)
    stamp: Any = now if sql.postgres else sqlite_time_text(now)  # as ``UTCDateTime`` writes it
    statements: list[tuple[str, list[tuple[Any, ...]]]] = []
    if whole:
        statements.append((sql.delete_records_of(len(whole)), [tuple(whole)]))
    if deletes:
        statements.append((sql.delete_record, [(d["a"], d["k"], d["r"]) for d in deletes]))
    if upserts:
        rows = [
            (u["account_id"], u["kind"], u["record_key"], u["seq"], _dumps(u["data"]))
            for u in upserts
        ]
        statements.append((sql.upsert_record, rows))
    head_rows = [(s.account_id, s.version, _dumps(s.head_json()), stamp) for s in heads]
    statements.append((sql.upsert_head, head_rows))

    def run(dbapi_conn: Any) -> None:
        if sql.postgres:
            # In the caller's pipeline if it has one (an append's ``after_append``): queued
            # with the rest of its transaction. A pipeline of their own would sync it first.
            own = contextlib.nullcontext() if dbapi_conn.pgconn.pipeline_status else None
            with own or dbapi_conn.pipeline(), dbapi_conn.cursor() as cursor:
                for statement, params in statements:
                    cursor.executemany(statement, params)
            return
        for statement, params in statements:
            if len(params) == 1:
                dbapi_conn.execute(statement, params[0])
            else:
                dbapi_conn.executemany(statement, params)

    driver.call(sql.upsert_head, run)


@dataclass(frozen=True, slots=True)
class StoredRows:
    """States as the rows ``replace_range`` writes (plain tuples, JSON as text: cheap to pickle,
    so a rebuild can fold in other processes)."""

    records: list[tuple[str, str, str, int, str]]  # account, kind, key, seq, data
    heads: list[tuple[str, int, str]]  # account, version, state

    @classmethod
    def of(cls, states: Iterable[StandingState]) -> StoredRows:
        records: list[tuple[str, str, str, int, str]] = []
        heads: list[tuple[str, int, str]] = []
        for state in states:
            account_id = state.account_id
            for kind in TABLES:
                for seq, (key, record) in enumerate(getattr(state, kind).items()):
                    records.append((account_id, kind, key, seq, _record_text(record)))
            heads.append((account_id, state.version, _dumps(state.head_json())))
        return cls(records, heads)


def replace_range(
    conn: Connection, first: str, last: str, states: Sequence[StandingState] | StoredRows
) -> None:
    """Replace every stored standing of the accounts ``first`` to ``last`` (inclusive, in id
    order) with ``states`` (a rebuild: whatever the rows held).

    The rows go to the driver as they are, JSON already text (a rebuild writes every row there
    is, and SQLAlchemy's per-row bind processing would double its cost): one ``executemany`` on
    SQLite, ``COPY`` on PostgreSQL (the JSON text is parsed into ``jsonb`` there either way).
    """
    rows = states if isinstance(states, StoredRows) else StoredRows.of(states)
    dialects.take_append_lock(conn)
    for table in (standing_records, standings):
        conn.execute(table.delete().where(table.c.account_id.between(first, last)))
    now = datetime.now(UTC)
    if conn.dialect.name == "postgresql":
        _copy_rows(conn, rows, now)
        return
    if rows.records:
        conn.exec_driver_sql(
            "INSERT INTO standing_records (account_id, kind, record_key, seq, data) "
            "VALUES (?, ?, ?, ?, ?)",
            rows.records,
        )
    if rows.heads:
        stamp = sqlite_time_text(now)  # as ``UTCDateTime`` writes it on SQLite
        conn.exec_driver_sql(
            "INSERT INTO standings (account_id, version, state, updated_at) VALUES (?, ?, ?, ?)",
            [(*head, stamp) for head in rows.heads],
        )


def _copy_rows(conn: Connection, rows: StoredRows, now: datetime) -> None:
    """``replace_range``'s inserts on PostgreSQL, with ``COPY`` (psycopg)."""
    driver: Any = conn.connection.dbapi_connection
    with driver.cursor() as cursor:
        if rows.records:
            sql = "COPY standing_records (account_id, kind, record_key, seq, data) FROM STDIN"
            with cursor.copy(sql) as copy:
                for record in rows.records:
                    copy.write_row(record)
        if rows.heads:
            with cursor.copy(
                "COPY standings (account_id, version, state, updated_at) FROM STDIN"
            ) as copy:
                for head in rows.heads:
                    copy.write_row((*head, now))


def loads_json(text: str) -> Any:
    """JSON text to Python, with orjson (the standard library for what orjson refuses)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:  # what orjson refuses (an integer beyond 64 bits)
        return json.loads(text)


def _record_text(record: Any) -> str:
    """``_dumps(record_json(record))``, written by orjson from the record itself (it writes a
    dataclass's fields in order and tuples as lists, as ``record_json`` gives them)."""
    try:
        return orjson.dumps(record).decode()
    except TypeError:
        return _dumps(record_json(record))


def _dumps(document: Any) -> str:
    try:
        return orjson.dumps(document).decode()
    except TypeError:  # what orjson does not take (an integer beyond 64 bits): the stdlib does
        return json.dumps(document)


def delete_without_events(conn: Connection) -> int:
    """Delete the stored standings of accounts that have no event in the log (rows no append
    wrote: say, left by a restore of the log alone), which no rebuild of streams reaches; returns
    how many. The candidates are found first; each is deleted under the append lock only if it
    still has no event then, so that an account's first append, which writes its events and its
    rows together, is either seen or not begun, and appends wait only for the deletes."""
    orphan = ~sa.exists().where(events_table.c.account_id == standings.c.account_id)
    candidates = conn.execute(sa.select(standings.c.account_id).where(orphan)).scalars().all()
    if not candidates:
        return 0
    dialects.take_append_lock(conn)
    deleted = 0
    for start in range(0, len(candidates), 500):
        chunk = candidates[start : start + 500]
        heads = (
            conn.execute(
                sa.select(standings.c.account_id).where(standings.c.account_id.in_(chunk), orphan)
            )
            .scalars()
            .all()
        )
        for table in (standing_records, standings):
            conn.execute(table.delete().where(table.c.account_id.in_(heads)))
        deleted += len(heads)
    return deleted


def delete_all(conn: Connection) -> None:
    """Delete every stored standing (readers fold the log meanwhile)."""
    dialects.take_append_lock(conn)
    conn.execute(standing_records.delete())
    conn.execute(standings.delete())


def _stored_versions(conn: Connection, account_ids: list[str]) -> dict[str, int]:
    """The stored version of each account whose head is of the current schema; an account
    with a head of another schema maps to -1 (never a base, never newer).

    On the driver's connection: an append's ``after_append`` may run inside a pipeline
    (``EventStore``), where only the driver reads (it syncs the pipeline to fetch)."""
    name = conn.dialect.name
    marks = ", ".join(["%s" if name == "postgresql" else "?"] * len(account_ids))
    statement = _VERSIONS_OF[name].format(marks)
    rows = dialects.driver_call(
        conn, statement, lambda c: c.execute(statement, account_ids).fetchall(), account_ids
    )
    return {a: v if schema == STATE_SCHEMA else -1 for a, v, schema in rows}


# The stored version and state schema of some accounts (``{}``: their placeholders).
_VERSIONS_OF = {
    "sqlite": "SELECT account_id, version, json_extract(state, '$.schema') FROM standings "
    "WHERE account_id IN ({})",
    "postgresql": "SELECT account_id, version, state -> 'schema' FROM standings "
    "WHERE account_id IN ({})",
}


def changed_records(base: StandingState, new: StandingState) -> RecordChanges | None:
    """The record rows to write so that rows holding ``base`` hold ``new``; None when ``new``
    was not made from ``base`` by one ``apply_all`` (then only a whole rewrite is safe).

    Only the keys ``new``'s tables changed are looked at (``StandingState.changes_since``), so
    the cost is the append's, not the history's. A record added (or popped and set again,
    which moves it to the end) gets ``seq`` after every record ``base`` holds: each event adds
    at most one record to a table, so ``base.version + 1 + i`` stays below the next append's
    numbers and keeps event order.
    """
    upserts: list[dict[str, Any]] = []
    deletes: list[dict[str, Any]] = []
    account_id = new.account_id
    for kind in TABLES:
        before: dict[str, Any] = getattr(base, kind)
        if getattr(new, kind) is before:
            continue
        after = new.changes_since(base, kind)
        if after is None:
            return None
        added = [k for k in after.touched if k in after and (k not in before or k in after.popped)]
        # Those keys are the last ones of ``after``, in the order they were (re)inserted.
        tail = list(islice(reversed(after), len(added)))
        tail.reverse()
        seq_of = {key: base.version + 1 + i for i, key in enumerate(tail)}
        for key in after.touched:
            record = after.get(key)
            old = before.get(key)
            moved = key in seq_of and old is not None
            if old is not None and (record is None or moved):
                deletes.append({"a": account_id, "k": kind, "r": key})
            if record is not None and (record is not old or moved):
                upserts.append(_row(account_id, kind, key, seq_of.get(key, -1), record))
    return RecordChanges(upserts, deletes)


def _all_records(state: StandingState) -> list[dict[str, Any]]:
    return [
        _row(state.account_id, kind, key, seq, record)
        for kind in TABLES
        for seq, (key, record) in enumerate(getattr(state, kind).items())
    ]


def _row(account_id: str, kind: str, key: str, seq: int, record: Any) -> dict[str, Any]:
    return {
        "account_id": account_id,
        "kind": kind,
        "record_key": key,
        "seq": seq,
        "data": record_json(record),
    }


__all__ = [
    "AfterAppend",
    "Change",
    "RecordChanges",
    "StandingRepository",
    "StoredRows",
    "changed_records",
    "count_older_states",
    "delete_all",
    "delete_without_events",
    "iter_stored_states",
    "loads_json",
    "read_state",
    "read_states",
    "replace_range",
    "write_states",
]
