"""What a database error means for its caller: the disk is full (``storage_full``), the server
did not answer in time (``unanswered``), the connection was lost (``connection_lost``).
"""

from __future__ import annotations

import os
import sqlite3
import sys

import sqlalchemy as sa

from events.driver import DriverConnection
from events.errors import causes
from events.postgres_connections import bounded_connection_class


def unanswered(exc: BaseException) -> BaseException | None:
    """The driver's timeout that ``exc`` is, or was raised from (its ``orig``, cause or
    context), when it is PostgreSQL not answering in time: connecting (``connect_timeout``) or
    waiting for an answer (``create_engine``'s ``answer_timeout``); else None. Another call now
    would most likely wait as long: the server is silent, not merely failing."""
    psycopg = sys.modules.get("psycopg")
    if psycopg is None:
        return None  # never loaded: no PostgreSQL connection was ever tried
    timeouts = (psycopg.errors.ConnectionTimeout, bounded_connection_class().Timeout)
    for cause in causes(exc):
        for candidate in (cause, getattr(cause, "orig", None)):
            if isinstance(candidate, timeouts):
                found: BaseException = candidate
                return found
    return None


# PostgreSQL's SQLSTATE for a write refused because its disk is full (``disk_full``).
_POSTGRES_DISK_FULL = "53100"


def storage_full(exc: BaseException, database_file: str | None = None) -> bool:
    """Whether ``exc`` (or its driver error, ``orig``) is the database refusing a write because
    the disk that holds it is full: SQLite's ``SQLITE_FULL`` ("database or disk is full"), or
    PostgreSQL's ``disk_full``. SQLite rolls the transaction back whole; space freed, the next
    write succeeds on the same connections. With the SQLite ``database_file``, also an I/O
    error while its disk has no space left: a process that opens the database then cannot
    create its ``-wal`` or ``-shm`` file, which SQLite reports as "disk I/O error"."""
    orig = getattr(exc, "orig", None) or exc
    if isinstance(orig, sqlite3.Error):
        code = getattr(orig, "sqlite_errorcode", 0) & 0xFF
        return code == sqlite3.SQLITE_FULL or (
            code == sqlite3.SQLITE_IOERR
            and database_file is not None
            and _no_space_left(database_file)
        )
    return getattr(orig, "sqlstate", None) == _POSTGRES_DISK_FULL


def _no_space_left(path: str) -> bool:
    try:
        space = os.statvfs(os.path.dirname(os.path.abspath(path)))
    except OSError:
        return False
    return no_space_left_for(space, os.geteuid())


def no_space_left_for(space: os.statvfs_result, euid: int) -> bool:
    """Whether a process of effective uid ``euid`` has no block left on the file system of
    ``space``: root may still write into the blocks reserved for it (``f_bfree``), others
    only into the rest (``f_bavail``, 0 while only the reserved ones are free)."""
    return (space.f_bfree if euid == 0 else space.f_bavail) == 0


def connection_lost(exc: sa.exc.DBAPIError, driver: DriverConnection | None) -> bool:
    """Whether ``exc`` came from losing the connection (not from an error the server gave)."""
    if exc.connection_invalidated:
        return True
    return driver is not None and bool(getattr(driver.dbapi_connection, "broken", False))
