"""Everything that differs between SQLite and PostgreSQL, in one place.

Here: the engine (``create_engine``: durable SQLite, pooled PostgreSQL through psycopg 3), which
database it opens (``database_identity``), the append-only triggers, how a JSON document comes
back from the database (what the hash chain must cover: ``as_stored_json``), and an INSERT that
can take ``ON CONFLICT`` (``conflict_insert``). Beside it, each offered from here too:

- ``events.postgres_connections``: a PostgreSQL connection's timeouts and socket settings, its
  bounded wait for an answer, the pool's checks of a dropped connection, connection poolers
  (PgBouncer) and the server session a lost connection leaves behind;
- ``events.sqlite_connections``: the SQLite file (created private) and each connection's pragmas
  and explicit ``BEGIN``;
- ``events.write_locks``: SQLite's one writer at a time (``BEGIN IMMEDIATE``), PostgreSQL's
  append lock that makes position order commit order (gap-safe catch-up);
- ``events.driver``: statements run on the driver's own connection (``driver_call``,
  ``fetch_all``), its errors raised as SQLAlchemy's;
- ``events.database_errors``: what an error means (disk full, server silent, connection lost).
"""

from __future__ import annotations

import json
import os
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from events.database_errors import connection_lost, storage_full, unanswered
from events.driver import (
    DriverConnection,
    driver_call,
    fetch_all,
    fetch_each,
    raw_connection,
    wrap_driver_error,
)
from events.postgres_connections import (
    ANSWER_TIMEOUT_MESSAGE,
    END_SESSION_TIMEOUT_MS,
    POSTGRES_CONNECT_TIMEOUT_SECONDS,
    POSTGRES_IDLE_PING_SECONDS,
    POSTGRES_SOCKET_DEFAULTS,
    THROUGH_POOLER,
    bound_answers,
    configure_postgres,
    end_session,
    pipeline_aborted,
    session_pid,
    through_pooler,
    transaction_failed,
)
from events.sqlite_connections import (
    DATABASE_FILE_MODE,
    configure_sqlite,
    create_private_file,
    is_sqlite,
    sqlite_file,
)
from events.write_locks import take_append_lock, write_connection, write_transaction

__all__ = [
    "ANSWER_TIMEOUT_MESSAGE",
    "APPEND_ONLY_MESSAGE",
    "DATABASE_FILE_MODE",
    "END_SESSION_TIMEOUT_MS",
    "POSTGRES_CONNECT_TIMEOUT_SECONDS",
    "POSTGRES_IDLE_PING_SECONDS",
    "POSTGRES_SOCKET_DEFAULTS",
    "THROUGH_POOLER",
    "DriverConnection",
    "append_only_ddl",
    "as_stored_json",
    "conflict_insert",
    "connection_lost",
    "create_engine",
    "database_identity",
    "driver_call",
    "drop_append_only_ddl",
    "end_session",
    "fetch_all",
    "fetch_each",
    "is_sqlite",
    "jsonb_keeps_float",
    "normalized_url",
    "pipeline_aborted",
    "raw_connection",
    "session_pid",
    "sqlite_file",
    "storage_full",
    "take_append_lock",
    "through_pooler",
    "transaction_failed",
    "unanswered",
    "wrap_driver_error",
    "write_connection",
    "write_transaction",
]


APPEND_ONLY_MESSAGE = "events are append-only: UPDATE and DELETE are refused"


def normalized_url(url: str | sa.URL) -> sa.URL:
    """``url`` as the log connects to it: PostgreSQL always through psycopg 3 (a URL without a
    driver, whose default is psycopg2 on SQLAlchemy 2.0, or naming psycopg2, gets it)."""
    sa_url = sa.make_url(url)
    if sa_url.get_backend_name() == "postgresql" and sa_url.drivername in (
        "postgresql",
        "postgresql+psycopg2",
    ):
        sa_url = sa_url.set(drivername="postgresql+psycopg")
    return sa_url


def create_engine(
    url: str,
    connect_timeout: int | None = None,
    answer_timeout: float | None = None,
    **kwargs: Any,
) -> Engine:
    """An engine configured for the log: durable SQLite, pooled PostgreSQL (psycopg 3).
    ``connect_timeout`` (seconds, PostgreSQL only) replaces the usual bound on connecting: the
    URL's own, else ``POSTGRES_CONNECT_TIMEOUT_SECONDS``. PostgreSQL sockets take
    ``POSTGRES_SOCKET_DEFAULTS`` for what the URL does not set. ``answer_timeout`` (seconds,
    PostgreSQL only; None: no bound) is how long a connection waits in all for the whole answer
    of one round trip before it is closed as lost (``bounded_connection_class``)."""
    sa_url = normalized_url(url)
    if sa_url.get_backend_name() == "sqlite":
        create_private_file(sa_url)
        engine = sa.create_engine(
            sa_url, connect_args={"check_same_thread": False, "timeout": 60}, **kwargs
        )
        configure_sqlite(engine)
        return engine
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 20)
    connect_args = dict(kwargs.pop("connect_args", None) or {})
    # A server that accepts connections and never answers would hold a request (and /healthz,
    # which should answer 503) for as long as the kernel keeps the socket.
    if connect_timeout is not None:
        connect_args["connect_timeout"] = connect_timeout
    for name, value in (
        ("connect_timeout", POSTGRES_CONNECT_TIMEOUT_SECONDS),
        *POSTGRES_SOCKET_DEFAULTS.items(),
    ):
        if name not in sa_url.query:  # the URL's own settings stand (``connect_args`` would win)
            connect_args.setdefault(name, value)
    kwargs["connect_args"] = connect_args
    engine = sa.create_engine(sa_url, **kwargs)
    if engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg":
        configure_postgres(engine)
        if answer_timeout is not None:
            bound_answers(engine, answer_timeout)
    return engine


def database_identity(engine: Engine) -> str:
    """Which database ``engine`` opens, as a word that changes when another one takes its
    place: on PostgreSQL the database's OID (a dump restored into a database is a new
    database), on SQLite the file's device and inode (a backup put in its place is another
    file)."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            oid = conn.exec_driver_sql(
                "SELECT oid FROM pg_database WHERE datname = current_database()"
            ).scalar_one()
        return f"postgresql:{oid}"
    path = sqlite_file(engine.url)
    if path is None:
        return "sqlite:memory"
    info = os.stat(path)
    return f"sqlite:{info.st_dev}:{info.st_ino}"


def conflict_insert(conn: Connection, table: sa.Table) -> postgresql.Insert | sqlite.Insert:
    """An INSERT into ``table`` in ``conn``'s dialect, so that it can take ``ON CONFLICT …
    DO UPDATE`` (``on_conflict_do_update``): SQLite and PostgreSQL write the clause alike."""
    return postgresql.insert(table) if conn.dialect.name == "postgresql" else sqlite.insert(table)


def as_stored_json(conn: Connection | DriverConnection, document: Any) -> Any:
    """``document`` exactly as a JSON column of this database will give it back.

    The hash chain must cover what readers get. PostgreSQL's ``jsonb`` rewrites some numbers
    (``1e16`` comes back as ``10000000000000000``, ``-0.0`` as ``0.0``), so there the document
    makes one round trip through the server before it is hashed; SQLite keeps the JSON text as
    written. NaN and infinities are not JSON and raise ``ValueError`` on every database.
    """
    text = json.dumps(document, allow_nan=False)
    if conn.dialect.name == "postgresql" and not _jsonb_keeps(document):
        if isinstance(conn, DriverConnection):
            statement = "SELECT CAST(%s AS jsonb)"
            return conn.call(statement, lambda c: c.execute(statement, (text,)).fetchone()[0])
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
        # (a NUL in a key is refused too: jsonb holds no U+0000 anywhere)
        return all(
            not (isinstance(k, str) and "\x00" in k) and _jsonb_keeps(v) for k, v in value.items()
        )
    if isinstance(value, (list, tuple)):  # json writes a tuple as an array
        return all(_jsonb_keeps(v) for v in value)
    if isinstance(value, float):
        return jsonb_keeps_float(value)
    return not (isinstance(value, str) and "\x00" in value)


def jsonb_keeps_float(value: float) -> bool:
    """Whether ``jsonb`` gives this float back as sent (see ``_jsonb_keeps``)."""
    text = float.__repr__(value)  # as json writes it: a subclass's own repr may differ
    return "e" not in text and "n" not in text and text != "-0.0"


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
