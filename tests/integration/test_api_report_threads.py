"""``enforcement/api/threads.py``: on PostgreSQL at most ``POSTGRES_REPORT_THREADS`` violation
reports run at once (both ways of ``POST /v1/violations``: the shortcut and the route); on
SQLite as many as AnyIO's pool allows."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anyio
import pytest
from fastapi.testclient import TestClient

from enforcement.api import shortcuts
from enforcement.api.app import create_app
from enforcement.api.routes import reporting
from enforcement.api.threads import POSTGRES_REPORT_THREADS, _limiter, install_report_limiter
from enforcement.bootstrap import Container
from enforcement.roles import Role
from enforcement.tokens import create_token

REPORTS = 12


class Overlap:
    """Wraps the reporting body: counts how many run at once.

    Each waits (up to 10 s) until ``expected`` run at once, then lingers a little, so that a
    loaded machine that is slow to start the threads does not make the count come out low.
    """

    def __init__(self, body: Callable[..., Any], expected: int) -> None:
        self.body = body
        self.expected = expected
        self.running = 0
        self.most = 0
        self.changed = threading.Condition()

    def __call__(self, *args: Any) -> Any:
        with self.changed:
            self.running += 1
            self.most = max(self.most, self.running)
            self.changed.notify_all()
            self.changed.wait_for(lambda: self.most >= self.expected, timeout=10)
        try:
            time.sleep(0.1)
            return self.body(*args)
        finally:
            with self.changed:
                self.running -= 1


@pytest.fixture
def overlap(system: Container, monkeypatch: pytest.MonkeyPatch) -> Overlap:
    postgres = system.engine.dialect.name == "postgresql"
    spy = Overlap(reporting._report_violation, POSTGRES_REPORT_THREADS if postgres else REPORTS)
    monkeypatch.setattr(reporting, "_report_violation", spy)
    monkeypatch.setattr(shortcuts, "_report_violation", spy)
    return spy


@pytest.fixture
def client(system: Container) -> Iterator[TestClient]:
    with TestClient(create_app(system)) as test_client:
        yield test_client


@pytest.mark.parametrize("cached_token", [False, True], ids=["route", "shortcut"])
def test_reports_run_at_once_up_to_the_databases_limit(
    system: Container, client: TestClient, overlap: Overlap, cached_token: bool
) -> None:
    headers = {"Authorization": f"Bearer {create_token(system.engine, Role.REPORTER, 'r')}"}
    if cached_token:  # the shortcut answers only for a token already cached
        assert client.get("/v1/accounts/acct_x/standing", headers=headers).status_code == 403

    def report(i: int) -> int:
        body = {"account_id": f"acct_{i}", "category": "spam", "source": "test"}
        return client.post("/v1/violations", json=body, headers=headers).status_code

    with ThreadPoolExecutor(REPORTS) as pool:
        statuses = list(pool.map(report, range(REPORTS)))

    assert statuses == [201] * REPORTS
    postgres = system.engine.dialect.name == "postgresql"
    assert overlap.most == (POSTGRES_REPORT_THREADS if postgres else REPORTS)


def test_each_event_loop_has_a_limiter_of_its_own(system: Container) -> None:
    # A limiter wakes its waiters on the loop it was made on: shared by two loops at once, a
    # waiter on one could be woken on the other's and never run.
    install_report_limiter(system)

    async def twice() -> tuple[Any, Any]:
        return _limiter(system), _limiter(system)

    first, second = anyio.run(twice), anyio.run(twice)
    if system.engine.dialect.name == "postgresql":
        assert first[0] is first[1] and second[0] is second[1]
        assert first[0] is not second[0]
        assert first[0].total_tokens == second[0].total_tokens == POSTGRES_REPORT_THREADS
    else:
        assert first == second == (None, None)
