"""Fixtures shared by the integration tests: the application on a fresh database of each backend
(``database_url``, from tests/conftest.py) with a fake clock. Modules that need a populated or
copied system define their own ``system``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from test_service_support import FakeClock, open_system

from enforcement.bootstrap import Container


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def system(database_url: str, clock: FakeClock) -> Iterator[Container]:
    with open_system(database_url, clock) as container:
        yield container
