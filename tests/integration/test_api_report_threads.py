"""``enforcement/api/threads.py``: on PostgreSQL at most ``POSTGRES_REPORT_THREADS`` violation
reports run at once (both ways of ``POST /v1/violations``: the shortcut and the route); on
SQLite as many as AnyIO's pool allows."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from fastapi.testclient import TestClient

from enforcement.api import shortcuts
from enforcement.api.app import create_app
from enforcement.api.routes import reporting
from enforcement.api.threads import POSTGRES_REPORT_THREADS
from enforcement.bootstrap import Container
from enforcement.roles import Role
from enforcement.tokens import create_token

REPORTS = 12


class Overlap:
    """Wraps the reporting body: counts how many run at once (each lingers a little first)."""

    def __init__(self, body: Callable[..., Any]) -> None:
        self.body = body
        self.running = 0
        self.most = 0
        self.lock = threading.Lock()

    def __call__(self, *args: Any) -> Any:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            time.sleep(0.2)
            return self.body(*args)
        finally:
            with self.lock:
                self.running -= 1


@pytest.fixture
def overlap(monkeypatch: pytest.MonkeyPatch) -> Overlap:
    spy = Overlap(reporting._report_violation)
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
