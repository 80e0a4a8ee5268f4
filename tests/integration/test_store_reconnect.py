"""A PostgreSQL server that drops the store's pooled connections (a restart, an administrator's
``pg_terminate_backend``) costs no request: a connection is checked when it leaves the pool."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from events import EventStore, NewEvent, postgres_connections
from tests.conftest import pg_admin_url

T0 = datetime(2026, 11, 24, 10, 0, 0, tzinfo=UTC)

pytestmark = pytest.mark.postgres


def new(n: int) -> NewEvent:
    return NewEvent("Noted", {"n": n}, T0)


def drop_every_connection(database: str) -> None:
    """Terminate every session of ``database`` and wait until they are gone."""
    admin = sa.create_engine(sa.make_url(pg_admin_url()), isolation_level="AUTOCOMMIT")
    sessions = "FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()"
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"SELECT pg_terminate_backend(pid) {sessions}", (database,))
            deadline = time.monotonic() + 10
            while conn.exec_driver_sql(f"SELECT count(*) {sessions}", (database,)).scalar():
                assert time.monotonic() < deadline, "the sessions did not end"
                time.sleep(0.01)
    finally:
        admin.dispose()


def warm_pool(store: EventStore, connections: int) -> None:
    """Check out several connections at once, so that the pool holds that many."""
    held = [store.engine.connect() for _ in range(connections)]
    for conn in held:
        conn.exec_driver_sql("SELECT 1")
        conn.close()


def test_every_operation_succeeds_right_after_the_server_dropped_the_pool(
    pg_store: EventStore,
) -> None:
    pg_store.append("acct_1", 0, [new(1)])
    warm_pool(pg_store, 3)
    database = pg_store.engine.url.database
    assert database

    for round_ in range(2):  # dropped twice: reconnected connections are checked as well
        drop_every_connection(database)
        version = 1 + 2 * round_

        assert pg_store.head("acct_1").version == version
        assert [e.version for e in pg_store.read_stream("acct_1")] == list(range(1, version + 1))
        pg_store.append("acct_1", version, [new(2)])
        pg_store.append("acct_1", version + 1, [new(3)], after_append=lambda _c, _e: None)
        assert pg_store.verify("acct_1").ok
        assert len(pg_store.read_all()) == version + 2
        with pg_store.engine.connect() as conn:  # SQLAlchemy users of the engine too
            assert conn.exec_driver_sql("SELECT 1").scalar() == 1


def test_a_connection_idle_for_long_is_pinged_and_replaced_when_dead(
    pg_store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    pg_store.append("acct_1", 0, [new(1)])
    monkeypatch.setattr(postgres_connections, "POSTGRES_IDLE_PING_SECONDS", 0.0)
    # No sign of the server's goodbye: only the ping finds the connection dead.
    monkeypatch.setattr(postgres_connections, "_has_input", lambda _conn: False)
    database = pg_store.engine.url.database
    assert database

    drop_every_connection(database)

    assert pg_store.read_stream("acct_1")[0].data == {"n": 1}
    pg_store.append("acct_1", 1, [new(2)])
    assert pg_store.verify("acct_1").ok
