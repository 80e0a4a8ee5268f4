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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError

from events import dialects
from events.chain import GENESIS_HASH, canonical_json, chain_hash, verify_chain
from events.errors import AppendOnlyViolation, ConcurrencyError, IdempotencyConflict, StoreError
from events.schema import checkpoints, events, idempotency_keys
from events.timefmt import format_time, to_utc
from events.types import NewEvent, RecordedEvent, StreamHead, VerifyResult

Clock = Callable[[], datetime]
# Called inside the appending transaction, after the insert: the place to update read models
# that must commit atomically with the events (e.g. the stored standing).
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


# Built once: building a statement and its cache key costs more than SQLite takes to run it.
_HEAD_QUERY = (
    sa.select(events.c.version, events.c.hash)
    .where(events.c.account_id == sa.bindparam("account_id"))
    .order_by(events.c.version.desc())
    .limit(1)
)
_STREAM_QUERY = (
    sa.select(*_EVENT_COLUMNS)
    .where(
        events.c.account_id == sa.bindparam("account_id"),
        events.c.version > sa.bindparam("after_version"),
    )
    .order_by(events.c.version)
)
_ALL_QUERY = (
    sa.select(*_EVENT_COLUMNS)
    .where(events.c.position > sa.bindparam("after_position"))
    .order_by(events.c.position)
    .limit(sa.bindparam("limit"))
)


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class StreamAppend:
    """Events for one stream, appended only if the stream is still at ``expected_version``.

    ``expected_version=None`` appends at whatever the head is (for facts that decide nothing,
    such as a delivery receipt).
    """

    account_id: str
    expected_version: int | None
    events: Sequence[NewEvent]


def fingerprint_events(new_events: Sequence[NewEvent]) -> str:
    """Default idempotency fingerprint: the types and payloads, not ids or times."""
    body = canonical_json({"events": [[e.type, e.schema_version, e.data] for e in new_events]})
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def row_to_event(row: Any) -> RecordedEvent:
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


class EventStore:
    """Append to and read from the log. Thread-safe; share one per process."""

    def __init__(self, engine: Engine, clock: Clock = _utc_now, max_head_retries: int = 20):
        self.engine = engine
        self._clock = clock
        self._max_head_retries = max_head_retries

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
    ) -> list[RecordedEvent]:
        """Append ``new_events`` to one stream atomically and return them as recorded."""
        [recorded] = self.append_streams(
            [StreamAppend(account_id, expected_version, new_events)],
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
        if idempotency_key is not None:
            fingerprint = fingerprint or fingerprint_events([e for a in appends for e in a.events])
            previous = self._idempotent_result(idempotency_key, fingerprint)
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
                    previous = self._idempotent_result(idempotency_key, fingerprint)
                    if previous is not None:
                        return previous
                # Only "append at head" is retried here; an explicit expected version is the
                # caller's to re-decide.
                if attempts >= self._max_head_retries or any(
                    a.expected_version is not None for a in appends
                ):
                    raise
            except _DuplicateIdempotencyKey:
                assert idempotency_key is not None and fingerprint is not None
                previous = self._idempotent_result(idempotency_key, fingerprint)
                if previous is None:  # pragma: no cover - the winner's row must be visible
                    raise StoreError("idempotency record vanished") from None
                return previous

    def _append_once(
        self,
        appends: Sequence[StreamAppend],
        idempotency_key: str | None,
        fingerprint: str | None,
        after_append: AfterAppend | None,
    ) -> list[list[RecordedEvent]]:
        recorded_at = to_utc(self._clock())
        with dialects.write_connection(self.engine) as conn:
            try:
                with conn.begin():
                    stored = [_as_stored(conn, item.events) for item in appends]
                    if idempotency_key is not None:
                        # Before the append lock: waiting on another writer's key row while
                        # holding the lock could deadlock.
                        conn.execute(
                            idempotency_keys.insert().values(
                                key=idempotency_key,
                                fingerprint=fingerprint,
                                account_id=appends[0].account_id,
                                event_ids=[e.event_id for batch in stored for e in batch],
                                recorded_at=recorded_at,
                            )
                        )
                    dialects.take_append_lock(conn)
                    # Heads are read under the lock: no other appender can move them before our
                    # commit, so "append at head" never loses a race and a stale expected
                    # version is caught here rather than by the unique constraint.
                    rows: list[dict[str, Any]] = []
                    per_stream: list[list[dict[str, Any]]] = []
                    for item, new_events in zip(appends, stored, strict=True):
                        head = self._head(conn, item.account_id)
                        if (
                            item.expected_version is not None
                            and item.expected_version != head.version
                        ):
                            raise ConcurrencyError(
                                item.account_id, item.expected_version, head.version
                            )
                        stream_rows = _chain_rows(item.account_id, head, new_events, recorded_at)
                        per_stream.append(stream_rows)
                        rows.extend(stream_rows)
                    positions = _insert_rows(conn, rows)
                    recorded: list[list[RecordedEvent]] = []
                    i = 0
                    for stream_rows in per_stream:
                        batch = []
                        for row in stream_rows:
                            batch.append(_recorded(positions[i], row))
                            i += 1
                        recorded.append(batch)
                    if after_append is not None:
                        after_append(conn, [e for batch in recorded for e in batch])
                    return recorded
            except IntegrityError as exc:
                raise _translate_integrity_error(exc, appends) from exc

    def recorded_for_key(self, key: str, fingerprint: str) -> list[RecordedEvent] | None:
        """What an earlier append with this idempotency key recorded, or None if it is new.

        Raises ``IdempotencyConflict`` when the key was used with another fingerprint.
        """
        previous = self._idempotent_result(key, fingerprint)
        return None if previous is None else [e for batch in previous for e in batch]

    def _idempotent_result(self, key: str, fingerprint: str) -> list[list[RecordedEvent]] | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(idempotency_keys.c.fingerprint, idempotency_keys.c.event_ids).where(
                    idempotency_keys.c.key == key
                )
            ).first()
            if row is None:
                return None
            if row.fingerprint != fingerprint:
                raise IdempotencyConflict(key)
            ids = list(row.event_ids)
            found = conn.execute(sa.select(*_EVENT_COLUMNS).where(events.c.event_id.in_(ids))).all()
        by_id = {str(r[1]): row_to_event(r) for r in found}
        ordered = [by_id[i] for i in ids]
        grouped: dict[str, list[RecordedEvent]] = {}
        for event in ordered:
            grouped.setdefault(event.account_id, []).append(event)
        return list(grouped.values())

    # ------------------------------------------------------------------ reading

    def head(self, account_id: str) -> StreamHead:
        """The stream's last version and hash; version 0 and the zero hash when empty."""
        with self.engine.connect() as conn:
            return self._head(conn, account_id)

    @staticmethod
    def _head(conn: Connection, account_id: str) -> StreamHead:
        row = conn.execute(_HEAD_QUERY, {"account_id": account_id}).first()
        return StreamHead(0, GENESIS_HASH) if row is None else StreamHead(row[0], row[1])

    def read_stream(
        self,
        account_id: str,
        after_version: int = 0,
        recorded_until: datetime | None = None,
        limit: int | None = None,
        *,
        conn: Connection | None = None,
    ) -> list[RecordedEvent]:
        """Events of one stream with ``version > after_version``, in version order."""
        query = _STREAM_QUERY
        params: dict[str, Any] = {"account_id": account_id, "after_version": after_version}
        if recorded_until is not None:
            query = query.where(events.c.recorded_at <= sa.bindparam("recorded_until"))
            params["recorded_until"] = to_utc(recorded_until)
        if limit is not None:
            query = query.limit(sa.bindparam("limit"))
            params["limit"] = limit
        if conn is not None:
            return [row_to_event(r) for r in conn.execute(query, params)]
        with self.engine.connect() as own:
            return [row_to_event(r) for r in own.execute(query, params)]

    def get_event(self, event_id: str) -> RecordedEvent | None:
        """One event by its id, or None."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(*_EVENT_COLUMNS).where(events.c.event_id == event_id)
            ).first()
        return None if row is None else row_to_event(row)

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
        params = {"after_position": after_position, "limit": limit}
        with self.engine.connect() as conn:
            return [row_to_event(r) for r in conn.execute(_ALL_QUERY, params)]

    def iter_all(self, after_position: int = 0, page_size: int = 1000) -> Iterator[RecordedEvent]:
        """Every event after ``after_position`` in keyset pages (constant memory)."""
        while True:
            page = self.read_all(after_position, page_size)
            yield from page
            if len(page) < page_size:
                return
            after_position = page[-1].position

    def max_position(self) -> int:
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.coalesce(sa.func.max(events.c.position), 0))
                ).scalar_one()
            )

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
        """Recompute the stream's hash chain: intact, or the first broken version and why."""
        return verify_chain(self.iter_stream(account_id))

    # ------------------------------------------------------------------ checkpoints

    @staticmethod
    def get_checkpoint(conn: Connection, name: str) -> int:
        value = conn.execute(
            sa.select(checkpoints.c.position).where(checkpoints.c.name == name)
        ).scalar()
        return int(value or 0)

    def set_checkpoint(self, conn: Connection, name: str, position: int) -> None:
        """Record a subscription's position, in the caller's transaction."""
        now = to_utc(self._clock())
        updated = conn.execute(
            checkpoints.update()
            .where(checkpoints.c.name == name)
            .values(position=position, updated_at=now)
        )
        if updated.rowcount == 0:
            conn.execute(checkpoints.insert().values(name=name, position=position, updated_at=now))


class _DuplicateIdempotencyKey(StoreError):
    pass


def _as_stored(conn: Connection, new_events: Sequence[NewEvent]) -> list[NewEvent]:
    """The events with ``data`` and ``metadata`` exactly as reads will return them."""
    try:
        documents = dialects.as_stored_json(conn, [[e.data, e.metadata] for e in new_events])
    except (ValueError, DBAPIError) as exc:
        reason = exc.orig if isinstance(exc, DBAPIError) else exc
        raise StoreError(f"an event's data or metadata cannot be stored as JSON: {reason}") from exc
    return [
        dataclasses.replace(event, data=data, metadata=metadata)
        for event, (data, metadata) in zip(new_events, documents, strict=True)
    ]


def _insert_rows(conn: Connection, rows: list[dict[str, Any]]) -> list[int]:
    """Insert the rows and return their positions, in the rows' order."""
    if dialects.is_sqlite(conn):
        # SQLite does not promise the order of RETURNING rows for a multi-row INSERT, so with
        # ``sort_by_parameter_order`` SQLAlchemy sends one INSERT per row there. Match positions
        # to rows by event id instead: unique, and given back by SQLite exactly as bound.
        result = conn.execute(events.insert().returning(events.c.position, events.c.event_id), rows)
        position_of = {event_id: position for position, event_id in result}
        return [position_of[row["event_id"]] for row in rows]
    result = conn.execute(
        events.insert().returning(events.c.position, sort_by_parameter_order=True), rows
    )
    return [r[0] for r in result]


def _chain_rows(
    account_id: str, head: StreamHead, new_events: Sequence[NewEvent], recorded_at: datetime
) -> list[dict[str, Any]]:
    rows = []
    prev = head.hash
    recorded_text = format_time(recorded_at)
    for offset, event in enumerate(new_events, start=1):
        occurred_at = to_utc(event.occurred_at)
        fields = {
            "event_id": event.event_id,
            "account_id": account_id,
            "version": head.version + offset,
            "type": event.type,
            "schema_version": event.schema_version,
            "data": event.data,
            "metadata": event.metadata,
            "occurred_at": format_time(occurred_at),
            "recorded_at": recorded_text,
        }
        digest = chain_hash(prev, fields)
        rows.append(
            {
                **fields,
                "occurred_at": occurred_at,
                "recorded_at": recorded_at,
                "prev_hash": prev,
                "hash": digest,
            }
        )
        prev = digest
    return rows


def _recorded(position: int, row: dict[str, Any]) -> RecordedEvent:
    return RecordedEvent(
        position=position,
        event_id=row["event_id"],
        account_id=row["account_id"],
        version=row["version"],
        type=row["type"],
        schema_version=row["schema_version"],
        data=row["data"],
        metadata=row["metadata"],
        occurred_at=row["occurred_at"],
        recorded_at=row["recorded_at"],
        prev_hash=row["prev_hash"],
        hash=row["hash"],
    )


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
