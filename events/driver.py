"""Statements on the driver's own (DBAPI) connection, for the hot paths: ``DriverConnection``
(``driver_call``), a pooled connection's rows without SQLAlchemy's per-statement work
(``fetch_all``, ``fetch_each``), and driver errors raised as SQLAlchemy's
(``wrap_driver_error``, ``raw_connection``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

R = TypeVar("R")


class DriverConnection:
    """A driver (DBAPI) connection in use, whose errors come out as SQLAlchemy's.

    For the hot paths, where SQLAlchemy's per-statement and per-row processing costs more than
    the statement itself: callers pass values the driver takes as they are. A driver error is
    wrapped exactly as ``Connection.execute`` would wrap it (``IntegrityError``,
    ``OperationalError`` …), and a disconnect invalidates the connection.
    """

    __slots__ = ("_invalidate", "_invalidated", "dbapi_connection", "dialect", "info")

    def __init__(
        self,
        dialect: sa.Dialect,
        dbapi_connection: Any,
        invalidate: Callable[[], Any],
        info: dict[Any, Any],
    ):
        """``info``: the pooled connection's (the pool's record of it, ``THROUGH_POOLER``)."""
        self.dialect = dialect
        self.dbapi_connection = dbapi_connection
        self._invalidate = invalidate
        self._invalidated = False
        self.info = info

    @classmethod
    def of(cls, conn: Connection) -> DriverConnection:
        """The driver connection under a SQLAlchemy connection (in its transaction, if any)."""
        pooled = conn.connection
        return cls(conn.dialect, pooled.dbapi_connection, conn.invalidate, pooled.info)

    def call(self, statement: str, call: Callable[[Any], R], params: Any = None) -> R:
        """``call(dbapi_connection)``, which runs ``statement``."""
        try:
            return call(self.dbapi_connection)
        except self.dialect.loaded_dbapi.Error as exc:
            raise wrap_driver_error(
                self.dialect, exc, statement, params, self.dbapi_connection, self.invalidate
            ) from exc

    def execute(self, statement: str, params: Any = ()) -> Any:
        """Run one statement; its cursor (fetch inside ``call`` where fetching may fail)."""
        return self.call(statement, lambda c: c.execute(statement, params), params)

    def invalidate(self) -> None:
        """Discard the connection: the pool closes it instead of handing it out again."""
        if not self._invalidated:
            self._invalidated = True
            self._invalidate()


def driver_call(
    conn: Connection, statement: str, call: Callable[[Any], R], params: Any = None
) -> R:
    """``call(dbapi_connection)`` on ``conn``'s driver connection (``DriverConnection.call``)."""
    return DriverConnection.of(conn).call(statement, call, params)


def raw_connection(engine: Engine) -> Any:
    """``engine.raw_connection()``, with a failure to connect raised as ``engine.connect()``
    raises it (a SQLAlchemy ``OperationalError``, not the driver's)."""
    try:
        return engine.raw_connection()
    except engine.dialect.loaded_dbapi.Error as exc:
        wrapped = sa.exc.DBAPIError.instance(
            None, None, exc, engine.dialect.loaded_dbapi.Error, dialect=engine.dialect
        )
        raise wrapped from exc


def fetch_all(engine: Engine, statement: str, params: Sequence[Any] = ()) -> list[Any]:
    """The rows of one read-only statement in the driver's parameter style (``?`` on SQLite,
    ``%s`` on PostgreSQL), on a pooled connection of its own, without SQLAlchemy's
    per-statement work; errors come out as SQLAlchemy's.

    On PostgreSQL the statement runs in autocommit: a single statement sees one snapshot
    either way, and it saves the BEGIN and ROLLBACK round trips. The connection goes back
    to the pool in its usual mode, or is discarded.
    """
    return _read(engine, statement, params, lambda conn: conn.execute(statement, params).fetchall())


def fetch_each(engine: Engine, statement: str, params: Sequence[Sequence[Any]]) -> list[list[Any]]:
    """``[fetch_all(engine, statement, p) for p in params]`` on one pooled connection; on
    PostgreSQL in one round trip (psycopg's pipeline mode, in autocommit). The statements go
    out without a Sync between them, so the server runs them as one implicit transaction: an
    error in one aborts the ones after it (the call raises), and under READ COMMITTED each
    still reads a snapshot of its own. An error names the first statement's parameters."""
    if not params:
        return []

    def run(conn: Any) -> list[list[Any]]:
        if engine.dialect.name != "postgresql":
            return [conn.execute(statement, p).fetchall() for p in params]
        with conn.pipeline():
            cursors = [conn.cursor().execute(statement, p) for p in params]
        pages = []
        for cursor in cursors:
            with cursor:
                pages.append(cursor.fetchall())
        return pages

    return _read(engine, statement, params[0], run)


def _read(engine: Engine, statement: str, params: Any, run: Callable[[Any], R]) -> R:
    """``run(driver connection)`` for ``fetch_all`` and ``fetch_each`` (see ``fetch_all``)."""
    raw = raw_connection(engine)
    dbapi_conn: Any = raw.dbapi_connection
    postgres = engine.dialect.name == "postgresql"
    try:
        try:
            if postgres:
                dbapi_conn.autocommit = True
            return run(dbapi_conn)
        except engine.dialect.loaded_dbapi.Error as exc:
            raise wrap_driver_error(
                engine.dialect, exc, statement, params, dbapi_conn, raw.invalidate
            ) from exc
        finally:
            if postgres and raw.is_valid:
                try:
                    dbapi_conn.autocommit = False
                except Exception:
                    raw.invalidate()
    finally:
        raw.close()


def wrap_driver_error(
    dialect: sa.Dialect,
    exc: Exception,
    statement: str,
    params: Any,
    dbapi_conn: Any,
    invalidate: Callable[[], None],
) -> sa.exc.DBAPIError:
    """The SQLAlchemy exception for a driver error; invalidates the connection on a disconnect."""
    disconnect = dialect.is_disconnect(exc, dbapi_conn, None)  # type: ignore[arg-type]
    if disconnect:
        invalidate()
    wrapped = sa.exc.DBAPIError.instance(
        statement,
        params,
        exc,
        dialect.loaded_dbapi.Error,
        connection_invalidated=disconnect,
        dialect=dialect,
    )
    assert isinstance(wrapped, sa.exc.DBAPIError)
    wrapped.__cause__ = exc
    return wrapped
