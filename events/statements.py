"""The log's hot statements as SQL text, per database, in its driver's parameter style.

The hot paths (append, head, read_stream, read_all, verify) run these on the driver's connection
with values the driver takes as they are, and decode rows themselves (``events.rows``):
SQLAlchemy's per-statement and per-row processing cost several times what the database takes.
What is stored and read back is exactly what the ``events`` table's SQLAlchemy types would store
and return; ``events.store.row_to_event`` remains for everyone else.
"""

from __future__ import annotations

# Above every version the ``version`` column (a 32-bit integer) can hold.
NO_VERSION = 2**31


_INSERT_COLUMNS = (
    "event_id, account_id, version, type, schema_version, data, metadata, occurred_at, "
    "recorded_at, prev_hash, hash"
)


# ``format_time``'s text, followed by the era (AD or BC), which ``to_char`` leaves out of the year.
_PG_TIME_FORMAT = 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"AD'


class Statements:
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
        self._columns, self._mark = columns, p
        self._of_types_sql: dict[tuple[str, int, str], str] = {}
        self.head = (
            f"SELECT version, hash FROM events WHERE account_id = {p} ORDER BY version DESC LIMIT 1"
        )
        stream = f"SELECT {columns} FROM events WHERE account_id = {p} AND version > {p}"
        self.stream = stream + " ORDER BY version"
        self.stream_limit = stream + f" ORDER BY version LIMIT {p}"
        # Up to the first version recorded after the bound (``EventStore.read_stream``).
        until = (
            f" AND version < coalesce((SELECT min(version) FROM events WHERE account_id = {p}"
            f" AND recorded_at > {p}), {NO_VERSION})"
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
        # version with the given hash (``write_pipelined``).
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

    def all_of_types(self, count: int) -> str:
        """Events of any of ``count`` types after a position, a page in position order
        (``EventStore.iter_all_of_types``): parameters the position, the types, the limit."""
        p = self._mark
        return self._of_types(f"position > {p}", count, f"ORDER BY position LIMIT {p}")

    def stream_of_types(self, count: int) -> str:
        """One stream's events of any of ``count`` types, in version order
        (``EventStore.read_stream_of_types``): parameters the account, the types."""
        return self._of_types(f"account_id = {self._mark}", count, "ORDER BY version")

    def streams_of_types(self, streams: int, count: int) -> str:
        """The events of ``streams`` streams of any of ``count`` types after a position, each
        stream's in version order (``EventStore.read_streams_of_types``): parameters the
        position, the accounts, the types."""
        accounts = ", ".join([self._mark] * streams)
        where = f"position > {self._mark} AND account_id IN ({accounts})"
        return self._of_types(where, count, "ORDER BY account_id, version")

    def _of_types(self, where: str, count: int, then: str) -> str:
        """``SELECT`` every column of the events ``where`` holds of any of ``count`` types,
        then ``then``: built once per shape."""
        sql = self._of_types_sql.get((where, count, then))
        if sql is None:
            types = ", ".join([self._mark] * count)
            sql = f"SELECT {self._columns} FROM events WHERE {where} AND type IN ({types}) {then}"
            self._of_types_sql[(where, count, then)] = sql
        return sql

    def insert_many(self, count: int) -> str:
        """SQLite: ``count`` rows with their positions given (``events.writing`` assigns them)."""
        sql = self._insert_many.get(count)
        if sql is None:
            row = "(" + ", ".join(["?"] * 12) + ")"
            sql = f"INSERT INTO events (position, {_INSERT_COLUMNS}) VALUES " + ", ".join(
                [row] * count
            )
            self._insert_many[count] = sql
        return sql


STATEMENTS = {name: Statements(name) for name in ("sqlite", "postgresql")}
