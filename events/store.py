"""The append-only event store over SQLAlchemy Core (SQLite and PostgreSQL).

Guarantees:
- per-stream versions are contiguous from 1; a stale ``expected_version`` is a ``ConcurrencyError``
  (the unique ``(account_id, version)`` constraint decides races, not application locks);
- every event is chained to its predecessor in the stream by SHA-256 (``events.chain``);
- a retried append with the same idempotency key returns the first result and writes nothing;
  the same key with another payload is an ``IdempotencyConflict``;
- ``read_all`` pages by global position in commit order, so a subscriber that keeps
  ``position > checkpoint`` never skips an event (see ``dialects.take_append_lock``);
- the database itself refuses UPDATE and DELETE of recorded events.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import operator
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError

from events import dialects, fastjson, readahead
from events.chain import (
    EMPTY_HEAD,
    GENESIS_HASH,
    canonical_document,
    canonical_event,
    canonical_json,
    document_encoder,
    event_hash,
    sha256_link,
    verify_links,
)
from events.errors import (
    AppendOnlyViolation,
    AppendOutcomeUnknown,
    ConcurrencyError,
    IdempotencyConflict,
    StoreError,
    StreamKeyUsed,
)
from events.groupcommit import GroupCommit, own_copy
from events.schema import checkpoints, events
from events.timefmt import format_time, parse_sqlite_time, sqlite_time_text, to_utc
from events.types import (
    NewEvent,
    RecordedEvent,
    StreamHead,
    VerifyResult,
    canonical_event_id,
    is_canonical_event_id,
)

Clock = Callable[[], datetime]
# Called inside the appending transaction, after the insert: the place to update read models
# that must commit atomically with the events (e.g. the stored standing). One with a true
# ``pipeline_safe`` attribute may also be called inside a PostgreSQL pipeline
# (``_write_pipelined``): before the insert is known to have succeeded, with the events'
# positions still 0, and where it may only write through ``conn`` or read on its driver
# connection (``dialects.driver_call``): SQLAlchemy sees no rows and no row counts there.
AfterAppend = Callable[[Connection, list[RecordedEvent]], None]

_EVENT_COLUMNS = [
    events.c.position,
    events.c.event_id,
    events.c.account_id,
    events.c.version,
    events.c.type,
    events.c.schema_version,
    events.c.data,
    events.c.metadata,
    events.c.occurred_at,
    events.c.recorded_at,
    events.c.prev_hash,
    events.c.hash,
]


# Above every version the ``version`` column (a 32-bit integer) can hold.
_NO_VERSION = 2**31

# Built once: building a statement and its cache key costs more than SQLite takes to run it.
_STREAM_QUERY = (
    sa.select(*_EVENT_COLUMNS)
    .where(
        events.c.account_id == sa.bindparam("account_id"),
        events.c.version > sa.bindparam("after_version"),
    )
    .order_by(events.c.version)
)
_LATER = events.alias("later")
# ``_STREAM_QUERY`` up to the first version recorded after ``recorded_until``.
_STREAM_UNTIL_QUERY = _STREAM_QUERY.where(
    events.c.version
    < sa.func.coalesce(
        sa.select(sa.func.min(_LATER.c.version))
        .where(
            _LATER.c.account_id == sa.bindparam("account_id"),
            _LATER.c.recorded_at > sa.bindparam("recorded_until"),
        )
        .scalar_subquery(),
        _NO_VERSION,
    )
)
_ALL_QUERY = (
    sa.select(*_EVENT_COLUMNS)
    .where(events.c.position > sa.bindparam("after_position"))
    .order_by(events.c.position)
    .limit(sa.bindparam("limit"))
)

_VERIFY_PAGE = 1000
_INSERT_CHUNK = 500  # rows per SQLite INSERT (12 parameters each): well inside its limit


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class StreamAppend:
    """Events for one stream, appended only if the stream is still at ``expected_version``.

    ``expected_version=None`` appends at whatever the head is (for facts that decide nothing,
    such as a delivery receipt). ``idempotency_key`` (with its ``fingerprint``, by default that
    of the events) is this stream's own key, so that appends with keys of their own can share
    one transaction: if any of them was used before, ``append_streams`` records nothing and
    raises ``StreamKeyUsed`` (append that one alone to get its earlier result).

    ``head``: the stream's head as the caller read it, at ``expected_version``. On PostgreSQL
    an append to one stream whose head is known (this one, or the empty stream's for
    ``expected_version=0``) is pipelined without reading it again (``_write_pipelined``).
    """

    account_id: str
    expected_version: int | None
    events: Sequence[NewEvent]
    idempotency_key: str | None = None
    fingerprint: str | None = None
    head: StreamHead | None = None

    @property
    def known_head(self) -> StreamHead | None:
        """The head to chain onto without reading it, if any. At version 0 it is the empty
        stream's whatever ``head`` says: nothing would check another hash there."""
        if self.expected_version == 0:
            return EMPTY_HEAD
        if self.head is not None and self.head.version == self.expected_version:
            return self.head
        return None


def fingerprint_events(new_events: Sequence[NewEvent]) -> str:
    """Default idempotency fingerprint: the types and payloads, not ids or times."""
    body = canonical_json({"events": [[e.type, e.schema_version, e.data] for e in new_events]})
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def row_to_event(row: Any) -> RecordedEvent:
    """A recorded event from a row of ``_EVENT_COLUMNS`` selected through SQLAlchemy."""
    return RecordedEvent(
        position=row[0],
        event_id=str(row[1]),
        account_id=row[2],
        version=row[3],
        type=row[4],
        schema_version=row[5],
        data=row[6],
        metadata=row[7],
        occurred_at=row[8],
        recorded_at=row[9],
        prev_hash=row[10],
        hash=row[11],
    )


# ---------------------------------------------------------------------- the driver-level SQL
#
# The hot paths (append, head, read_stream, read_all, verify) run these statements on the
# driver's connection with values the driver takes as they are, and decode rows themselves:
# SQLAlchemy's per-statement and per-row processing cost several times what the database takes.
# What is stored and read back is exactly what the ``events`` table's SQLAlchemy types would
# store and return; ``row_to_event`` and ``_EVENT_COLUMNS`` remain for everyone else.

_INSERT_COLUMNS = (
    "event_id, account_id, version, type, schema_version, data, metadata, occurred_at, "
    "recorded_at, prev_hash, hash"
)


# ``format_time``'s text, followed by the era (AD or BC), which ``to_char`` leaves out of the year.
_PG_TIME_FORMAT = 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"AD'


class _SQL:
    """The statements of one database, in its driver's parameter style."""

    def __init__(self, dialect_name: str) -> None:
        pg = dialect_name == "postgresql"
        p = "%s" if pg else "?"
        event_id = "event_id::text" if pg else "event_id"
        # PostgreSQL: the documents come as jsonb's text and are parsed by ``_event_from_postgres``
        # (psycopg's jsonb loader gives the same values, at twice the cost per row).
        documents = "data::text, metadata::text" if pg else "data, metadata"
        columns = (
            f"position, {event_id}, account_id, version, type, schema_version, {documents}, "
            "occurred_at, recorded_at, prev_hash, hash"
        )
        self.postgres = pg
        self.head = (
            f"SELECT version, hash FROM events WHERE account_id = {p} ORDER BY version DESC LIMIT 1"
        )
        stream = f"SELECT {columns} FROM events WHERE account_id = {p} AND version > {p}"
        self.stream = stream + " ORDER BY version"
        self.stream_limit = stream + f" ORDER BY version LIMIT {p}"
        # Up to the first version recorded after the bound (``EventStore.read_stream``).
        until = (
            f" AND version < coalesce((SELECT min(version) FROM events WHERE account_id = {p}"
            f" AND recorded_at > {p}), {_NO_VERSION})"
        )
        self.stream_until = stream + until + " ORDER BY version"
        self.stream_until_limit = stream + until + f" ORDER BY version LIMIT {p}"
        self.all = f"SELECT {columns} FROM events WHERE position > {p} ORDER BY position LIMIT {p}"
        if pg:
            # The documents as text (parsed and written canonically in one go), the times also
            # as the hash recipe writes them (``_postgres_time_text``).
            times = ", ".join(
                f"to_char({c} AT TIME ZONE 'UTC', '{_PG_TIME_FORMAT}')"
                for c in ("occurred_at", "recorded_at")
            )
            # The times themselves only where a datetime can hold them: an edited row's
            # 'infinity', BC or year 10000 would make the driver fail the whole page.
            moments = ", ".join(
                f"CASE WHEN {c} BETWEEN '0001-01-01 00:00:00+00' AND "
                f"'9999-12-31 23:59:59.999999+00' THEN {c} END"
                for c in ("occurred_at", "recorded_at")
            )
            verify_columns = (
                f"position, {event_id}, account_id, version, type, schema_version, data::text, "
                f"metadata::text, {times}, prev_hash, hash, {moments}"
            )
        else:
            # SQLite: json_valid tells the verifier that the stored texts are whole JSON values.
            verify_columns = columns + ", json_valid(data) AND json_valid(metadata)"
        self.verify = (
            f"SELECT {verify_columns} FROM events WHERE account_id = {p} AND version > {p} "
            f"ORDER BY version LIMIT {p}"
        )
        # Every stream in one pass, in (account, version) order along the unique index.
        self.verify_all = (
            f"SELECT {verify_columns} FROM events WHERE (account_id, version) > ({p}, {p}) "
            f"ORDER BY account_id, version LIMIT {p}"
        )
        if pg:
            row = f"({p}::uuid, {p}, {p}, {p}, {p}, {p}::jsonb, {p}::jsonb, {p}, {p}, {p}, {p})"
        else:
            row = "(" + ", ".join([p] * 11) + ")"
        self.insert_one = f"INSERT INTO events ({_INSERT_COLUMNS}) VALUES {row}" + (
            " RETURNING position, event_id::text" if pg else ""
        )
        key = "key" if pg else '"key"'
        self.key = f"SELECT fingerprint, event_ids FROM idempotency_keys WHERE {key} = {p}"
        self.by_id = f"SELECT {columns} FROM events WHERE event_id = {p}{'::uuid' if pg else ''}"
        self.insert_key = (
            f"INSERT INTO idempotency_keys ({key}, fingerprint, account_id, event_ids, "
            f"recorded_at) VALUES ({p}, {p}, {p}, {p}{'::json' if pg else ''}, {p})"
        )
        self._insert_many: dict[int, str] = {}
        self.last_position = "SELECT coalesce(max(position), 0) FROM events"
        # PostgreSQL: many rows as one short statement over arrays, one per column. psycopg
        # parses a statement's placeholders in Python and caches only short statements: a
        # multi-row VALUES list costs it milliseconds per append.
        self.insert_arrays = (
            f"INSERT INTO events ({_INSERT_COLUMNS}) "
            "SELECT e::uuid, a, v, t, s, d::jsonb, m::jsonb, o, r, p, h FROM unnest("
            "%b::text[], %b::text[], %b::int[], %b::text[], %b::int[], %b::text[], %b::text[], "
            "%b::timestamptz[], %b::timestamptz[], %b::text[], %b::text[]"
            ") WITH ORDINALITY AS u(e, a, v, t, s, d, m, o, r, p, h, n) ORDER BY n"
            " RETURNING position, event_id::text"
        )
        # PostgreSQL: the same inserts, of nothing unless the stream's head is the given
        # version with the given hash (``_write_pipelined``).
        head_is = (
            " WHERE EXISTS (SELECT 1 FROM events WHERE account_id = %s AND version = %s"
            " AND hash = %s)"
        )
        self.insert_one_after = (
            f"INSERT INTO events ({_INSERT_COLUMNS}) SELECT {row[1:-1]}{head_is}"
            " RETURNING position, event_id::text"
        )
        self.insert_arrays_after = self.insert_arrays.replace(
            " ORDER BY n", head_is + " ORDER BY n"
        )

    def insert_many(self, count: int) -> str:
        """SQLite: ``count`` rows with their positions given (``_insert`` assigns them)."""
        sql = self._insert_many.get(count)
        if sql is None:
            row = "(" + ", ".join(["?"] * 12) + ")"
            sql = f"INSERT INTO events (position, {_INSERT_COLUMNS}) VALUES " + ", ".join(
                [row] * count
            )
            self._insert_many[count] = sql
        return sql


_SQL_BY_DIALECT = {name: _SQL(name) for name in ("sqlite", "postgresql")}

_loads = fastjson.loads  # exactly ``json.loads``

# ``data`` and ``metadata`` are stored as their canonical JSON text (one serialisation serves the
# hash and the column); NaN and infinities are refused, as JSON has no such numbers.
_encode_document = document_encoder(allow_nan=False)


def _sqlite_text(text: str, moment: datetime) -> str:
    """``sqlite_time_text(moment)`` from ``text = format_time(moment)``, by slicing."""
    if len(text) == 27:
        return text[:10] + " " + text[11:26]
    return sqlite_time_text(moment)


def _row_decoder(time_of: Callable[[Any], datetime]) -> Callable[[Sequence[Any]], RecordedEvent]:
    """The ``RecordedEvent`` of a row of ``_SQL``'s event columns, its times by ``time_of``."""

    def decode(r: Sequence[Any]) -> RecordedEvent:
        return RecordedEvent(
            r[0],
            str(r[1]),
            r[2],
            r[3],
            r[4],
            r[5],
            _loads(r[6]),
            _loads(r[7]),
            time_of(r[8]),
            time_of(r[9]),
            r[10],
            r[11],
        )

    return decode


def _sqlite_times() -> Callable[[str], datetime]:
    """``parse_sqlite_time`` for the rows of one read, a text met just before not parsed again:
    the events of one transaction share their ``recorded_at`` (and often ``occurred_at``)."""
    last_text: str | None = None  # no text read yet (an empty text is parsed, and refused)
    last = _EPOCH

    def parse(text: str) -> datetime:
        nonlocal last_text, last
        if text != last_text:
            last = parse_sqlite_time(text)
            last_text = text
        return last

    return parse


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_event_from_sqlite = _row_decoder(parse_sqlite_time)
_event_from_postgres = _row_decoder(to_utc)


def _decoder(postgres: bool) -> Callable[[Sequence[Any]], RecordedEvent]:
    """The row decoder for one read (``_row_decoder``)."""
    return _event_from_postgres if postgres else _row_decoder(_sqlite_times())


def _sqlite_row_matches(prev: str, r: Sequence[Any]) -> bool:
    """Whether a row of ``_SQL.verify`` on SQLite has the hash of its content, recomputed on the
    row as readers decode it: for the rows ``_verify_sqlite_rows`` does not accept by splicing
    their stored texts (another shape, or a splice that does not match)."""
    try:
        event = _event_from_sqlite(r)
        expected: str = r[11]
        return event_hash(prev, event) == expected
    except (ValueError, TypeError, RecursionError):
        return False  # readers cannot decode it either (appends refuse such values)


_sha256 = hashlib.sha256
_quote = json.encoder.c_encode_basestring or json.encoder.encode_basestring  # type: ignore[attr-defined]


def _verify_sqlite_rows(rows: Iterable[Sequence[Any]]) -> VerifyResult:
    """``verify_links`` over one stream's ``_SQL.verify`` rows on SQLite, the usual row's check
    written out in the loop (about a quarter faster than through ``verify_links``' callbacks).

    A row with the exact shapes this store writes (canonical JSON text, validated as whole JSON
    values by SQLite, and times in SQLAlchemy's format) is hashed with its stored texts spliced
    in, exactly as ``canonical_event`` joins them. A match means the stored texts are byte for
    byte the canonical texts once hashed, so readers, who parse them, get exactly what was
    hashed. Any other row, or one whose splice does not match, is decided by
    ``_sqlite_row_matches``: the recipe on the row as readers decode it
    (``tests/integration/test_store_verify_sqlite.py`` compares the two ways).
    """
    prev = GENESIS_HASH
    count = 0
    sha, quote = _sha256, _quote
    for r in rows:
        count += 1
        (
            _,
            event_id,
            account_id,
            version,
            type_,
            schema_version,
            data,
            metadata,
            occurred,
            recorded,
            prev_hash,
            stored,
            plain,
        ) = r
        if version != count:
            return VerifyResult(
                False, count, None, count, f"version {version} found where {count} was expected"
            )
        if prev_hash != prev:
            return VerifyResult(
                False, count, None, version, "prev_hash does not match the previous event's hash"
            )
        if not (
            plain
            and type(event_id) is str
            and type(account_id) is str
            and type(version) is int
            and type(type_) is str
            and type(schema_version) is int
            and type(data) is str
            and type(metadata) is str
            and type(occurred) is str
            and type(recorded) is str
            and len(occurred) == 26
            and len(recorded) == 26
            and occurred[10] == " "
            and recorded[10] == " "
            and sha(
                (
                    f'{prev}{{"account_id":{quote(account_id)},"data":{data},'
                    f'"event_id":{quote(event_id)},"metadata":{metadata},'
                    f'"occurred_at":{quote(occurred[:10] + "T" + occurred[11:] + "Z")},'
                    f'"recorded_at":{quote(recorded[:10] + "T" + recorded[11:] + "Z")},'
                    f'"schema_version":{schema_version},"type":{quote(type_)},'
                    f'"version":{version}}}'
                ).encode()
            ).hexdigest()
            == stored
        ) and not _sqlite_row_matches(prev, r):
            return VerifyResult(
                False, count, None, version, "hash does not match the event's content"
            )
        prev = stored
    return VerifyResult(True, count, prev if count else GENESIS_HASH)


def _postgres_time_text(text: Any, moment: datetime | None) -> str:
    """``format_time(moment)``, given ``text``, the time ``to_char``'d with ``_PG_TIME_FORMAT``.

    The two agree for years 1000 to 9999 AD; ``format_time`` writes other years differently.
    ``moment`` None: a time no datetime holds (infinite, BC, after 9999), which no append
    wrote; its text, or none, never matches a hash.
    """
    if type(text) is str and len(text) == 29 and text[0] != "0" and text[27:] == "AD":
        return text[:27]
    if moment is None:
        return text if type(text) is str else ""
    return format_time(moment)


def _postgres_row_matches(prev: str, r: Sequence[Any]) -> bool:
    """Whether a row of ``_SQL.verify`` on PostgreSQL has the hash of its content.

    Its documents come as ``jsonb``'s text: canonically written, they are what readers (who
    parse that same text) get. The times are the recipe's text (``_postgres_time_text``).
    """
    expected: str = r[11]
    try:
        data = _canonical_from_text(r[6], canonical_document)
        metadata = _canonical_from_text(r[7], canonical_document)
    except RecursionError:
        return False  # nested deeper than any append writes: readers cannot decode it either
    return (
        sha256_link(
            prev,
            canonical_event(
                r[1],
                r[2],
                r[3],
                r[4],
                r[5],
                data,
                metadata,
                _postgres_time_text(r[8], r[12]),
                _postgres_time_text(r[9], r[13]),
            ),
        )
        == expected
    )


_canonical_from_text = fastjson.canonical_from_text


# A row's version, prev_hash and hash.
_link: Callable[[Sequence[Any]], tuple[int, str, str]] = operator.itemgetter(3, 10, 11)
_account_of: Callable[[Sequence[Any]], str] = operator.itemgetter(2)
_stream_key_of: Callable[[Sequence[Any]], tuple[str, int]] = operator.itemgetter(2, 3)
_position_of: Callable[[Sequence[Any]], int] = operator.itemgetter(0)
_version_of: Callable[[Sequence[Any]], int] = operator.itemgetter(3)


@dataclass(frozen=True, slots=True)
class _Write:
    """One append, ready to run in a write transaction."""

    appends: Sequence[StreamAppend]
    documents: list[list[_Documents | None]]
    idempotency_key: str | None
    fingerprint: str | None
    recorded_at: datetime
    after_append: AfterAppend | None

    def run(
        self,
        driver: dialects.DriverConnection,
        sql: _SQL,
        conn: Connection | None = None,
        head: StreamHead | None = None,
    ) -> list[list[RecordedEvent]]:
        """The append in the transaction on ``driver`` (and ``conn``, for ``after_append``);
        with its one stream's ``head`` known, pipelined (``_write_pipelined``, PostgreSQL)."""
        if head is not None:
            return [_write_pipelined(driver, sql, self, head, conn)]
        recorded = _write(
            driver,
            sql,
            self.appends,
            self.documents,
            self.idempotency_key,
            self.fingerprint,
            self.recorded_at,
        )
        if self.after_append is not None:
            assert conn is not None
            self.after_append(conn, [e for batch in recorded for e in batch])
        return recorded


class EventStore:
    """Append to and read from the log. Thread-safe; share one per process."""

    def __init__(
        self,
        engine: Engine,
        clock: Clock = _utc_now,
        max_head_retries: int = 20,
        *,
        pipeline_known_heads: bool = True,
    ):
        """``pipeline_known_heads=False``: on PostgreSQL, read every head under the lock and
        group appends, as before ``_write_pipelined`` (``benchmarks/bench_write_path.py``
        compares the two)."""
        self.engine = engine
        self._clock = clock
        self._max_head_retries = max_head_retries
        self._pipeline_known_heads = pipeline_known_heads
        # Appends of this process's threads that meet each other share one transaction.
        self._writes: GroupCommit[_Write, list[list[RecordedEvent]] | Exception] = GroupCommit(
            self._write_together
        )

    # ------------------------------------------------------------------ writing

    def append(
        self,
        account_id: str,
        expected_version: int | None,
        new_events: Sequence[NewEvent],
        idempotency_key: str | None = None,
        *,
        fingerprint: str | None = None,
        after_append: AfterAppend | None = None,
        head: StreamHead | None = None,
    ) -> list[RecordedEvent]:
        """Append ``new_events`` to one stream atomically and return them as recorded.
        ``head``: the stream's head as read at ``expected_version`` (``StreamAppend``)."""
        [recorded] = self.append_streams(
            [StreamAppend(account_id, expected_version, new_events, head=head)],
            idempotency_key,
            fingerprint=fingerprint,
            after_append=after_append,
        )
        return recorded

    def append_streams(
        self,
        appends: Sequence[StreamAppend],
        idempotency_key: str | None = None,
        *,
        fingerprint: str | None = None,
        after_append: AfterAppend | None = None,
    ) -> list[list[RecordedEvent]]:
        """Append to several streams in one transaction: all are recorded, or none."""
        if not appends or not any(a.events for a in appends):
            raise ValueError("nothing to append")
        _check_storable(appends, idempotency_key)
        appends = _with_canonical_ids(appends)
        # The streams a retry must have written to: the same key for other streams is another
        # request (``IdempotencyConflict``), whatever the fingerprint says.
        streams = {a.account_id for a in appends if a.events} if idempotency_key else set()
        if idempotency_key is not None:
            fingerprint = fingerprint or fingerprint_events([e for a in appends for e in a.events])
            previous = self._idempotent_result(idempotency_key, fingerprint, streams)
            if previous is not None:
                return previous
        attempts = 0
        while True:
            attempts += 1
            try:
                return self._append_once(appends, idempotency_key, fingerprint, after_append)
            except ConcurrencyError:
                # The same request may have won meanwhile (a concurrent retry): its result stands.
                if idempotency_key is not None:
                    assert fingerprint is not None
                    previous = self._idempotent_result(idempotency_key, fingerprint, streams)
                    if previous is not None:
                        return previous
                # Only "append at head" is retried here; an explicit expected version is the
                # caller's to re-decide.
                if attempts >= self._max_head_retries or any(
                    a.expected_version is not None for a in appends
                ):
                    raise
            except _DuplicateIdempotencyKey:
                if idempotency_key is not None:
                    assert fingerprint is not None
                    previous = self._idempotent_result(idempotency_key, fingerprint, streams)
                    if previous is not None:
                        return previous
                if any(a.idempotency_key is not None for a in appends):
                    raise StreamKeyUsed(
                        "a stream's idempotency key was used before: append it on its own"
                    ) from None
                raise StoreError("idempotency record vanished") from None  # pragma: no cover

    def _append_once(
        self,
        appends: Sequence[StreamAppend],
        idempotency_key: str | None,
        fingerprint: str | None,
        after_append: AfterAppend | None,
    ) -> list[list[RecordedEvent]]:
        try:
            return self._append_attempt(appends, idempotency_key, fingerprint, after_append)
        except _LostConnection as lost:
            return self._settle(appends, lost)

    def _settle(
        self, appends: Sequence[StreamAppend], lost: _LostConnection
    ) -> list[list[RecordedEvent]]:
        """The outcome of an append whose connection was lost (PostgreSQL): what it recorded
        if its transaction committed (the server's answer to COMMIT never arrived), else the
        error that lost the connection (nothing was written). ``AppendOutcomeUnknown`` when the
        database cannot be asked, and when it finds nothing through a connection pooler: there
        the lost session cannot be ended, and may still commit."""
        ids = [e.event_id for item in appends for e in item.events]
        try:
            if lost.pid is not None:
                dialects.end_session(self.engine, lost.pid)  # its outcome is final from here on
            rows = self._fetch(self._sql.by_id, (ids[0],))
        except (DBAPIError, TimeoutError) as exc:
            raise AppendOutcomeUnknown(
                "the connection to the database was lost while the append was committed, and "
                f"the database cannot be asked whether it was: it may have been recorded ({exc})"
            ) from lost.error
        if not rows and lost.pid is None:
            raise AppendOutcomeUnknown(
                "the connection to the database was lost while the append was committed, "
                "through a connection pooler: it is not recorded yet, but its server session, "
                "which cannot be ended from here, may still record it"
            ) from lost.error
        if not rows:
            # A copy of its own: the appends of a group that lost its connection share the
            # error, and each raises it in its own thread (their tracebacks must not mix).
            raise own_copy(lost.error)
        by_id = self._events_by_id(ids)
        return [[by_id[e.event_id] for e in item.events] for item in appends]

    def _append_attempt(
        self,
        appends: Sequence[StreamAppend],
        idempotency_key: str | None,
        fingerprint: str | None,
        after_append: AfterAppend | None,
    ) -> list[list[RecordedEvent]]:
        sql = self._sql
        # Serialised before taking the connection (on SQLite, the write lock): one canonical
        # JSON text per document serves the hash and the stored column.
        documents = [_documents(item.events, sql.postgres) for item in appends]
        write = _Write(
            appends, documents, idempotency_key, fingerprint, to_utc(self._clock()), after_append
        )
        if (
            sql.postgres
            and len(appends) == 1
            and self._pipeline_known_heads
            and (after_append is None or getattr(after_append, "pipeline_safe", False))
        ):
            head = appends[0].known_head
            if head is not None and all(d is not None for d in documents[0]):
                return self._write_alone(write, head)
        keyed = idempotency_key is not None or any(a.idempotency_key is not None for a in appends)
        if keyed and sql.postgres:
            # Alone: on PostgreSQL a key's row may have to wait for another transaction's,
            # which must not happen while holding the append lock for others (SQLite has one
            # writer at a time: no such wait).
            return self._write_alone(write)
        outcome = self._writes.submit(write)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def _write_alone(
        self, write: _Write, head: StreamHead | None = None
    ) -> list[list[RecordedEvent]]:
        """One append in a transaction of its own (``head``: ``_Write.run``)."""
        sql = self._sql
        driver: dialects.DriverConnection | None = None
        pid: int | None = None
        try:
            if write.after_append is None:
                # Nothing needs a SQLAlchemy connection: the same transaction on the driver's.
                with dialects.write_transaction(self.engine) as driver:
                    pid = dialects.session_pid(driver)
                    return write.run(driver, sql, head=head)
            with dialects.write_connection(self.engine) as conn, conn.begin():
                driver = dialects.DriverConnection.of(conn)
                pid = dialects.session_pid(driver)
                return write.run(driver, sql, conn, head)
        except IntegrityError as exc:
            raise _translate_integrity_error(exc, write.appends) from exc
        except DBAPIError as exc:
            lost = _LostConnection.of(exc, driver, pid)
            if lost is None:
                raise
            raise lost from exc

    def _write_together(
        self, writes: Sequence[_Write]
    ) -> list[list[list[RecordedEvent]] | Exception]:
        """Appends that met in one transaction, each in a savepoint of its own: one that fails
        (a stale version) is rolled back alone and gets its error; the others commit together,
        with one commit (one fsync) for all. An error of the transaction itself reaches all."""
        if len(writes) == 1:
            try:
                return [self._write_alone(writes[0])]
            except Exception as exc:
                return [exc]
        sql = self._sql
        outcomes: list[list[list[RecordedEvent]] | Exception] = []
        driver: dialects.DriverConnection | None = None
        pid: int | None = None
        try:
            with dialects.write_connection(self.engine) as conn, conn.begin():
                driver = dialects.DriverConnection.of(conn)
                pid = dialects.session_pid(driver)
                for write in writes:
                    savepoint = conn.begin_nested()
                    try:
                        recorded = write.run(driver, sql, conn)
                    except Exception as exc:
                        if isinstance(exc, DBAPIError) and dialects.connection_lost(exc, driver):
                            # The group's connection, not this append's alone: nothing more
                            # can run on it (the next savepoint would be a PendingRollbackError).
                            raise
                        # This append fails alone; if even its savepoint cannot be rolled back,
                        # the transaction is broken and the error reaches every append of the
                        # group.
                        savepoint.rollback()
                        if isinstance(exc, IntegrityError):
                            outcomes.append(_translate_integrity_error(exc, write.appends))
                        else:
                            outcomes.append(exc)
                    else:
                        savepoint.commit()
                        outcomes.append(recorded)
        except DBAPIError as exc:
            lost = _LostConnection.of(exc, driver, pid)
            if lost is None:
                raise
            raise lost from exc
        return outcomes

    def key_used(self, key: str) -> bool:
        """Whether an append recorded this idempotency key (one indexed read)."""
        return bool(self._fetch(self._sql.key, (key,)))

    def recorded_for_key(self, key: str, fingerprint: str) -> list[RecordedEvent] | None:
        """What an earlier append with this idempotency key recorded, or None if it is new.

        Raises ``IdempotencyConflict`` when the key was used with another fingerprint.
        """
        previous = self._idempotent_result(key, fingerprint)
        return None if previous is None else [e for batch in previous for e in batch]

    def _idempotent_result(
        self, key: str, fingerprint: str, streams: set[str] | None = None
    ) -> list[list[RecordedEvent]] | None:
        """What the append with this key recorded, per stream; ``IdempotencyConflict`` if it
        had another fingerprint or (``streams`` given) wrote to other streams than these."""
        rows = self._fetch(self._sql.key, (key,))
        if not rows:
            return None  # the usual case: one indexed read on the driver's connection
        stored_fingerprint, stored_ids = rows[0]
        if stored_fingerprint != fingerprint:
            raise IdempotencyConflict(key, stored_fingerprint)
        # The JSON column's text (SQLite), or the value psycopg already parsed (PostgreSQL).
        ids = list(_loads(stored_ids) if isinstance(stored_ids, str) else stored_ids)
        by_id = self._events_by_id(ids)
        ordered = [by_id[i] for i in ids]
        grouped: dict[str, list[RecordedEvent]] = {}
        for event in ordered:
            grouped.setdefault(event.account_id, []).append(event)
        if streams is not None and set(grouped) != streams:
            raise IdempotencyConflict(key)
        return list(grouped.values())

    def _events_by_id(self, ids: Sequence[str]) -> dict[str, RecordedEvent]:
        """The recorded events of ``ids`` (those found), by event id."""
        with self.engine.connect() as conn:
            found = conn.execute(sa.select(*_EVENT_COLUMNS).where(events.c.event_id.in_(ids))).all()
        return {str(r[1]): row_to_event(r) for r in found}

    # ------------------------------------------------------------------ reading

    def head(self, account_id: str) -> StreamHead:
        """The stream's last version and hash; version 0 and the zero hash when empty."""
        rows = self._fetch(self._sql.head, (account_id,))
        return EMPTY_HEAD if not rows else StreamHead(rows[0][0], rows[0][1])

    def read_stream(
        self,
        account_id: str,
        after_version: int = 0,
        recorded_until: datetime | None = None,
        limit: int | None = None,
        *,
        conn: Connection | None = None,
    ) -> list[RecordedEvent]:
        """Events of one stream with ``version > after_version``, in version order.

        ``recorded_until``: only those before the stream's first event recorded after it. A
        stream's times need not rise with its versions (writers whose clocks are apart), and a
        version never counts without the ones before it, so this is always a prefix of the
        stream, as ``projections.standing.recorded_until`` folds it.
        """
        if conn is not None:
            # In the caller's transaction: through SQLAlchemy, which also begins it if need be.
            query = _STREAM_QUERY
            params: dict[str, Any] = {"account_id": account_id, "after_version": after_version}
            if recorded_until is not None:
                query = _STREAM_UNTIL_QUERY
                params["recorded_until"] = to_utc(recorded_until)
            if limit is not None:
                query = query.limit(sa.bindparam("limit"))
                params["limit"] = limit
            return [row_to_event(r) for r in conn.execute(query, params)]
        sql = self._sql
        values: tuple[Any, ...] = (account_id, after_version)
        if recorded_until is None:
            statement = sql.stream if limit is None else sql.stream_limit
        else:
            until = to_utc(recorded_until)
            values += (account_id, until if sql.postgres else sqlite_time_text(until))
            statement = sql.stream_until if limit is None else sql.stream_until_limit
        if limit is not None:
            values += (limit,)
        decode = _decoder(sql.postgres)
        return [decode(r) for r in self._fetch(statement, values)]

    def get_event(self, event_id: str) -> RecordedEvent | None:
        """One event by its id, or None."""
        try:
            event_id = canonical_event_id(event_id)  # the only form stored
        except ValueError:
            return None
        sql = self._sql
        decode = _decoder(sql.postgres)
        rows = self._fetch(sql.by_id, (event_id,))
        return decode(rows[0]) if rows else None

    def iter_stream(self, account_id: str, page_size: int = 1000) -> Iterator[RecordedEvent]:
        """Every event of a stream, in keyset pages (constant memory)."""
        after = 0
        while True:
            page = self.read_stream(account_id, after, limit=page_size)
            yield from page
            if len(page) < page_size:
                return
            after = page[-1].version

    def read_all(self, after_position: int = 0, limit: int = 500) -> list[RecordedEvent]:
        """Events of every stream with ``position > after_position``, in commit order."""
        sql = self._sql
        decode = _decoder(sql.postgres)
        return [decode(r) for r in self._fetch(sql.all, (after_position, limit))]

    def iter_all(self, after_position: int = 0, page_size: int = 1000) -> Iterator[RecordedEvent]:
        """Every event after ``after_position`` in keyset pages (constant memory), the next page
        read ahead while the caller works on this one (``readahead``)."""
        sql = self._sql
        decode = _decoder(sql.postgres)
        rows = readahead.paged(
            lambda after: self._fetch(sql.all, (after, page_size)),
            _position_of,
            after_position,
            page_size,
            ahead=sql.postgres,
        )
        try:
            for row in rows:
                yield decode(row)
        finally:
            rows.close()  # stops the reader thread when the caller stops early

    def max_position(self) -> int:
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.coalesce(sa.func.max(events.c.position), 0))
                ).scalar_one()
            )

    def last_event(self) -> tuple[int, str] | None:
        """The position and id of the newest event; None while the log is empty."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(events.c.position, events.c.event_id)
                .order_by(events.c.position.desc())
                .limit(1)
            ).first()
        return None if row is None else (int(row[0]), str(row[1]))

    def account_ids(self) -> Iterator[str]:
        """Every stream id, in order, paged."""
        after = ""
        while True:
            with self.engine.connect() as conn:
                page = list(
                    conn.execute(
                        sa.select(events.c.account_id)
                        .where(events.c.account_id > after)
                        .group_by(events.c.account_id)
                        .order_by(events.c.account_id)
                        .limit(1000)
                    ).scalars()
                )
            yield from page
            if len(page) < 1000:
                return
            after = page[-1]

    def verify(self, account_id: str) -> VerifyResult:
        """Recompute the stream's hash chain: intact, or the first broken version and why.

        The same checks as ``verify_chain(self.iter_stream(account_id))``, on the rows as the
        driver gives them: on SQLite the stored JSON texts are hashed as they are when they have
        the shape this store writes (and recomputed as readers decode them when not).
        """
        return self._verify_stream(self._verify_rows(account_id))

    def verify_all(self) -> Iterator[tuple[str, VerifyResult]]:
        """``(account_id, verify(account_id))`` for every stream, in account order, from one
        ordered pass over the log (pages along the ``(account_id, version)`` index) instead of
        a query per stream. Streams appended to meanwhile are checked as far as the pass saw."""
        for account_id, rows in itertools.groupby(self._all_verify_rows(), _account_of):
            yield account_id, self._verify_stream(rows)

    def _verify_stream(self, rows: Iterable[Sequence[Any]]) -> VerifyResult:
        """``verify_links`` over one stream's ``_SQL.verify`` rows, on this database."""
        if self._sql.postgres:
            return verify_links(rows, _link, _postgres_row_matches)
        return _verify_sqlite_rows(rows)

    def _all_verify_rows(self) -> Iterator[Sequence[Any]]:
        sql, size = self._sql, _VERIFY_PAGE
        return readahead.paged(
            lambda after: self._fetch(sql.verify_all, (*after, size)),
            _stream_key_of,
            ("", 0),
            size,
            ahead=sql.postgres,
        )

    def _verify_rows(self, account_id: str) -> Iterator[Sequence[Any]]:
        sql, size = self._sql, _VERIFY_PAGE
        return readahead.paged(
            lambda after: self._fetch(sql.verify, (account_id, after, size)),
            _version_of,
            0,
            size,
            ahead=False,  # one stream: mostly a single page
        )

    # ------------------------------------------------------------------ driver-level reads

    @property
    def _sql(self) -> _SQL:
        return _SQL_BY_DIALECT[self.engine.dialect.name]

    def _fetch(self, statement: str, params: Sequence[Any]) -> list[Any]:
        """The rows of one read-only statement (``dialects.fetch_all``)."""
        return dialects.fetch_all(self.engine, statement, params)

    # ------------------------------------------------------------------ checkpoints

    @staticmethod
    def get_checkpoint(conn: Connection, name: str) -> int:
        value = conn.execute(
            sa.select(checkpoints.c.position).where(checkpoints.c.name == name)
        ).scalar()
        return int(value or 0)

    def set_checkpoint(self, conn: Connection, name: str, position: int) -> None:
        """Record a subscription's position, in the caller's transaction, forward or back. One
        upsert: two writers at once leave the position of the one that commits last, also when
        both write the name for the first time (an update, then an insert when nothing was
        updated, failed there on the unique name)."""
        self._write_checkpoint(conn, name, position, moves_back=True)

    def advance_checkpoint(self, conn: Connection, name: str, position: int) -> None:
        """Record a position that only moves forward, in the caller's transaction: one not past
        the recorded position changes nothing. The database keeps the greater (one upsert), so
        two writers leave the greater whichever commits last; reading the position and then
        writing would not (on PostgreSQL, at READ COMMITTED, both read the old one and the
        later writer moves it back), and two first writes would collide on the name."""
        self._write_checkpoint(conn, name, position, moves_back=False)

    def _write_checkpoint(
        self, conn: Connection, name: str, position: int, *, moves_back: bool
    ) -> None:
        now = to_utc(self._clock())
        insert = dialects.conflict_insert(conn, checkpoints).values(
            name=name, position=position, updated_at=now
        )
        conn.execute(
            insert.on_conflict_do_update(
                index_elements=[checkpoints.c.name],
                set_={
                    "position": insert.excluded.position,
                    "updated_at": insert.excluded.updated_at,
                },
                where=None if moves_back else checkpoints.c.position < insert.excluded.position,
            )
        )


class _DuplicateIdempotencyKey(StoreError):
    pass


class _LostConnection(StoreError):
    """An append lost its connection (``error``) to the server process ``pid`` (None: unknown,
    through a connection pooler): whether it was committed is for ``EventStore._settle`` to
    find out."""

    def __init__(self, error: DBAPIError, pid: int | None):
        super().__init__(error, pid)  # ``args`` rebuild it: group commit copies it per thread
        self.error = error
        self.pid = pid

    def __str__(self) -> str:
        return str(self.error)

    @staticmethod
    def of(
        exc: DBAPIError, driver: dialects.DriverConnection | None, pid: int | None
    ) -> _LostConnection | None:
        """``exc``, met on ``driver`` (server session ``pid``: ``dialects.session_pid``), as a
        lost PostgreSQL connection whose outcome is to be found out; None if it is not one."""
        if (
            driver is not None
            and driver.dialect.name == "postgresql"
            and dialects.connection_lost(exc, driver)
        ):
            return _LostConnection(exc, pid)
        return None


# One event's documents, ready to append: the canonical texts of ``data`` and ``metadata`` and
# the values readers will get back from them.
_Documents = tuple[str, str, Any, Any]


def _documents(new_events: Sequence[NewEvent], postgres: bool) -> list[_Documents | None]:
    """Each event's documents, or None where only the database can say how they are stored."""
    prepared: list[_Documents | None] = []
    for event in new_events:
        data, metadata = event.data, event.metadata
        data_kind, metadata_kind = _plain_kind(data, postgres), _plain_kind(metadata, postgres)
        if not (data_kind and metadata_kind):
            prepared.append(None)
            continue
        try:
            data_text = _encode_plain(data, data_kind)
            metadata_text = _encode_plain(metadata, metadata_kind)
        except ValueError as exc:
            raise StoreError(
                f"an event's data or metadata cannot be stored as JSON: {exc}"
            ) from exc
        # What readers get back: a fresh copy (a shallow one suffices for a dict of scalars).
        prepared.append(
            (
                data_text,
                metadata_text,
                dict(data) if data_kind & _FLAT else _loads(data_text),
                dict(metadata) if metadata_kind & _FLAT else _loads(metadata_text),
            )
        )
    return prepared


def _encode_plain(document: Any, kind: int) -> str:
    """``_encode_document(document)`` of a plain document of this ``_plain_kind``."""
    if kind & _FLOATS:
        return _encode_document(document)
    # No floats, plain types only: orjson writes the same text (fastjson.canonical_plain).
    return fastjson.canonical_plain(document, _encode_document)


def _complete_documents(
    driver: dialects.DriverConnection,
    new_events: Sequence[NewEvent],
    documents: list[_Documents | None],
) -> None:
    """Fill in the documents ``_documents`` left to the database (``dialects.as_stored_json``)."""
    for i, event in enumerate(new_events):
        if documents[i] is not None:
            continue
        try:
            data, metadata = dialects.as_stored_json(driver, [event.data, event.metadata])
            data_text, metadata_text = _encode_document(data), _encode_document(metadata)
        except (ValueError, DBAPIError) as exc:
            reason = exc.orig if isinstance(exc, DBAPIError) else exc
            raise StoreError(
                f"an event's data or metadata cannot be stored as JSON: {reason}"
            ) from exc
        documents[i] = (data_text, metadata_text, data, metadata)


def _is_plain(document: Any, postgres: bool) -> int:
    """Whether ``document`` is stored exactly as its canonical JSON text reads back: 0 when
    not, else ``_NESTED``, with ``_FLOATS`` added when it holds a float.

    Plain is the usual payload: dicts with string keys, lists, strings, integers, booleans,
    None, and floats. Anything else (non-string keys, which JSON turns into strings; other
    types) takes the general path. On PostgreSQL also NUL characters and the floats ``jsonb``
    rewrites (``dialects.as_stored_json``), which that path sends through the server.
    """
    floats = 0
    stack = [document]
    pop, push = stack.pop, stack.append
    while stack:
        value = pop()
        kind = type(value)
        if kind is dict:
            for key, item in value.items():
                if type(key) is not str or (postgres and "\x00" in key):
                    return 0
                item_kind = type(item)
                if item_kind is str:
                    if postgres and "\x00" in item:
                        return 0
                elif item_kind is not int:
                    push(item)
        elif kind is str:
            if postgres and "\x00" in value:
                return 0
        elif kind is list:
            stack.extend(value)
        elif kind is float:
            if postgres and not dialects.jsonb_keeps_float(value):
                return 0
            floats = _FLOATS
        elif not (kind is int or kind is bool or value is None):
            return 0
    return _NESTED | floats


# ``_plain_kind`` flags: a dict of scalars, anything else plain; plus "holds a float".
_FLAT, _NESTED, _FLOATS = 1, 2, 4


def _plain_kind(document: Any, postgres: bool) -> int:
    """0 when not plain (``_is_plain``); else ``_FLAT`` for a dict of scalars, ``_NESTED``
    otherwise, either with ``_FLOATS`` added when the document holds a float."""
    if type(document) is not dict:
        return _is_plain(document, postgres)
    nested = 0
    floats = 0
    for key, item in document.items():
        if type(key) is not str or (postgres and "\x00" in key):
            return 0
        kind = type(item)
        if kind is str:
            if postgres and "\x00" in item:
                return 0
        elif kind is float:
            if postgres and not dialects.jsonb_keeps_float(item):
                return 0
            floats = _FLOATS
        elif not (kind is int or kind is bool or item is None):
            inner = _is_plain(item, postgres)
            if not inner:
                return 0
            nested = _NESTED
            floats |= inner & _FLOATS
    return (nested or _FLAT) | floats


def _write(
    driver: dialects.DriverConnection,
    sql: _SQL,
    appends: Sequence[StreamAppend],
    documents: list[list[_Documents | None]],
    idempotency_key: str | None,
    fingerprint: str | None,
    recorded_at: datetime,
) -> list[list[RecordedEvent]]:
    """The body of one append transaction, up to (not including) ``after_append``."""
    for item, docs in zip(appends, documents, strict=True):
        if any(d is None for d in docs):
            _complete_documents(driver, item.events, docs)
    recorded_text = format_time(recorded_at)
    stored_at: Any = recorded_at if sql.postgres else _sqlite_text(recorded_text, recorded_at)
    _insert_keys(driver, sql, appends, idempotency_key, fingerprint, stored_at)
    # Heads are read under the lock: no other appender can move them before our commit, so
    # "append at head" never loses a race and a stale expected version is caught here rather
    # than by the unique constraint.
    heads = _locked_heads(driver, sql, [item.account_id for item in appends])
    params: list[tuple[Any, ...]] = []
    per_stream: list[list[tuple[Any, ...]]] = []
    for item, head, docs in zip(appends, heads, documents, strict=True):
        if item.expected_version is not None and item.expected_version != head.version:
            raise ConcurrencyError(item.account_id, item.expected_version, head.version)
        per_stream.append(
            _chain(
                item.account_id,
                head,
                item.events,
                docs,  # type: ignore[arg-type]  # completed above
                recorded_at,
                recorded_text,
                stored_at,
                sql.postgres,
                params,
            )
        )
    positions = iter(_insert(driver, sql, params))
    return [[RecordedEvent(next(positions), *fields) for fields in batch] for batch in per_stream]


def _insert_keys(
    driver: dialects.DriverConnection,
    sql: _SQL,
    appends: Sequence[StreamAppend],
    idempotency_key: str | None,
    fingerprint: str | None,
    stored_at: Any,
) -> None:
    """Record the append's idempotency key and its streams' own keys. Before the append lock:
    waiting on another writer's key row while holding the lock could deadlock."""
    if idempotency_key is not None:
        values = (
            idempotency_key,
            fingerprint,
            appends[0].account_id,
            json.dumps([e.event_id for item in appends for e in item.events]),
            stored_at,
        )
        driver.execute(sql.insert_key, values)
    for item in appends:
        if item.idempotency_key is not None:
            ids = json.dumps([e.event_id for e in item.events])
            stream_fingerprint = item.fingerprint or fingerprint_events(item.events)
            driver.execute(
                sql.insert_key,
                (item.idempotency_key, stream_fingerprint, item.account_id, ids, stored_at),
            )


def _write_pipelined(
    driver: dialects.DriverConnection,
    sql: _SQL,
    write: _Write,
    head: StreamHead,
    conn: Connection | None,
) -> list[RecordedEvent]:
    """PostgreSQL, one stream whose head is known (``StreamAppend.known_head``), every document
    ready: BEGIN, the keys, the append lock, the insert and ``after_append``'s writes go out as
    one pipeline; the head is not read, and the lock is held for the server's work, not across
    round trips of this client.

    The unique ``(account_id, version)`` constraint refuses the insert if the stream has moved
    past ``head``. A new stream's transaction commits in the same round trip (a refused insert
    aborts it). After version 0 the insert also requires the head's row with its hash (it
    inserts nothing otherwise: ``ConcurrencyError``), so that transaction commits in one more
    round trip, once the insert is seen to have happened.

    ``after_append`` gets the events before the database has given their positions (0 until
    then): it must not use them. It runs before the append is known to have succeeded; its
    writes are rolled back with the append.
    """
    [item] = write.appends
    [docs] = write.documents
    recorded_at = write.recorded_at
    params: list[tuple[Any, ...]] = []
    fields = _chain(
        item.account_id,
        head,
        item.events,
        docs,  # type: ignore[arg-type]  # complete: checked by the caller
        recorded_at,
        format_time(recorded_at),
        recorded_at,
        True,
        params,
    )
    guard = () if head.version == 0 else (item.account_id, head.version, head.hash)
    statement, args = _postgres_insert(sql, params, guard)

    def run(dbapi_conn: Any) -> list[Any]:
        # BEGIN and COMMIT are sent as statements of the pipeline: psycopg's own BEGIN would
        # sync it, a round trip of its own. The caller's transaction is left with nothing to do.
        dbapi_conn.autocommit = True
        try:
            with dbapi_conn.pipeline():
                dbapi_conn.execute("BEGIN")
                _insert_keys(
                    driver,
                    sql,
                    write.appends,
                    write.idempotency_key,
                    write.fingerprint,
                    recorded_at,
                )
                dialects.take_append_lock(driver)
                cursor = dbapi_conn.execute(statement, args)
                if write.after_append is not None:
                    assert conn is not None
                    write.after_append(conn, [RecordedEvent(0, *f) for f in fields])
                ended = None if guard else dbapi_conn.execute("COMMIT")
            rows: list[Any] = cursor.fetchall()
            if guard:
                ended = dbapi_conn.execute("COMMIT" if rows else "ROLLBACK")
            # A transaction that failed (an error something caught) answers COMMIT with ROLLBACK.
            if rows and ended is not None and ended.statusmessage != "COMMIT":
                raise StoreError("the append's transaction was rolled back")
        except BaseException:
            # Discarded (the server rolls its transaction back): after an error in a pipeline,
            # psycopg may count as prepared a statement whose preparation the server skipped,
            # and the connection's next use of it would fail.
            driver.invalidate()
            raise
        dbapi_conn.autocommit = False  # idle: the transaction was committed or rolled back
        return rows

    returned = driver.call(statement, run, args)
    if not returned:
        raise ConcurrencyError(item.account_id, head.version)
    positions = iter(_positions_of(params, returned))
    return [RecordedEvent(next(positions), *f) for f in fields]


def _locked_heads(
    driver: dialects.DriverConnection, sql: _SQL, account_ids: list[str]
) -> list[StreamHead]:
    """Take the append lock, then read each stream's head (one round trip on PostgreSQL)."""

    def run(dbapi_conn: Any) -> list[Any]:
        if sql.postgres:
            # BEGIN, the lock and the head reads go out together; the server still runs them
            # in order, so every head is read after the lock is held.
            with dbapi_conn.pipeline():
                dialects.take_append_lock(driver)
                cursors = [dbapi_conn.execute(sql.head, (a,)) for a in account_ids]
            return [cursor.fetchone() for cursor in cursors]
        dialects.take_append_lock(driver)
        return [dbapi_conn.execute(sql.head, (a,)).fetchone() for a in account_ids]

    rows = driver.call(sql.head, run)
    return [EMPTY_HEAD if r is None else StreamHead(r[0], r[1]) for r in rows]


def _chain(
    account_id: str,
    head: StreamHead,
    new_events: Sequence[NewEvent],
    documents: Sequence[_Documents],
    recorded_at: datetime,
    recorded_text: str,
    stored_recorded_at: Any,
    postgres: bool,
    params: list[tuple[Any, ...]],
) -> list[tuple[Any, ...]]:
    """Chain the events onto ``head``: their insert parameters go to ``params``; returns the
    fields of each as recorded after its position (``RecordedEvent(position, *fields)``)."""
    recorded = []
    prev = head.hash
    version = head.version
    last_occurred: Any = None
    occurred_at = recorded_at
    occurred_text = ""
    stored_occurred_at: Any = None
    for event, (data_text, metadata_text, data, metadata) in zip(
        new_events, documents, strict=True
    ):
        version += 1
        if event.occurred_at is not last_occurred:  # events of a batch often share one time
            last_occurred = event.occurred_at
            occurred_at = to_utc(last_occurred)
            occurred_text = format_time(occurred_at)
            stored_occurred_at = (
                occurred_at if postgres else _sqlite_text(occurred_text, occurred_at)
            )
        try:
            digest = sha256_link(
                prev,
                canonical_event(
                    event.event_id,
                    account_id,
                    version,
                    event.type,
                    event.schema_version,
                    data_text,
                    metadata_text,
                    occurred_text,
                    recorded_text,
                ),
            )
        except UnicodeEncodeError as exc:  # a lone surrogate: no UTF-8 text, no JSON either
            raise StoreError(
                f"an event's data or metadata cannot be stored as JSON: {exc}"
            ) from exc
        params.append(
            (
                event.event_id,
                account_id,
                version,
                event.type,
                event.schema_version,
                data_text,
                metadata_text,
                stored_occurred_at,
                stored_recorded_at,
                prev,
                digest,
            )
        )
        recorded.append(
            (
                event.event_id,
                account_id,
                version,
                event.type,
                event.schema_version,
                data,
                metadata,
                occurred_at,
                recorded_at,
                prev,
                digest,
            )
        )
        prev = digest
    return recorded


def _insert(
    driver: dialects.DriverConnection, sql: _SQL, params: list[tuple[Any, ...]]
) -> list[int]:
    """Insert the rows and return their positions, in the rows' order."""
    if sql.postgres:
        statement, args = _postgres_insert(sql, params, ())
        returned_rows: list[Any] = driver.call(statement, _fetch_all(statement, args), args)
        return _positions_of(params, returned_rows)
    if len(params) == 1:
        return [driver.execute(sql.insert_one, params[0]).lastrowid]
    # SQLite: this transaction is the only writer (BEGIN IMMEDIATE), so the positions after the
    # last one are ours to give, in the rows' order, as SQLite itself would have. Given, they
    # need no RETURNING, which SQLite buffers row by row (a sixth of a 100-event append).
    [(last,)] = driver.call(sql.last_position, _fetch_all(sql.last_position, ()))
    positions = list(range(last + 1, last + 1 + len(params)))
    for start in range(0, len(params), _INSERT_CHUNK):
        chunk = params[start : start + _INSERT_CHUNK]
        statement = sql.insert_many(len(chunk))
        flat = [
            value
            for position, row in zip(positions[start:], chunk, strict=False)
            for value in (position, *row)
        ]
        driver.execute(statement, flat)
    return positions


def _postgres_insert(
    sql: _SQL, params: list[tuple[Any, ...]], head_is: tuple[Any, ...]
) -> tuple[str, Any]:
    """PostgreSQL: the statement inserting these rows (one row as values, more as arrays),
    returning ``position, event_id``, and its arguments; with ``head_is`` (account, version,
    hash) only if the stream's head is that (``_SQL.insert_one_after``)."""
    if len(params) == 1:
        return (sql.insert_one_after if head_is else sql.insert_one), (*params[0], *head_is)
    arrays = [list(column) for column in zip(*params, strict=True)]
    return (sql.insert_arrays_after if head_is else sql.insert_arrays), [*arrays, *head_is]


def _positions_of(rows: Sequence[Sequence[Any]], returned: Sequence[Any]) -> list[int]:
    """The position of each inserted row, from ``RETURNING position, event_id`` rows in any
    order (event ids are canonical: ``_with_canonical_ids``)."""
    position_of = {event_id: position for position, event_id in returned}
    return [position_of[row[0]] for row in rows]


def _fetch_all(statement: str, params: Sequence[Any]) -> Callable[[Any], list[Any]]:
    return lambda dbapi_conn: dbapi_conn.execute(statement, params).fetchall()


# The lengths the schema gives its columns (``events.schema``): PostgreSQL refuses longer
# values, SQLite would keep them, so the store refuses them itself on both.
_MAX_ACCOUNT_ID, _MAX_TYPE, _MAX_KEY = 128, 100, 200


def _check_storable(appends: Sequence[StreamAppend], idempotency_key: str | None) -> None:
    """``StoreError`` for what the log cannot hold alike on every database, or what would be
    hashed as other text than readers get back: an ``account_id``, ``type`` or key that is not
    text of the schema's length (or not UTF-8: a lone surrogate), a ``schema_version`` that is
    not an integer from 1 (``True`` would be hashed as ``true`` and read back as ``1``)."""
    keys = [idempotency_key, *(a.idempotency_key for a in appends)]
    for key in keys:
        if key is not None and not _is_text(key, _MAX_KEY):
            raise StoreError(f"an idempotency key must be UTF-8 text of 1 to {_MAX_KEY} characters")
    for item in appends:
        if not _is_text(item.account_id, _MAX_ACCOUNT_ID):
            raise StoreError(
                f"an account_id must be UTF-8 text of 1 to {_MAX_ACCOUNT_ID} characters"
            )
        last_type = None
        for event in item.events:
            if event.type is not last_type:  # the events of an append often share their type
                if not _is_text(event.type, _MAX_TYPE):
                    raise StoreError(
                        f"an event type must be UTF-8 text of 1 to {_MAX_TYPE} characters"
                    )
                last_type = event.type
            if type(event.schema_version) is not int or event.schema_version < 1:
                raise StoreError(
                    f"schema_version must be an integer from 1, not {event.schema_version!r}"
                )


def _is_text(value: Any, max_length: int) -> bool:
    if type(value) is not str or not 0 < len(value) <= max_length:
        return False
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _with_canonical_ids(appends: Sequence[StreamAppend]) -> Sequence[StreamAppend]:
    """``appends`` with every event id in canonical UUID form (``ValueError`` for a non-UUID):
    the chain hashes the id as appended, and PostgreSQL's uuid column gives back only that
    form, so another spelling would never verify there."""
    if all(is_canonical_event_id(e.event_id) for a in appends for e in a.events):
        return appends
    return [
        dataclasses.replace(
            a,
            events=[
                e
                if is_canonical_event_id(e.event_id)
                else dataclasses.replace(e, event_id=canonical_event_id(e.event_id))
                for e in a.events
            ],
        )
        for a in appends
    ]


def _translate_integrity_error(exc: IntegrityError, appends: Sequence[StreamAppend]) -> StoreError:
    text = str(exc.orig).lower()
    if "idempotency_keys" in text or "idempotency_keys_pkey" in text:
        return _DuplicateIdempotencyKey(str(exc.orig))
    if "uq_events_account_version" in text or "events.account_id, events.version" in text:
        first = appends[0]
        return ConcurrencyError(
            first.account_id, first.expected_version if first.expected_version is not None else -1
        )
    if "event_id" in text:
        return StoreError(f"an event id was appended twice: {exc.orig}")
    return StoreError(f"the database refused the append: {exc.orig}")


def translate_append_only(exc: DBAPIError) -> StoreError:
    """Map the trigger's refusal to ``AppendOnlyViolation`` (used by maintenance tooling)."""
    if dialects.APPEND_ONLY_MESSAGE in str(exc.orig):
        return AppendOnlyViolation(dialects.APPEND_ONLY_MESSAGE)
    return StoreError(str(exc.orig))
