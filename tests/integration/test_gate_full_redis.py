"""The gate's Redis at ``maxmemory`` with the ``noeviction`` policy (``RedisServer.memory_full``),
or turned replica by a failover that left the clients on the old primary
(``RedisServer.read_only``): it answers, but refuses the writes a check makes (its counts) with
an ``OOM`` or ``READONLY`` error reply. ``POST /v1/gate/check`` then answers 503 with the
contract's error body, as for a Redis that is down (not a 500), and answers as usual as soon as
Redis takes writes again."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from silent_support import admin_client
from test_gate_silent_redis import assert_unavailable, check

from enforcement.migrations import upgrade
from enforcement.settings import Settings
from tests.redis_server import RedisServer

pytestmark = pytest.mark.redis


@pytest.fixture
def api(redis_url: str, tmp_path: Path) -> Iterator[TestClient]:
    database_url = f"sqlite:///{tmp_path / 'enforcement.db'}"
    upgrade(database_url)
    with admin_client(Settings(database_url=database_url, redis_url=redis_url)) as client:
        yield client


@pytest.mark.parametrize("refusing", ["memory_full", "read_only", "snapshot_failing"])
@pytest.mark.parametrize("account_id", ["acct_1", "acct_new"])
def test_a_check_while_redis_refuses_writes_is_a_503(
    redis_server: RedisServer, api: TestClient, account_id: str, refusing: str
) -> None:
    """A known account, and one the gate must learn first."""
    assert check(api).status_code == 200

    with getattr(redis_server, refusing)():
        assert_unavailable(check(api, account_id))
        assert_unavailable(check(api, account_id))  # and again: nothing was left half done

    assert check(api, account_id).status_code == 200
    assert check(api, "acct_other").status_code == 200
