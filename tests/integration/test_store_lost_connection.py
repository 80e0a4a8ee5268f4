"""A PostgreSQL connection lost in the middle of an append: nothing is half-written, and the
caller is told what happened. A connection lost after the server committed (its answer never
arrived) must not be reported as "nothing was written": the store finds out, and answers with
what was recorded."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.exc import DBAPIError
from test_service_support import FakeClock

from enforcement.api.app import create_app
from enforcement.api.deps import get_principal
from enforcement.bootstrap import bootstrap
from enforcement.migrations import upgrade
from enforcement.roles import Role
from enforcement.settings import Settings
from enforcement.tokens import Principal
from events import (
    AppendOutcomeUnknown,
    EventStore,
    NewEvent,
    StreamAppend,
    create_engine,
    dialects,
    postgres_connections,
)
from tests.cutting_proxy import CuttingProxy

T0 = datetime(2026, 11, 24, 10, 0, 0, tzinfo=UTC)

pytestmark = pytest.mark.postgres


def new(n: int) -> NewEvent:
    return NewEvent("Noted", {"n": n}, T0)


@pytest.fixture
def proxy(pg_url: str) -> Iterator[CuttingProxy]:
    upgrade(pg_url)
    with CuttingProxy(pg_url) as proxy:
        yield proxy


@pytest.fixture
def store(proxy: CuttingProxy) -> Iterator[EventStore]:
    """A store whose connections go through the proxy."""
    engine = create_engine(proxy.url)
    yield EventStore(engine)
    engine.dispose()


def not_pipeline_safe(_conn: Any, _events: Any) -> None:
    """An ``after_append`` that keeps the append off the pipelined path."""


# Each way an append reaches COMMIT: pipelined (a new stream, a known head), or BEGIN, the
# lock and the head reads, the insert, then COMMIT (with an after_append; several streams).
APPENDS = {
    "pipelined new stream": lambda s: s.append("acct_1", 0, [new(1), new(2)]),
    "read head": lambda s: s.append("acct_1", 0, [new(1), new(2)], after_append=not_pipeline_safe),
    "with a key": lambda s: s.append("acct_1", 0, [new(1), new(2)], idempotency_key="k1"),
    "two streams": lambda s: s.append_streams(
        [StreamAppend("acct_1", 0, [new(1), new(2)]), StreamAppend("acct_2", None, [new(3)])]
    ),
}


@pytest.mark.parametrize("way", list(APPENDS))
def test_an_append_committed_before_its_connection_was_lost_returns_what_it_recorded(
    proxy: CuttingProxy, direct: EventStore, store: EventStore, way: str
) -> None:
    proxy.arm_after_commit()

    returned = APPENDS[way](store)

    assert proxy.cut.is_set()  # the answer to COMMIT never reached the store
    recorded = direct.read_all()
    flat = returned if way != "two streams" else [e for batch in returned for e in batch]
    assert flat == recorded
    assert direct.verify("acct_1").ok
    # The store goes on as usual afterwards.
    store.append("acct_1", 2, [new(4)])
    assert [e.version for e in direct.read_stream("acct_1")] == [1, 2, 3]


@pytest.mark.parametrize("way", ["read head", "with a key"])
def test_an_append_whose_connection_was_lost_before_commit_writes_nothing_and_says_so(
    proxy: CuttingProxy,
    direct: EventStore,
    store: EventStore,
    way: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ "Nothing was written" is final only once the lost session has ended: until then its
    statements may still run and commit, and a caller told it failed would append it again."""
    ended: list[int] = []
    end_session = dialects.end_session
    monkeypatch.setattr(
        dialects, "end_session", lambda engine, pid: (ended.append(pid), end_session(engine, pid))
    )
    proxy.arm_before("INSERT INTO events")

    with pytest.raises(DBAPIError) as caught:
        APPENDS[way](store)

    assert proxy.cut.is_set()
    assert caught.value.connection_invalidated
    assert direct.read_all() == []
    assert not direct.key_used("k1")
    assert len(ended) == 1  # asked after the session was ended


def test_when_the_server_cannot_be_asked_the_outcome_is_reported_unknown(
    proxy: CuttingProxy, direct: EventStore, store: EventStore
) -> None:
    store.head("acct_1")  # a pooled connection, which the append takes
    proxy.arm_after_commit()
    proxy.refuse_new = True  # the connection is lost, and no other can be made

    with pytest.raises(AppendOutcomeUnknown) as caught:
        store.append("acct_1", 0, [new(1)])

    assert "may have been recorded" in str(caught.value)
    assert len(direct.read_all()) == 1  # it was, in fact


# ---------------------------------------------------------------- through the application


@contextmanager
def client_of(url: str) -> Iterator[TestClient]:
    container = bootstrap(Settings(database_url=url), clock=FakeClock())
    app = create_app(container)
    app.dependency_overrides[get_principal] = lambda: Principal("tok_t", "test", Role.ADMIN)
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            yield client
    finally:
        container.close()


@pytest.fixture
def api(proxy: CuttingProxy) -> Iterator[TestClient]:
    with client_of(proxy.url) as client:
        yield client


def report(client: TestClient, account_id: str) -> Any:
    return client.post("/v1/violations", json={"account_id": account_id, "category": "spam"})


def test_a_violation_recorded_before_the_connection_was_lost_is_answered_201(
    proxy: CuttingProxy, direct: EventStore, api: TestClient
) -> None:
    assert report(api, "acct_0").status_code == 201
    proxy.arm_after_commit()

    response = report(api, "acct_1")

    assert proxy.cut.is_set()
    assert response.status_code == 201, response.text  # not 503 "nothing was written"
    recorded = [e.event_id for e in direct.read_stream("acct_1")]
    assert [e["event_id"] for e in response.json()["decisions"]] == recorded[1:]


def test_a_violation_whose_outcome_cannot_be_known_is_a_503_that_says_so(
    proxy: CuttingProxy, direct: EventStore, api: TestClient
) -> None:
    assert report(api, "acct_0").status_code == 201  # the pool holds a connection now
    proxy.arm_after_commit()
    proxy.refuse_new = True

    response = report(api, "acct_1")

    assert proxy.cut.is_set()
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["code"] == "dependency_unavailable"
    assert "may have been recorded" in error["message"]
    assert "nothing was written" not in error["message"]
    assert direct.head("acct_1").version >= 1  # it was, in fact


# ---------------------------------------------------------------- appends that met in a group


def _group_behind_a_held_append(
    store: EventStore, arm: Any, accounts: tuple[str, ...]
) -> tuple[list[Any], Any]:
    """Appends to ``accounts`` that queue while another append's transaction is held open, so
    that they are then written together in one transaction (``_write_together``, a savepoint
    each); ``arm`` is called once they queue, before the held one commits. The futures of the
    grouped appends, and the held one's."""
    for account in ("acct_lead", *accounts):
        store.append(account, 0, [new(0)])
    leader_in, release = threading.Event(), threading.Event()

    def hold(_conn: Any, _recorded: Any) -> None:
        leader_in.set()
        assert release.wait(30)

    pool = ThreadPoolExecutor(len(accounts) + 1)
    leader = pool.submit(store.append, "acct_lead", 1, [new(1)], after_append=hold)
    assert leader_in.wait(30)
    grouped = [
        pool.submit(store.append, account, 1, [new(n)], after_append=not_pipeline_safe)
        for n, account in enumerate(accounts, 2)
    ]
    deadline = time.monotonic() + 30
    while len(store._writes._pending) < len(accounts) and time.monotonic() < deadline:
        time.sleep(0.001)
    assert len(store._writes._pending) == len(accounts)  # they wait for the open transaction
    arm()
    release.set()
    pool.shutdown(wait=False)
    return grouped, leader


def test_a_group_whose_connection_was_lost_before_commit_says_nothing_was_written(
    proxy: CuttingProxy, direct: EventStore, store: EventStore
) -> None:
    """Appends written together, each in a savepoint: the connection lost at one's insert is
    the group's, not that append's alone. Each append gets the driver's error (HTTP 503:
    nothing was written), not a ``PendingRollbackError`` from rolling back a savepoint on the
    lost connection (a 500, which skipped finding out whether the group was committed)."""
    grouped, leader = _group_behind_a_held_append(
        store, lambda: proxy.arm_before("INSERT INTO events"), ("acct_1", "acct_2")
    )
    leader.result(30)
    errors = []
    for future in grouped:
        with pytest.raises(DBAPIError) as caught:
            future.result(30)
        assert caught.value.connection_invalidated
        errors.append(caught.value)
    # Each its own copy, as group commit gives each thread: their tracebacks do not mix.
    assert errors[0] is not errors[1]
    assert proxy.cut.is_set()
    assert [e.version for e in direct.read_stream("acct_1")] == [1]
    assert [e.version for e in direct.read_stream("acct_2")] == [1]


def test_a_group_committed_before_its_connection_was_lost_returns_what_each_recorded(
    proxy: CuttingProxy, direct: EventStore, store: EventStore
) -> None:
    grouped, leader = _group_behind_a_held_append(
        store, proxy.arm_after_commit, ("acct_1", "acct_2")
    )
    leader.result(30)
    # The held append commits first; the proxy cuts the group's COMMIT, the next one.
    results = [future.result(30) for future in grouped]
    assert proxy.cut.is_set()
    assert results == [direct.read_stream("acct_1")[1:], direct.read_stream("acct_2")[1:]]


# ---------------------------------------------------------------- through a connection pooler
# The proxy gives each connection a process id of its own making, as PgBouncer does: the
# store cannot end the lost session, so "not found" is not final.


@pytest.mark.parametrize("way", list(APPENDS))
def test_through_a_pooler_an_append_committed_before_its_connection_was_lost_returns_it(
    proxy: CuttingProxy, direct: EventStore, store: EventStore, way: str
) -> None:
    proxy.pose_as_pooler()
    proxy.arm_after_commit()

    returned = APPENDS[way](store)

    assert proxy.cut.is_set()
    flat = returned if way != "two streams" else [e for batch in returned for e in batch]
    assert flat == direct.read_all()


@pytest.mark.parametrize("way", ["read head", "with a key"])
def test_through_a_pooler_an_append_not_found_after_its_connection_was_lost_is_unknown(
    proxy: CuttingProxy, direct: EventStore, store: EventStore, way: str
) -> None:
    """Not "nothing was written": the session the pooler served it on cannot be ended, and
    might still commit what it was sent (here it was not sent the insert)."""
    proxy.pose_as_pooler()
    proxy.arm_before("INSERT INTO events")

    with pytest.raises(AppendOutcomeUnknown) as caught:
        APPENDS[way](store)

    assert proxy.cut.is_set()
    assert "may still record it" in str(caught.value)
    assert isinstance(caught.value.__cause__, DBAPIError)
    assert direct.read_all() == []


@pytest.fixture
def bystander(pg_url: str) -> Iterator[psycopg.Connection[Any]]:
    """Another live session of the same database and user, straight to the server."""
    url = sa.make_url(pg_url).set(drivername="postgresql")
    conn = psycopg.connect(url.render_as_string(hide_password=False), autocommit=True)
    yield conn
    conn.close()


@pytest.mark.parametrize("cut", ["after commit", "before insert"])
def test_through_a_pooler_another_session_with_the_made_up_process_id_is_not_ended(
    proxy: CuttingProxy,
    direct: EventStore,
    store: EventStore,
    bystander: psycopg.Connection[Any],
    cut: str,
) -> None:
    """The pooler's made-up process id may be that of another session of the service: ending
    "the lost session" by that id would end it (it did, before the pooler was recognised)."""
    [(pid,)] = bystander.execute("SELECT pg_backend_pid()").fetchall()
    proxy.pose_as_pooler(pid)
    if cut == "after commit":
        proxy.arm_after_commit()
    else:
        proxy.arm_before("INSERT INTO events")

    # What the append answers is for the tests above; here, what became of the bystander.
    with contextlib.suppress(AppendOutcomeUnknown, DBAPIError):
        store.append("acct_1", 0, [new(1)], after_append=not_pipeline_safe)

    assert proxy.cut.is_set()
    assert bystander.execute("SELECT pg_backend_pid()").fetchall() == [(pid,)]  # still alive
    assert len(direct.read_all()) == (1 if cut == "after commit" else 0)


def test_ending_a_lost_session_ends_it_and_waits_for_it(
    pg_url: str, bystander: psycopg.Connection[Any]
) -> None:
    """``end_session`` on a session still alive (the server has not yet seen its client go):
    it is ended, and waited for, not left to run on (and maybe commit)."""
    [(pid,)] = bystander.execute("SELECT pg_backend_pid()").fetchall()
    engine = create_engine(pg_url)
    try:
        dialects.end_session(engine, pid)
    finally:
        engine.dispose()
    with pytest.raises(psycopg.OperationalError):
        bystander.execute("SELECT 1")


def test_a_lost_session_that_does_not_end_is_not_taken_for_ended(
    pg_url: str, bystander: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session still running after ``end_session`` may yet commit what it was sent: a
    ``TimeoutError`` (the append's outcome unknown), not a return ("nothing was written")."""
    [(pid,)] = bystander.execute("SELECT pg_backend_pid()").fetchall()
    fetch_all = postgres_connections.fetch_all

    def terminate_nothing(engine: sa.Engine, statement: str, params: Any) -> Any:
        if "pg_terminate_backend" in statement:  # as if the process would not end in time
            return []
        return fetch_all(engine, statement, params)

    monkeypatch.setattr(postgres_connections, "fetch_all", terminate_nothing)
    engine = create_engine(pg_url)
    try:
        with pytest.raises(TimeoutError, match=f"server process {pid} did not end"):
            dialects.end_session(engine, pid)
    finally:
        engine.dispose()
    assert bystander.execute("SELECT 1").fetchall() == [(1,)]


def test_through_a_pooler_a_group_whose_connection_was_lost_before_commit_is_unknown(
    proxy: CuttingProxy, direct: EventStore, store: EventStore
) -> None:
    proxy.pose_as_pooler()
    grouped, leader = _group_behind_a_held_append(
        store, lambda: proxy.arm_before("INSERT INTO events"), ("acct_1", "acct_2")
    )
    leader.result(30)
    for future in grouped:
        with pytest.raises(AppendOutcomeUnknown):
            future.result(30)
    assert proxy.cut.is_set()
    assert [e.version for e in direct.read_stream("acct_1")] == [1]
    assert [e.version for e in direct.read_stream("acct_2")] == [1]


def test_through_a_pooler_a_violation_not_found_after_a_lost_connection_is_a_503_that_says_so(
    proxy: CuttingProxy, direct: EventStore
) -> None:
    proxy.pose_as_pooler()
    with client_of(proxy.url) as api:
        assert report(api, "acct_0").status_code == 201
        proxy.arm_before("INSERT INTO events")

        response = report(api, "acct_1")

    assert proxy.cut.is_set()
    assert response.status_code == 503, response.text
    message = response.json()["error"]["message"]
    assert "may have been recorded" in message
    assert "nothing was written" not in message
    assert direct.head("acct_1").version == 0


def test_an_error_the_server_gave_is_no_lost_connection_a_broken_connection_is(
    pg_url: str,
) -> None:
    """``connection_lost``: not an error the server answered with (its connection still works;
    an append in a group then fails alone), but any error on a connection psycopg knows is
    broken, even one SQLAlchemy did not mark (it marks only a disconnect it sees as it wraps the
    error, none on a connection it had already invalidated)."""
    engine = create_engine(pg_url)
    try:
        with engine.connect() as conn:
            driver = dialects.DriverConnection.of(conn)
            with pytest.raises(DBAPIError) as caught:
                driver.execute("SELECT 1 / 0")
            assert not caught.value.connection_invalidated
            assert not dialects.connection_lost(caught.value, driver)
            driver.dbapi_connection.pgconn.finish()  # as an unanswered wait leaves it
            assert dialects.connection_lost(caught.value, driver)
    finally:
        engine.dispose()
