"""Fixtures for the gate suite: every test runs on the embedded gate and on a real Redis.

The embedded gate gets a fake clock that only moves when a test says so; the Redis gate reads
Redis ``TIME``, so there a test's ``advance`` is a real (short) sleep and limits are picked so
that the few milliseconds a step takes never matter. ``redis-server`` is started by the
fixture; when it is missing the tests fail, they are not skipped.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from enforcement.gate import Gate  # noqa: E402
from tests.gate.harness import (  # noqa: E402
    Backend,
    clear_of_window_end,
    embedded_backend,
    redis_backend,
)


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    clear_of_window_end(client)  # the test's checks fall in one UTC day
    yield client
    client.close()


@pytest.fixture(params=["embedded", pytest.param("redis", marks=pytest.mark.redis)])
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "embedded":
        return embedded_backend()
    return redis_backend(request.getfixturevalue("redis_client"))


@pytest.fixture
def gate(backend: Backend) -> Gate:
    return backend.make()
