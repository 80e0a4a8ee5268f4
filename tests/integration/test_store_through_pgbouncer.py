"""The store through a real PgBouncer in transaction pooling mode, with one server connection
per database: every client shares that server session, one transaction at a time, as the
processes of a service behind a small pool do (``tests/pgbouncer.py``).

PgBouncer before 1.21 does not carry prepared statements over from one client to another, so
psycopg, which prepares a statement the fifth time a connection runs it, found the name taken
by another client's ("prepared statement "_pg3_0" already exists") or missing ("does not
exist"). Through a pooler the store's connections prepare nothing."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from enforcement.migrations import upgrade
from events import EventStore, NewEvent, RecordedEvent, StreamAppend, create_engine, dialects
from tests.pgbouncer import PgBouncer

T0 = datetime(2026, 11, 24, 10, 0, 0, tzinfo=UTC)

pytestmark = pytest.mark.postgres


def new(n: int) -> NewEvent:
    return NewEvent("Noted", {"n": n}, T0)


@pytest.fixture
def stores(pg_url: str, pgbouncer: PgBouncer) -> Iterator[tuple[EventStore, EventStore]]:
    """Two stores through the PgBouncer, on engines of their own: two processes of the
    service, whose connections PgBouncer lends the one server session in turn."""
    upgrade(pg_url)
    engines = [create_engine(pgbouncer.url(pg_url)) for _ in range(2)]
    yield EventStore(engines[0]), EventStore(engines[1])
    for engine in engines:
        engine.dispose()


def test_connections_through_pgbouncer_are_recognised_and_prepare_nothing(
    pg_url: str, pgbouncer: PgBouncer
) -> None:
    pooled, direct = create_engine(pgbouncer.url(pg_url)), create_engine(pg_url)
    try:
        with pooled.connect() as through, direct.connect() as straight:
            assert dialects.through_pooler(through)
            assert dialects.session_pid(dialects.DriverConnection.of(through)) is None
            assert through.connection.dbapi_connection.prepare_threshold is None
            # A direct connection is left as it was: psycopg prepares what it runs often.
            assert not dialects.through_pooler(straight)
            assert dialects.session_pid(dialects.DriverConnection.of(straight)) is not None
            assert straight.connection.dbapi_connection.prepare_threshold == 5
    finally:
        pooled.dispose()
        direct.dispose()


def test_two_services_append_and_read_through_one_shared_server_session(
    stores: tuple[EventStore, EventStore],
) -> None:
    """Each store runs every statement of an append and of the reads more than five times, in
    turn with the other on the one server session; then retries every append."""
    first, second = stores
    recorded: dict[str, list[RecordedEvent]] = {"acct_a": [], "acct_b": []}
    for i in range(8):
        for store, account in ((first, "acct_a"), (second, "acct_b")):
            [event] = store.append(account, i, [new(i)], idempotency_key=f"{account}-{i}")
            assert store.head(account).version == i + 1
            assert store.read_stream(account)[-1] == event
            assert store.get_event(str(event.event_id)) == event
            recorded[account].append(event)
        [[a], [b]] = first.append_streams(
            [StreamAppend(f"acct_c{i}", 0, [new(i)]), StreamAppend(f"acct_d{i}", 0, [new(i)])]
        )
        assert (a.version, b.version) == (1, 1)

    for i in range(8):  # idempotent retries: what was recorded, nothing more
        for store, account in ((first, "acct_a"), (second, "acct_b")):
            retry = store.append(account, i, [new(i)], idempotency_key=f"{account}-{i}")
            assert retry == [recorded[account][i]]
    for store in stores:
        assert store.read_stream("acct_a") == recorded["acct_a"]
        assert store.read_stream("acct_b") == recorded["acct_b"]
        assert len(list(store.iter_all())) == 32
        assert store.verify("acct_a").ok and store.verify("acct_b").ok
