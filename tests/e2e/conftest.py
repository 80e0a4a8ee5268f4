"""The real server, as a subprocess, on SQLite and on PostgreSQL: one server per backend for the
whole e2e package (not per test), with a token per role (the reporter's made by the real CLI:
``harness.create_tokens``)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.conftest import create_pg_database, drop_pg_database  # noqa: E402
from tests.e2e.harness import Server, start_server  # noqa: E402


@pytest.fixture(
    scope="package", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """``enforcement serve`` on a fresh database of each backend, shared by the e2e package."""
    workdir = tmp_path_factory.mktemp(f"e2e-{request.param}")
    if request.param == "sqlite":
        yield from start_server(f"sqlite:///{workdir / 'enforcement.db'}", workdir, "sqlite")
        return
    url = create_pg_database()
    try:
        yield from start_server(url, workdir, "postgres")
    finally:
        drop_pg_database(url)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/e2e/" in str(item.path).replace(os.sep, "/"):
            item.add_marker(pytest.mark.e2e)
