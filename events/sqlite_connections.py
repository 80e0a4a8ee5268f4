"""A SQLite database's file and connections: the file a URL names (``sqlite_file``), created
readable by its owner only (``DATABASE_FILE_MODE``), and each connection's pragmas (WAL, full
sync, busy timeout) and explicit ``BEGIN`` (``configure_sqlite``).
"""

from __future__ import annotations

import os
from contextlib import suppress
from typing import Any
from urllib.parse import unquote

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from events.driver import driver_call

# A new database file is readable and writable by its owner only: it holds contact addresses,
# webhook URLs, descriptions and token hashes. SQLite gives its -wal and -shm files the mode of
# the database file, so they follow; an operator who widens the file's mode widens theirs too.
DATABASE_FILE_MODE = 0o600


def _sqlite_target(url: str | sa.URL) -> tuple[str | None, str]:
    """The file SQLite opens for a SQLite URL (None: another database, or one in memory) and
    its URI ``mode`` ("" when unset). From the arguments the dialect hands ``sqlite3.connect``
    (the filename, and whether it is a URI), read as SQLite reads them: a URI's name ends at
    ``?`` or ``#``, ``%HH`` is decoded, and the last ``mode`` counts."""
    sa_url = sa.make_url(url)
    if sa_url.get_backend_name() != "sqlite":
        return None, ""
    args, kwargs = sa_url.get_dialect()().create_connect_args(sa_url)
    filename = str(args[0]) if args else ":memory:"
    mode = ""
    if kwargs.get("uri") and filename.startswith("file:"):
        name, _, query = filename[len("file:") :].partition("#")[0].partition("?")
        for part in query.split("&"):
            key, _, value = part.partition("=")
            if unquote(key) == "mode":
                mode = unquote(value)
        filename = unquote(name)
        if filename.startswith("//"):  # file://host/path: SQLite takes only an empty host
            filename = "/" + filename[2:].partition("/")[2]
    if filename in ("", ":memory:") or mode == "memory":
        return None, mode
    return filename, mode


def sqlite_file(url: str | sa.URL) -> str | None:
    """The file a SQLite URL names, a URI filename (``sqlite:///file:/path/x.db?uri=true``)
    included; None for another database or one in memory."""
    return _sqlite_target(url)[0]


def create_private_file(sa_url: sa.URL) -> None:
    """Create the URL's file empty with ``DATABASE_FILE_MODE`` if it does not exist (SQLite
    takes an empty file as an empty database), unless it is opened in a mode that does not
    create it (``ro``, ``rw``: there a missing file must stay an error). Any other problem is
    left for SQLite to report."""
    path, mode = _sqlite_target(sa_url)
    if path is None or mode in ("ro", "rw"):
        return
    # It exists already, or cannot be created: SQLite says why when it connects.
    with suppress(OSError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, DATABASE_FILE_MODE))


def configure_sqlite(engine: Engine) -> None:
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
        # REPLACE deletes the row it conflicts with without firing DELETE triggers unless this
        # is on: ``INSERT OR REPLACE INTO events`` would have replaced a recorded event.
        cursor.execute("PRAGMA recursive_triggers=ON")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        statement = f"BEGIN {mode}"
        driver_call(conn, statement, lambda dbapi_conn: dbapi_conn.execute(statement))


def is_sqlite(conn: Connection | Engine) -> bool:
    return conn.dialect.name == "sqlite"
