"""PostgreSQL gone silent: a proxy between the service and the server stops passing bytes either
way and closes nothing (``CuttingProxy.silence``), as a partition or a hung server does. Its
kernel still acknowledges what it is sent, so keepalives and ``tcp_user_timeout`` see nothing:
only the service's own bound on waiting for an answer (``ENFORCEMENT_DATABASE_TIMEOUT_MS``) ends
a request. Reports then fail with 503 "nothing was written" within that bound (plus the connect
timeout when a connection must be made), those that wait behind one too, nothing is recorded,
and once bytes flow again the next requests succeed at once."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from silent_support import admin_client, timed
from test_service_support import FakeClock

from enforcement.bootstrap import bootstrap
from enforcement.migrations import upgrade
from enforcement.settings import Settings
from events import EventStore, create_engine
from tests.cutting_proxy import CuttingProxy

pytestmark = pytest.mark.postgres

TIMEOUT_S = 1.0  # ENFORCEMENT_DATABASE_TIMEOUT_MS here
CONNECT_S = 2  # the URL's connect_timeout here (libpq's least)
SLACK_S = 1.5  # a loaded machine's delays on top of the bounds


@pytest.fixture
def proxy(pg_url: str) -> Iterator[CuttingProxy]:
    upgrade(pg_url)
    with CuttingProxy(pg_url) as proxy:
        yield proxy
        proxy.resume()  # let whatever still waits end before the sockets close


@pytest.fixture
def api(proxy: CuttingProxy) -> Iterator[TestClient]:
    url = sa.make_url(proxy.url).update_query_dict({"connect_timeout": str(CONNECT_S)})
    settings = Settings(
        database_url=url.render_as_string(hide_password=False),
        database_timeout_ms=int(TIMEOUT_S * 1000),
    )
    with admin_client(settings, proxy, FakeClock()) as client:
        yield client


def report(client: TestClient, account_id: str) -> httpx.Response:
    return client.post("/v1/violations", json={"account_id": account_id, "category": "spam"})


def assert_nothing_written(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["code"] == "dependency_unavailable"
    assert "nothing was written" in error["message"]


def violations(store: EventStore, account_id: str) -> int:
    return sum(e.type == "ViolationReported" for e in store.read_stream(account_id))


def test_a_report_while_the_database_is_silent_is_a_503_within_the_timeout(
    proxy: CuttingProxy, direct: EventStore, api: TestClient
) -> None:
    assert report(api, "acct_0").status_code == 201  # the pool holds a live connection
    proxy.silence()

    response, took = timed(lambda: report(api, "acct_1"))

    assert_nothing_written(response)
    assert took < TIMEOUT_S + CONNECT_S + SLACK_S, took
    # Once bytes flow again (what the proxy held reaches the server: a read), the next reports
    # are answered as usual, and the one that failed left nothing behind.
    proxy.resume()
    for account in ("acct_1", "acct_2", "acct_0"):
        assert report(api, account).status_code == 201
    assert (violations(direct, "acct_0"), violations(direct, "acct_1")) == (2, 1)


def test_reports_waiting_behind_one_another_each_fail_within_one_timeout(
    proxy: CuttingProxy, direct: EventStore, api: TestClient
) -> None:
    """Concurrent reports are recorded by one thread, a batch at a time (``api/coalesce.py``):
    once the database is found silent, the reports that waited behind it fail at once instead
    of each waiting the whole timeout again, one after another (the eighth waited eight)."""
    assert report(api, "acct_0").status_code == 201
    proxy.silence()
    accounts = [f"acct_{i}" for i in range(1, 9)]

    def each(account: str) -> tuple[httpx.Response, float]:
        return timed(lambda: report(api, account))

    with ThreadPoolExecutor(len(accounts)) as pool:
        answers = list(pool.map(each, accounts))

    for response, _ in answers:
        assert_nothing_written(response)
    slowest = max(took for _, took in answers)
    # The first waits for the pooled connection's answer; the rest are answered with it.
    assert slowest < TIMEOUT_S + SLACK_S, [took for _, took in answers]
    proxy.resume()
    assert report(api, "acct_1").status_code == 201
    with ThreadPoolExecutor(4) as pool:  # reports queued behind one another again
        statuses = list(pool.map(lambda a: report(api, a).status_code, accounts[4:]))
    assert statuses == [201] * 4
    assert [violations(direct, account) for account in accounts] == [1, 0, 0, 0, 1, 1, 1, 1]


def test_a_batch_while_the_database_is_silent_fails_each_item_within_one_timeout(
    proxy: CuttingProxy, direct: EventStore, api: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    assert report(api, "acct_0").status_code == 201
    caplog.set_level(logging.WARNING, logger="enforcement")
    proxy.silence()
    items: list[dict[str, Any]] = [
        {"account_id": f"acct_{i % 10}", "category": "spam"} for i in range(20)
    ]

    response, took = timed(lambda: api.post("/v1/violations:batch", json={"violations": items}))

    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["status"] for r in results] == [503] * 20
    assert {r["error"]["code"] for r in results} == {"dependency_unavailable"}
    assert took < TIMEOUT_S + SLACK_S, took  # one read of the pooled connection, not 20
    # The log says once why the items were not sent, not once for each, with a traceback
    failed = [r for r in caplog.records if r.getMessage() == "a batch item failed in the store"]
    assert len(failed) <= 1, len(failed)  # the item that waited, if one did
    silent = [r for r in caplog.records if "not sent" in r.getMessage()]
    assert len(silent) == 1, [r.getMessage() for r in silent]
    assert "did not answer within 1 s" in silent[0].getMessage()
    proxy.resume()
    assert [violations(direct, f"acct_{i}") for i in range(10)] == [1] + [0] * 9


def test_a_report_whose_append_goes_unanswered_may_have_been_recorded_and_is_retried_once(
    proxy: CuttingProxy, direct: EventStore, api: TestClient
) -> None:
    """Silent from the append on: whether the commit reaches the server cannot be known (it
    does, here, once the proxy passes what it held), so the answer says it may have been
    recorded; the retry with the same Idempotency-Key then records nothing twice."""
    assert report(api, "acct_0").status_code == 201
    proxy.arm_silence_before("INSERT INTO events")
    body = {"account_id": "acct_1", "category": "spam"}
    key = {"Idempotency-Key": "ticket-1"}

    response, took = timed(lambda: api.post("/v1/violations", json=body, headers=key))

    assert response.status_code == 503, response.text
    assert "may have been recorded" in response.json()["error"]["message"]
    assert took < TIMEOUT_S + CONNECT_S + SLACK_S, took  # the answer, then asking the server
    proxy.resume()
    wait_until_recorded = time.monotonic() + 10
    while violations(direct, "acct_1") == 0:  # what the proxy held reaches the server
        assert time.monotonic() < wait_until_recorded, "the held append never committed"
        time.sleep(0.02)
    again = api.post("/v1/violations", json=body, headers=key)
    assert again.status_code == 200, again.text  # the first one's answer, nothing new
    assert violations(direct, "acct_1") == 1


def test_a_silent_server_fails_a_statement_and_the_engine_connects_again_after(
    proxy: CuttingProxy,
) -> None:
    engine = create_engine(proxy.url, answer_timeout=0.5)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        proxy.silence()
        with pytest.raises(sa.exc.OperationalError) as caught, engine.connect() as conn:
            started = time.monotonic()
            conn.exec_driver_sql("SELECT 1")
        took = time.monotonic() - started
        assert 0.5 <= took < 0.5 + SLACK_S, took
        assert "did not answer within 0.5 s" in str(caught.value)
        assert caught.value.connection_invalidated  # closed: never handed out again
        proxy.resume()
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT 2").scalar() == 2
    finally:
        engine.dispose()


def test_the_settings_bound_is_the_one_the_applications_connections_get(pg_url: str) -> None:
    """``ENFORCEMENT_DATABASE_TIMEOUT_MS`` reaches the engine ``bootstrap`` builds, in seconds."""
    container = bootstrap(Settings(database_url=pg_url, database_timeout_ms=2500))
    try:
        with container.engine.connect() as conn:
            driver = conn.connection.driver_connection
            assert driver is not None
            assert driver.answer_timeout == 2.5
    finally:
        container.close()


def test_the_bound_is_on_any_wait_a_statement_running_longer_fails_too(pg_url: str) -> None:
    """The client cannot tell a silent server from one still running the statement: the
    bound is also the longest one round trip may take (``docs/operations.md``)."""
    engine = create_engine(pg_url, answer_timeout=0.5)
    try:
        with pytest.raises(sa.exc.OperationalError, match=r"within 0\.5 s"), engine.connect() as c:
            c.exec_driver_sql("SELECT pg_sleep(2)")
        # Rows that keep coming do not extend it, and the error does not say nothing came
        with pytest.raises(sa.exc.OperationalError) as caught, engine.connect() as c:
            c.exec_driver_sql("SELECT pg_sleep(0.3), g FROM generate_series(1, 4) AS g").all()
        assert "did not answer within 0.5 s" in str(caught.value)
        assert "sent nothing" not in str(caught.value)
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT pg_sleep(0.1), 3").one()[1] == 3
    finally:
        engine.dispose()


def test_a_wait_with_its_own_bound_ends_as_its_caller_expects_and_the_connection_stays(
    pg_url: str,
) -> None:
    """psycopg's ``notifies(timeout=...)`` bounds its own wait: its end is no silent server."""
    engine = create_engine(pg_url, answer_timeout=0.5)
    try:
        with engine.connect() as conn:
            assert list(conn.connection.driver_connection.notifies(timeout=0.01)) == []
            assert conn.exec_driver_sql("SELECT 4").scalar() == 4
    finally:
        engine.dispose()
