"""Everything that differs between SQLite and PostgreSQL, in one place.

- connection set-up (SQLite: WAL, busy timeout, explicit ``BEGIN IMMEDIATE`` for writers);
- the append-only triggers;
- the write lock that makes position order equal commit order (gap-safe catch-up);
- how a JSON document comes back from the database (what the hash chain must cover).
"""

from __future__ import annotations

import json
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection, Engine

APPEND_ONLY_MESSAGE = "events are append-only: UPDATE and DELETE are refused"

# Any constant works; it only has to be the same in every process that appends.
_POSTGRES_APPEND_LOCK_KEY = 7_301_947_561


def create_engine(url: str, **kwargs: Any) -> Engine:
    """An engine configured for the log: durable SQLite, pooled PostgreSQL (psycopg 3)."""
    sa_url = sa.make_url(url)
    if sa_url.get_backend_name() == "sqlite":
        engine = sa.create_engine(
            sa_url, connect_args={"check_same_thread": False, "timeout": 60}, **kwargs
        )
        _configure_sqlite(engine)
        return engine
    if sa_url.get_backend_name() == "postgresql" and sa_url.get_driver_name() in ("", "psycopg2"):
        sa_url = sa_url.set(drivername="postgresql+psycopg")
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 20)
    kwargs.setdefault("pool_pre_ping", True)
    return sa.create_engine(sa_url, **kwargs)


def _configure_sqlite(engine: Engine) -> None:
    # pysqlite's own transaction handling defers BEGIN and cannot take the write lock up front;
    # we issue BEGIN ourselves so that writers start with BEGIN IMMEDIATE and never deadlock on
    # a read-to-write lock upgrade (they queue on the busy timeout instead).
    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")  # an acknowledged append survives power loss
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")


def is_sqlite(conn: Connection | Engine) -> bool:
    return conn.dialect.name == "sqlite"


_sqlite_writer_locks: weakref.WeakKeyDictionary[Engine, threading.RLock] = (
    weakref.WeakKeyDictionary()
)
_sqlite_writer_locks_guard = threading.Lock()


@contextmanager
def write_connection(engine: Engine) -> Iterator[Connection]:
    """A connection whose transactions are writers from their first statement.

    On SQLite, writers of one process also queue on an in-process lock: SQLite's own busy
    handler polls with growing sleeps, which under contention leaves the database idle and
    stretches tail latency; a lock hands over at once. Other processes still wait on the busy
    timeout.
    """
    if not is_sqlite(engine):
        with engine.connect() as conn:
            yield conn
        return
    with _sqlite_writer_locks_guard:
        lock = _sqlite_writer_locks.setdefault(engine, threading.RLock())
    with lock, engine.connect() as conn:
        yield conn.execution_options(sqlite_begin="IMMEDIATE")


def take_append_lock(conn: Connection) -> None:
    """Serialise "assign positions + insert + commit" so insert order is commit order.

    On PostgreSQL a ``bigserial`` alone is not enough: a transaction that takes position 10 may
    commit after one that takes 11, and a reader following ``position > checkpoint`` would skip
    10 forever. A transaction-scoped advisory lock taken just before the insert, and released by
    the commit itself (after the rows became visible), closes that gap. Callers do all their
    reading and deciding first, so the lock covers only the stream heads, the insert and the
    commit.
    SQLite has a single writer (``BEGIN IMMEDIATE``), so its positions are commit-ordered already.
    """
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_POSTGRES_APPEND_LOCK_KEY})")


def as_stored_json(conn: Connection, document: Any) -> Any:
    """``document`` exactly as a JSON column of this database will give it back.

    The hash chain must cover what readers get. PostgreSQL's ``jsonb`` rewrites some numbers
    (``1e16`` comes back as ``10000000000000000``, ``-0.0`` as ``0.0``), so there the document
    makes one round trip through the server before it is hashed; SQLite keeps the JSON text as
    written. NaN and infinities are not JSON and raise ``ValueError`` on every database.
    """
    text = json.dumps(document, allow_nan=False)
    if conn.dialect.name == "postgresql" and not _jsonb_keeps(document):
        query = sa.text("SELECT CAST(:document AS jsonb) AS document").columns(
            sa.column("document", postgresql.JSONB())
        )
        return conn.execute(query, {"document": text}).scalar_one()
    return json.loads(text)


def _jsonb_keeps(value: Any) -> bool:
    """Whether ``jsonb`` gives ``value`` back unchanged, so the round trip can be skipped.

    Strings, booleans, null and integers always come back as sent; a float does when its
    shortest representation has no exponent and it is not negative zero (the cases ``numeric``
    rewrites). Almost every payload qualifies, which saves a round trip per append.
    """
    if isinstance(value, dict):
        return all(_jsonb_keeps(v) for v in value.values())
    if isinstance(value, list):
        return all(_jsonb_keeps(v) for v in value)
    if isinstance(value, float):
        text = repr(value)
        return "e" not in text and "n" not in text and text != "-0.0"
    return not (isinstance(value, str) and "\x00" in value)


def append_only_ddl(dialect_name: str) -> list[str]:
    """DDL for the triggers that make the database itself refuse UPDATE and DELETE on events."""
    if dialect_name == "sqlite":
        return [
            f"""CREATE TRIGGER events_refuse_update BEFORE UPDATE ON events
            BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY_MESSAGE}'); END""",
            f"""CREATE TRIGGER events_refuse_delete BEFORE DELETE ON events
            BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY_MESSAGE}'); END""",
        ]
    if dialect_name == "postgresql":
        return [
            f"""CREATE OR REPLACE FUNCTION events_refuse_change() RETURNS trigger AS $$
            BEGIN
                RAISE EXCEPTION '{APPEND_ONLY_MESSAGE} (% on events)', TG_OP
                    USING ERRCODE = 'restrict_violation';
            END $$ LANGUAGE plpgsql""",
            """CREATE TRIGGER events_refuse_update_delete BEFORE UPDATE OR DELETE ON events
            FOR EACH ROW EXECUTE FUNCTION events_refuse_change()""",
            """CREATE TRIGGER events_refuse_truncate BEFORE TRUNCATE ON events
            FOR EACH STATEMENT EXECUTE FUNCTION events_refuse_change()""",
        ]
    raise ValueError(f"unsupported database {dialect_name!r}")


def drop_append_only_ddl(dialect_name: str) -> list[str]:
    if dialect_name == "sqlite":
        return [
            "DROP TRIGGER IF EXISTS events_refuse_update",
            "DROP TRIGGER IF EXISTS events_refuse_delete",
        ]
    return [
        "DROP TRIGGER IF EXISTS events_refuse_update_delete ON events",
        "DROP TRIGGER IF EXISTS events_refuse_truncate ON events",
        "DROP FUNCTION IF EXISTS events_refuse_change()",
    ]
