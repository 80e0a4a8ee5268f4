"""A driver error on the driver's own connection comes out as SQLAlchemy's, and only a
disconnect discards the connection (once)."""

from __future__ import annotations

import sqlite3

import pytest
import sqlalchemy as sa

from events.driver import DriverConnection, fetch_all, fetch_each


def driver_on(dbapi_conn: sqlite3.Connection, invalidated: list[int]) -> DriverConnection:
    dialect = sa.create_engine("sqlite://").dialect
    return DriverConnection(dialect, dbapi_conn, lambda: invalidated.append(1), {})


def test_a_refusal_is_sqlalchemys_error_and_keeps_the_connection() -> None:
    invalidated: list[int] = []
    driver = driver_on(sqlite3.connect(":memory:"), invalidated)
    with pytest.raises(sa.exc.OperationalError) as caught:
        driver.execute("SELECT * FROM absent WHERE x = ?", (1,))
    assert isinstance(caught.value.orig, sqlite3.OperationalError)
    assert caught.value.__cause__ is caught.value.orig
    assert (caught.value.statement, caught.value.params) == (
        "SELECT * FROM absent WHERE x = ?",
        (1,),
    )
    assert not caught.value.connection_invalidated
    assert invalidated == []
    assert driver.execute("SELECT 1").fetchall() == [(1,)]


def test_a_disconnect_discards_the_connection_once() -> None:
    invalidated: list[int] = []
    dbapi_conn = sqlite3.connect(":memory:")
    driver = driver_on(dbapi_conn, invalidated)
    dbapi_conn.close()  # "Cannot operate on a closed database": a disconnect to the dialect
    with pytest.raises(sa.exc.ProgrammingError) as caught:
        driver.execute("SELECT 1")
    assert caught.value.connection_invalidated
    assert invalidated == [1]
    driver.invalidate()  # again, as an append's own handler does: the pool is told once
    assert invalidated == [1]


def test_fetch_each_reads_each_and_an_error_names_the_first_parameters() -> None:
    engine = sa.create_engine("sqlite://")  # one connection, its database in memory
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (x)")
        conn.exec_driver_sql("INSERT INTO t VALUES (1), (2)")
    returned: list[object] = []
    sa.event.listen(engine, "checkin", lambda *_: returned.append(1))
    assert fetch_each(engine, "SELECT x FROM t WHERE x = ?", [(1,)]) == [[(1,)]]
    assert returned == [1]
    # the connection went back to the pool as it was, not discarded with its database
    assert fetch_all(engine, "SELECT x FROM t WHERE x > ?", (0,)) == [(1,), (2,)]
    with pytest.raises(sa.exc.OperationalError) as caught:
        fetch_each(engine, "SELECT * FROM absent WHERE x = ?", [(1,), (2,)])
    assert caught.value.params == (1,)
    assert fetch_each(engine, "SELECT x FROM t WHERE x = ?", [(2,), (3,)]) == [[(2,)], []]
