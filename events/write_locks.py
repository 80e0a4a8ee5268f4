"""What writers take so that they do not meet: on SQLite, one writer at a time (an in-process
lock per database file, then ``BEGIN IMMEDIATE``: ``write_connection``, ``write_transaction``);
on PostgreSQL, the append lock that makes position order commit order (``take_append_lock``).
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.engine import Connection, Engine

from events.driver import DriverConnection, raw_connection
from events.sqlite_connections import is_sqlite, sqlite_file

# Any constant works; it only has to be the same in every process that appends.
_POSTGRES_APPEND_LOCK_KEY = 7_301_947_561
_POSTGRES_APPEND_LOCK = f"SELECT pg_advisory_xact_lock({_POSTGRES_APPEND_LOCK_KEY})"


# One writer lock per database FILE in this process, whatever engine opened it: two engines on
# one file (a service and its embedded workers, a test and the system under test) must queue
# here rather than meet in SQLite's busy handler, which sleeps in steps of up to 100 ms.
_sqlite_writer_locks: dict[str, threading.RLock] = {}
_sqlite_writer_locks_guard = threading.Lock()


# Each engine's lock, once found: resolving the file's real path costs a few system calls.
_sqlite_engine_locks: weakref.WeakKeyDictionary[Engine, threading.RLock] = (
    weakref.WeakKeyDictionary()
)


def _sqlite_writer_lock(engine: Engine) -> threading.RLock:
    lock = _sqlite_engine_locks.get(engine)
    if lock is not None:
        return lock
    database = sqlite_file(engine.url)
    # A private in-memory database has a lock of its own.
    key = os.path.realpath(database) if database is not None else f"engine:{id(engine)}"
    with _sqlite_writer_locks_guard:
        lock = _sqlite_writer_locks.setdefault(key, threading.RLock())
        _sqlite_engine_locks[engine] = lock
    return lock


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
    with _sqlite_writer_lock(engine), engine.connect() as conn:
        yield conn.execution_options(sqlite_begin="IMMEDIATE")


@contextmanager
def write_transaction(engine: Engine) -> Iterator[DriverConnection]:
    """A writing transaction straight on a pooled driver connection, committed on success.

    The same transaction as ``write_connection`` + ``begin()`` (on SQLite, the in-process
    writer lock and ``BEGIN IMMEDIATE``), without SQLAlchemy's connection and transaction
    objects, for writers that need no SQLAlchemy connection.
    """
    sqlite = is_sqlite(engine)
    lock = _sqlite_writer_lock(engine) if sqlite else None
    if lock is not None:
        lock.acquire()
    try:
        raw = raw_connection(engine)
        try:
            driver = DriverConnection(
                engine.dialect, raw.dbapi_connection, raw.invalidate, raw.info
            )
            if sqlite:
                driver.execute("BEGIN IMMEDIATE")
            try:
                yield driver
            except BaseException:
                if raw.is_valid:
                    try:
                        driver.call("ROLLBACK", lambda c: c.rollback())
                    except Exception:
                        raw.invalidate()
                raise
            driver.call("COMMIT", lambda c: c.commit())
        finally:
            raw.close()
    finally:
        if lock is not None:
            lock.release()


def take_append_lock(conn: Connection | DriverConnection) -> None:
    """Serialise "assign positions + insert + commit" so insert order is commit order.

    On PostgreSQL a ``bigserial`` alone is not enough: a transaction that takes position 10 may
    commit after one that takes 11, and a reader following ``position > checkpoint`` would skip
    10 forever. A transaction-scoped advisory lock taken just before the insert, and released by
    the commit itself (after the rows became visible), closes that gap. Callers do all their
    reading and deciding first, so the lock covers only the stream heads, the insert and the
    commit.
    SQLite has a single writer (``BEGIN IMMEDIATE``), so its positions are commit-ordered already.

    The statement goes to the driver connection directly, so that the store can pipeline it with
    the reads of the stream heads that follow it; outside a pipeline it runs at once.
    """
    if conn.dialect.name == "postgresql":
        driver = conn if isinstance(conn, DriverConnection) else DriverConnection.of(conn)
        driver.execute(_POSTGRES_APPEND_LOCK)
