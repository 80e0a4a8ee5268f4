"""Fixtures shared by the integration tests: the application on a fresh database of each backend
(``database_url``, from tests/conftest.py) with a fake clock. Modules that need a populated or
copied system define their own ``system``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from backup_support import Live, live_database
from fastapi.testclient import TestClient
from test_service_support import FakeClock, open_system

from enforcement.api.shortcuts import ReportShortcut
from enforcement.bootstrap import Container
from enforcement.roles import Role
from enforcement.tokens import create_token
from events import EventStore, create_engine


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def answered(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Whether ``api.shortcuts.ReportShortcut`` answered each ``POST /v1/violations``, in
    order (False: it went the usual way, through FastAPI)."""
    seen: list[bool] = []
    call = ReportShortcut.__call__

    async def spy(self: ReportShortcut, *args: Any) -> bool:
        result = await call(self, *args)
        seen.append(result)
        return result

    monkeypatch.setattr(ReportShortcut, "__call__", spy)
    return seen


@pytest.fixture
def reporter(system: Container, client: TestClient) -> dict[str, str]:
    """A reporter's headers, its token already cached (by a request the route answers) on the
    module's ``client``: a ``POST /v1/violations`` of theirs can take the shortcut."""
    headers = {"Authorization": f"Bearer {create_token(system.engine, Role.REPORTER, 'r')}"}
    assert client.get("/v1/accounts/acct_none/standing", headers=headers).status_code == 403
    return headers


@pytest.fixture
def system(database_url: str, clock: FakeClock) -> Iterator[Container]:
    with open_system(database_url, clock) as container:
        yield container


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Live]:
    """A populated SQLite database under ``tmp_path / "live"``, the system on it (the backup
    and restore tests)."""
    with live_database(tmp_path / "live") as database:
        yield database


@pytest.fixture
def direct(pg_url: str) -> Iterator[EventStore]:
    """A store on ``pg_url`` directly, not through a test's proxy: what is really recorded."""
    engine = create_engine(pg_url)
    yield EventStore(engine)
    engine.dispose()
