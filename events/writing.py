"""Appending: the body of an append transaction, from the events to the rows inserted.

``events.store.EventStore`` decides when and on which connection an append runs (alone, in a
group commit, pipelined); this module encodes the documents, chains the hashes, records the
idempotency keys, takes the append lock, reads the heads and inserts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, IntegrityError

from events import dialects, fastjson
from events.chain import EMPTY_HEAD, canonical_event, canonical_json, document_encoder, sha256_link
from events.errors import ConcurrencyError, StoreError
from events.rows import loads
from events.statements import Statements
from events.timefmt import format_time, sqlite_time_text, to_utc
from events.types import (
    NewEvent,
    RecordedEvent,
    StreamHead,
    canonical_event_id,
    is_canonical_event_id,
)

# Called inside the appending transaction, after the insert: the place to update read models
# that must commit atomically with the events (e.g. the stored standing). One with a true
# ``pipeline_safe`` attribute may also be called inside a PostgreSQL pipeline
# (``write_pipelined``): before the insert is known to have succeeded, with the events'
# positions still 0, and where it may only write through ``conn`` or read on its driver
# connection (``dialects.driver_call``): SQLAlchemy sees no rows and no row counts there.
AfterAppend = Callable[[Connection, list[RecordedEvent]], None]

_INSERT_CHUNK = 500  # rows per SQLite INSERT (12 parameters each): well inside its limit

# ``data`` and ``metadata`` are stored as their canonical JSON text (one serialisation serves the
# hash and the column); NaN and infinities are refused, as JSON has no such numbers.
_encode_document = document_encoder(allow_nan=False)


def _sqlite_text(text: str, moment: datetime) -> str:
    """``sqlite_time_text(moment)`` from ``text = format_time(moment)``, by slicing."""
    if len(text) == 27:
        return text[:10] + " " + text[11:26]
    return sqlite_time_text(moment)


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
    ``expected_version=0``) is pipelined without reading it again (``write_pipelined``).
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


@dataclass(frozen=True, slots=True)
class Write:
    """One append, ready to run in a write transaction."""

    appends: Sequence[StreamAppend]
    documents: list[list[Documents | None]]
    idempotency_key: str | None
    fingerprint: str | None
    recorded_at: datetime
    after_append: AfterAppend | None

    def run(
        self,
        driver: dialects.DriverConnection,
        sql: Statements,
        conn: Connection | None = None,
        head: StreamHead | None = None,
    ) -> list[list[RecordedEvent]]:
        """The append in the transaction on ``driver`` (and ``conn``, for ``after_append``);
        with its one stream's ``head`` known, pipelined (``write_pipelined``, PostgreSQL)."""
        if head is not None:
            return [write_pipelined(driver, sql, self, head, conn)]
        recorded = write_appends(
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
            if dialects.transaction_failed(driver):
                # An error ``after_append`` caught: the commit would be a rollback, and the
                # append be reported recorded (as ``write_pipelined`` checks too).
                raise StoreError("the append's transaction was rolled back")
        return recorded


class DuplicateIdempotencyKey(StoreError):
    pass


# One event's documents, ready to append: the canonical texts of ``data`` and ``metadata`` and
# the values readers will get back from them.
Documents = tuple[str, str, Any, Any]


def documents_of(new_events: Sequence[NewEvent], postgres: bool) -> list[Documents | None]:
    """Each event's documents, or None where only the database can say how they are stored."""
    prepared: list[Documents | None] = []
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
                dict(data) if data_kind & _FLAT else loads(data_text),
                dict(metadata) if metadata_kind & _FLAT else loads(metadata_text),
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
    documents: list[Documents | None],
) -> None:
    """Fill in the documents ``documents_of`` left to the database (``dialects.as_stored_json``)."""
    for i, event in enumerate(new_events):
        if documents[i] is not None:
            continue
        try:
            data, metadata = dialects.as_stored_json(driver, [event.data, event.metadata])
            data_text, metadata_text = _encode_document(data), _encode_document(metadata)
        except (ValueError, TypeError, DBAPIError) as exc:
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


def write_appends(
    driver: dialects.DriverConnection,
    sql: Statements,
    appends: Sequence[StreamAppend],
    documents: list[list[Documents | None]],
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
    heads = locked_heads(driver, sql, [item.account_id for item in appends])
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
    sql: Statements,
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


def write_pipelined(
    driver: dialects.DriverConnection,
    sql: Statements,
    write: Write,
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
        except BaseException as exc:
            # Discarded (the server rolls its transaction back): after an error in a pipeline,
            # psycopg may count as prepared a statement whose preparation the server skipped,
            # and the connection's next use of it would fail.
            driver.invalidate()
            if dialects.pipeline_aborted(exc):
                # An error ``after_append`` caught: a new stream's COMMIT, in the pipeline, was
                # skipped, and the transaction rolled back.
                raise StoreError("the append's transaction was rolled back") from exc
            raise
        dbapi_conn.autocommit = False  # idle: the transaction was committed or rolled back
        return rows

    returned = driver.call(statement, run, args)
    if not returned:
        raise ConcurrencyError(item.account_id, head.version)
    positions = iter(_positions_of(params, returned))
    return [RecordedEvent(next(positions), *f) for f in fields]


def locked_heads(
    driver: dialects.DriverConnection, sql: Statements, account_ids: list[str]
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
    documents: Sequence[Documents],
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
    driver: dialects.DriverConnection, sql: Statements, params: list[tuple[Any, ...]]
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
    sql: Statements, params: list[tuple[Any, ...]], head_is: tuple[Any, ...]
) -> tuple[str, Any]:
    """PostgreSQL: the statement inserting these rows (one row as values, more as arrays),
    returning ``position, event_id``, and its arguments; with ``head_is`` (account, version,
    hash) only if the stream's head is that (``Statements.insert_one_after``)."""
    if len(params) == 1:
        return (sql.insert_one_after if head_is else sql.insert_one), (*params[0], *head_is)
    arrays = [list(column) for column in zip(*params, strict=True)]
    return (sql.insert_arrays_after if head_is else sql.insert_arrays), [*arrays, *head_is]


def _positions_of(rows: Sequence[Sequence[Any]], returned: Sequence[Any]) -> list[int]:
    """The position of each inserted row, from ``RETURNING position, event_id`` rows in any
    order (event ids are canonical: ``with_canonical_ids``)."""
    position_of = {event_id: position for position, event_id in returned}
    return [position_of[row[0]] for row in rows]


def _fetch_all(statement: str, params: Sequence[Any]) -> Callable[[Any], list[Any]]:
    return lambda dbapi_conn: dbapi_conn.execute(statement, params).fetchall()


# The lengths the schema gives its columns (``events.schema``): PostgreSQL refuses longer
# values, SQLite would keep them, so the store refuses them itself on both.
_MAX_ACCOUNT_ID, _MAX_TYPE, _MAX_KEY = 128, 100, 200


def check_storable(appends: Sequence[StreamAppend], idempotency_key: str | None) -> None:
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


def with_canonical_ids(appends: Sequence[StreamAppend]) -> Sequence[StreamAppend]:
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


def translate_integrity_error(exc: IntegrityError, appends: Sequence[StreamAppend]) -> StoreError:
    text = str(exc.orig).lower()
    if "idempotency_keys" in text or "idempotency_keys_pkey" in text:
        return DuplicateIdempotencyKey(str(exc.orig))
    if "uq_events_account_version" in text or "events.account_id, events.version" in text:
        first = appends[0]
        return ConcurrencyError(
            first.account_id, first.expected_version if first.expected_version is not None else -1
        )
    if "event_id" in text:
        return StoreError(f"an event id was appended twice: {exc.orig}")
    return StoreError(f"the database refused the append: {exc.orig}")
