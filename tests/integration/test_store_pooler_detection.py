"""A PostgreSQL connection that goes through a connection pooler (PgBouncer) is recognised when
it is made: the process id the driver was given is not the server's. Such a connection's server
session is unknown (``session_pid`` is None), and the engine warns once. A direct connection,
and SQLite, are left as they were. (What an append does with it: test_store_lost_connection.py.)
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from events import create_engine, dialects
from events.store import _LostConnection
from tests.cutting_proxy import MADE_UP_PID, CuttingProxy


@pytest.fixture
def proxy(pg_url: str) -> Iterator[CuttingProxy]:
    with CuttingProxy(pg_url) as proxy:
        yield proxy


def sessions(engine: sa.Engine, count: int) -> list[tuple[int | None, int, int]]:
    """For ``count`` connections held at once: each one's ``session_pid``, the process id its
    driver was given, and the server's ``pg_backend_pid()``."""
    with ExitStack() as stack:
        conns = [stack.enter_context(engine.connect()) for _ in range(count)]
        return [
            (
                dialects.session_pid(dialects.DriverConnection.of(conn)),
                conn.connection.dbapi_connection.info.backend_pid,
                conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one(),
            )
            for conn in conns
        ]


def pooler_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "events.dialects" and r.levelno == logging.WARNING
    ]


@pytest.mark.postgres
def test_connections_through_a_pooler_are_recognised_and_warned_of_once(
    proxy: CuttingProxy, caplog: pytest.LogCaptureFixture
) -> None:
    proxy.pose_as_pooler()
    engine = create_engine(proxy.url)
    try:
        with caplog.at_level(logging.WARNING, logger="events.dialects"):
            seen = sessions(engine, 3)
    finally:
        engine.dispose()

    assert [(session, given) for session, given, _ in seen] == [(None, MADE_UP_PID)] * 3
    [warning] = pooler_warnings(caplog)  # one per engine, not one per connection
    assert "connection pooler" in warning
    assert "***" in warning and "enforcement:enforcement@" not in warning  # no password


@pytest.mark.postgres
def test_engines_of_one_url_warn_of_the_pooler_once_per_process(
    proxy: CuttingProxy, caplog: pytest.LogCaptureFixture
) -> None:
    """`enforcement init` makes several engines of ``ENFORCEMENT_DATABASE_URL``: through
    PgBouncer it printed the same paragraph three times on stderr."""
    proxy.pose_as_pooler()
    engines = [create_engine(proxy.url) for _ in range(3)]
    try:
        with caplog.at_level(logging.WARNING, logger="events.dialects"):
            for engine in engines:
                sessions(engine, 1)
    finally:
        for engine in engines:
            engine.dispose()
    assert len(pooler_warnings(caplog)) == 1


@pytest.mark.postgres
@pytest.mark.parametrize("through_proxy", [False, True], ids=["direct", "plain proxy"])
def test_a_connection_to_the_server_itself_has_its_session_known(
    pg_url: str, proxy: CuttingProxy, caplog: pytest.LogCaptureFixture, through_proxy: bool
) -> None:
    engine = create_engine(proxy.url if through_proxy else pg_url)
    try:
        with caplog.at_level(logging.WARNING, logger="events.dialects"):
            seen = sessions(engine, 2)
    finally:
        engine.dispose()

    assert all(session == given == server for session, given, server in seen)
    assert pooler_warnings(caplog) == []


@pytest.mark.postgres
def test_an_engine_not_made_by_create_engine_may_go_through_a_pooler(pg_url: str) -> None:
    """Its connections were not checked at connect: their session is not taken as known (an
    append that lost one is then "may have been recorded", never "nothing was written")."""
    engine = sa.create_engine(pg_url)
    try:
        with engine.connect() as conn:
            assert dialects.session_pid(dialects.DriverConnection.of(conn)) is None
    finally:
        engine.dispose()


def test_sqlite_engines_are_not_checked_for_a_pooler(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    try:
        with (
            caplog.at_level(logging.WARNING, logger="events.dialects"),
            engine.connect() as conn,
        ):
            driver = dialects.DriverConnection.of(conn)
            assert dialects.THROUGH_POOLER not in conn.connection.info
            assert dialects.session_pid(driver) is None
            # An error SQLite gives is no lost connection; one the dialect takes for a
            # disconnect is, but no lost PostgreSQL session to settle.
            with pytest.raises(DBAPIError) as refused:
                driver.execute("SELECT * FROM no_such_table")
            assert not dialects.connection_lost(refused.value, driver)
            driver.dbapi_connection.close()
            with pytest.raises(DBAPIError) as caught:
                driver.execute("SELECT 1")
            assert dialects.connection_lost(caught.value, driver)
            assert _LostConnection.of(caught.value, driver, None) is None
    finally:
        engine.dispose()
    assert pooler_warnings(caplog) == []
