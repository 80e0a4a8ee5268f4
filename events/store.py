"""The append-only event store over SQLAlchemy Core (SQLite and PostgreSQL).

Guarantees:
- per-stream versions are contiguous from 1; a stale ``expected_version`` is a ``ConcurrencyError``
  (the unique ``(account_id, version)`` constraint decides races, not application locks);
- every event is chained to its predecessor in the stream by SHA-256 (``events.chain``);
- a retried append with the same idempotency key returns the first result and writes nothing;
  the same key with another payload is an ``IdempotencyConflict``;
- ``read_all`` pages by global position in commit order, so a subscriber that keeps
  ``position > checkpoint`` never skips an event (see ``write_locks.take_append_lock``);
- the database itself refuses UPDATE and DELETE of recorded events.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError

from events import dialects, readahead
from events.chain import EMPTY_HEAD, verify_links
from events.errors import (
    AppendOnlyViolation,
    AppendOutcomeUnknown,
    ConcurrencyError,
    IdempotencyConflict,
    StoreError,
    StreamKeyUsed,
)
from events.groupcommit import GroupCommit, own_copy
from events.rows import decoder, loads, postgres_row_matches, verify_sqlite_rows
from events.schema import checkpoints, events
from events.statements import NO_VERSION, STATEMENTS, Statements
from events.timefmt import sqlite_time_text, to_utc
from events.types import NewEvent, RecordedEvent, StreamHead, VerifyResult, canonical_event_id
from events.writing import (
    AfterAppend,
    DuplicateIdempotencyKey,
    StreamAppend,
    Write,
    check_storable,
    documents_of,
    fingerprint_events,
    translate_integrity_error,
    with_canonical_ids,
)

Clock = Callable[[], datetime]

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
        NO_VERSION,
    )
)


_VERIFY_PAGE = 1000
# Accounts read in one statement by ``read_streams_of_types``: a bounded number of statement
# shapes, and of parameters (SQLite's limit is 32,766; PostgreSQL's 65,535).
_STREAMS_PER_READ = 500


def _utc_now() -> datetime:
    return datetime.now(UTC)


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


# A row's version, prev_hash and hash.
_link: Callable[[Sequence[Any]], tuple[int, str, str]] = operator.itemgetter(3, 10, 11)
_account_of: Callable[[Sequence[Any]], str] = operator.itemgetter(2)
_stream_key_of: Callable[[Sequence[Any]], tuple[str, int]] = operator.itemgetter(2, 3)
_position_of: Callable[[Sequence[Any]], int] = operator.itemgetter(0)
_version_of: Callable[[Sequence[Any]], int] = operator.itemgetter(3)


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
        group appends, as before ``write_pipelined`` (``benchmarks/bench_write_path.py``
        compares the two)."""
        self.engine = engine
        self._clock = clock
        self._max_head_retries = max_head_retries
        self._pipeline_known_heads = pipeline_known_heads
        # Appends of this process's threads that meet each other share one transaction.
        self._writes: GroupCommit[Write, list[list[RecordedEvent]] | Exception] = GroupCommit(
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
        check_storable(appends, idempotency_key)
        appends = with_canonical_ids(appends)
        if idempotency_key is not None:
            fingerprint = fingerprint or fingerprint_events([e for a in appends for e in a.events])
            previous = self._idempotent_result(idempotency_key, fingerprint, appends)
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
                    previous = self._idempotent_result(idempotency_key, fingerprint, appends)
                    if previous is not None:
                        return previous
                # Only "append at head" is retried here; an explicit expected version is the
                # caller's to re-decide.
                if attempts >= self._max_head_retries or any(
                    a.expected_version is not None for a in appends
                ):
                    raise
            except DuplicateIdempotencyKey:
                if idempotency_key is not None:
                    assert fingerprint is not None
                    previous = self._idempotent_result(idempotency_key, fingerprint, appends)
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
        documents = [documents_of(item.events, sql.postgres) for item in appends]
        write = Write(
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
        self, write: Write, head: StreamHead | None = None
    ) -> list[list[RecordedEvent]]:
        """One append in a transaction of its own (``head``: ``Write.run``)."""
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
            raise translate_integrity_error(exc, write.appends) from exc
        except DBAPIError as exc:
            lost = _LostConnection.of(exc, driver, pid)
            if lost is None:
                raise
            raise lost from exc

    def _write_together(
        self, writes: Sequence[Write]
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
                            outcomes.append(translate_integrity_error(exc, write.appends))
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
        self, key: str, fingerprint: str, appends: Sequence[StreamAppend] | None = None
    ) -> list[list[RecordedEvent]] | None:
        """What the append with this key recorded, per stream; ``IdempotencyConflict`` if it
        had another fingerprint or (``appends`` given: the retried request) wrote to other
        streams than these. Given ``appends``, the result has the first one's shape: one list per
        append (its stream's events), an append without events an empty one."""
        rows = self._fetch(self._sql.key, (key,))
        if not rows:
            return None  # the usual case: one indexed read on the driver's connection
        stored_fingerprint, stored_ids = rows[0]
        if stored_fingerprint != fingerprint:
            raise IdempotencyConflict(key, stored_fingerprint)
        # The JSON column's text (SQLite), or the value psycopg already parsed (PostgreSQL).
        ids = list(loads(stored_ids) if isinstance(stored_ids, str) else stored_ids)
        by_id = self._events_by_id(ids)
        ordered = [by_id[i] for i in ids]
        grouped: dict[str, list[RecordedEvent]] = {}
        for event in ordered:
            grouped.setdefault(event.account_id, []).append(event)
        if appends is None:
            return list(grouped.values())
        # The same key for other streams is another request, whatever the fingerprint says.
        if set(grouped) != {a.account_id for a in appends if a.events}:
            raise IdempotencyConflict(key)
        return [grouped[a.account_id] if a.events else [] for a in appends]

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
        decode = decoder(sql.postgres)
        return [decode(r) for r in self._fetch(statement, values)]

    def get_event(self, event_id: str) -> RecordedEvent | None:
        """One event by its id, or None."""
        try:
            event_id = canonical_event_id(event_id)  # the only form stored
        except ValueError:
            return None
        sql = self._sql
        decode = decoder(sql.postgres)
        rows = self._fetch(sql.by_id, (event_id,))
        return decode(rows[0]) if rows else None

    def read_stream_of_type(self, account_id: str, event_type: str) -> list[RecordedEvent]:
        """The events of one stream of type ``event_type``, in version order."""
        return self.read_stream_of_types(account_id, (event_type,))

    def read_stream_of_types(self, account_id: str, types: Sequence[str]) -> list[RecordedEvent]:
        """The events of one stream of any of ``types``, in version order, in one read (the
        stream's others are neither decoded nor sent: found along the ``(account_id,
        version)`` index)."""
        statement = self._sql.stream_of_types(len(types))
        decode = decoder(self._sql.postgres)
        return [decode(r) for r in self._fetch(statement, (account_id, *types))]

    def read_streams_of_types(
        self, account_ids: Sequence[str], types: Sequence[str], after_position: int = 0
    ) -> dict[str, list[RecordedEvent]]:
        """``read_stream_of_types`` of each of ``account_ids``, in one read per 500 of them:
        each account's events in version order (an account without any: an empty list)."""
        found: dict[str, list[RecordedEvent]] = {a: [] for a in account_ids}
        decode = decoder(self._sql.postgres)
        accounts = list(found)
        for start in range(0, len(accounts), _STREAMS_PER_READ):
            chunk = accounts[start : start + _STREAMS_PER_READ]
            statement = self._sql.streams_of_types(len(chunk), len(types))
            for row in self._fetch(statement, (after_position, *chunk, *types)):
                event = decode(row)
                found[event.account_id].append(event)
        return found

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
        decode = decoder(sql.postgres)
        return [decode(r) for r in self._fetch(sql.all, (after_position, limit))]

    def iter_all(self, after_position: int = 0, page_size: int = 1000) -> Iterator[RecordedEvent]:
        """Every event after ``after_position`` in keyset pages (constant memory), the next page
        read ahead while the caller works on this one (``readahead``)."""
        sql = self._sql
        decode = decoder(sql.postgres)
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

    def iter_all_of_types(
        self,
        types: Sequence[str],
        after_position: int = 0,
        page_size: int = 1000,
        progress: Callable[[int], None] | None = None,
    ) -> Iterator[RecordedEvent]:
        """Every event of any of ``types`` after ``after_position``, in position order, in
        keyset pages: the others are read by the database alone, neither sent nor decoded.
        ``progress`` is told, after each page, the position it reached."""
        sql = self._sql
        decode = decoder(sql.postgres)
        statement = sql.all_of_types(len(types))
        after = after_position
        while True:
            page = self._fetch(statement, (after, *types, page_size))
            for row in page:
                yield decode(row)
            if page:
                after = _position_of(page[-1])
                if progress is not None:
                    progress(after)
            if len(page) < page_size:
                return

    def position_before(self, recorded_since: datetime) -> int:
        """A position after which lies every event recorded at or after ``recorded_since``:
        one less than the smallest such event's (the last position when there is none), read
        along the ``recorded_at`` index. Positions follow commit order and times need not
        (a clock stepped back): it is the smallest position, not the earliest time's."""
        last = self.max_position()  # read first: an event appended after it lies after it
        with self.engine.connect() as conn:
            first = conn.execute(
                # ``+ 0``: without it both databases turn min() into a walk of the positions
                # from the first, filtering each row by its time, instead of reading the
                # ``recorded_at`` index from ``recorded_since`` on.
                sa.select(sa.func.min(events.c.position + sa.literal_column("0"))).where(
                    events.c.recorded_at >= to_utc(recorded_since)
                )
            ).scalar_one()
        return last if first is None else int(first) - 1

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

    def account_ids(self, after: str = "", page_size: int = 1000) -> Iterator[str]:
        """Every stream id (that the database orders after ``after``), in order, in pages of
        ``page_size``."""
        while True:
            with self.engine.connect() as conn:
                page = list(
                    conn.execute(
                        sa.select(events.c.account_id)
                        .where(events.c.account_id > after)
                        .group_by(events.c.account_id)
                        .order_by(events.c.account_id)
                        .limit(page_size)
                    ).scalars()
                )
            yield from page
            if len(page) < page_size:
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
        """``verify_links`` over one stream's ``Statements.verify`` rows, on this database."""
        if self._sql.postgres:
            return verify_links(rows, _link, postgres_row_matches)
        return verify_sqlite_rows(rows)

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
    def _sql(self) -> Statements:
        return STATEMENTS[self.engine.dialect.name]

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


def translate_append_only(exc: DBAPIError) -> StoreError:
    """Map the trigger's refusal to ``AppendOnlyViolation`` (used by maintenance tooling)."""
    if dialects.APPEND_ONLY_MESSAGE in str(exc.orig):
        return AppendOnlyViolation(dialects.APPEND_ONLY_MESSAGE)
    return StoreError(str(exc.orig))
