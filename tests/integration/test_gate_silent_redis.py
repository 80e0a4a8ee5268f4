"""The gate's Redis gone silent: a proxy stops passing bytes either way and closes nothing
(``CuttingProxy.silence``), as a partition or a frozen server does. ``POST /v1/gate/check`` then
answers 503 within the Redis timeout (``ENFORCEMENT_REDIS_TIMEOUT_MS``), however many checks come
meanwhile (one at a time waits for Redis, the rest fail at once), and answers as usual as soon as
Redis does again."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from silent_support import admin_client, timed

from enforcement.migrations import upgrade
from enforcement.settings import Settings
from tests.cutting_proxy import CuttingProxy

pytestmark = pytest.mark.redis

TIMEOUT_S = 2.0  # ENFORCEMENT_REDIS_TIMEOUT_MS here
SLACK_S = 1.5  # a loaded machine's delays on top of the bound


@pytest.fixture
def api(redis_proxy: CuttingProxy, tmp_path: Path) -> Iterator[TestClient]:
    database_url = f"sqlite:///{tmp_path / 'enforcement.db'}"
    upgrade(database_url)
    settings = Settings(
        database_url=database_url, redis_url=redis_proxy.url, redis_timeout_ms=int(TIMEOUT_S * 1000)
    )
    with admin_client(settings, redis_proxy) as client:
        yield client


def check(client: TestClient, account_id: str = "acct_1") -> httpx.Response:
    body = {"account_id": account_id, "key_id": "key_1", "tokens": 1}
    return client.post("/v1/gate/check", json=body)


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "dependency_unavailable"


@pytest.mark.parametrize("account_id", ["acct_1", "acct_new"])
def test_a_check_while_redis_is_silent_is_a_503_within_the_timeout(
    redis_proxy: CuttingProxy, api: TestClient, account_id: str
) -> None:
    """A known account, and one the gate must learn first."""
    assert check(api).status_code == 200
    redis_proxy.silence()

    response, took = timed(lambda: check(api, account_id))

    assert_unavailable(response)
    assert took < TIMEOUT_S + SLACK_S, took
    redis_proxy.resume()
    assert check(api, account_id).status_code == 200
    assert check(api, "acct_other").status_code == 200


def test_while_redis_is_silent_one_check_at_a_time_waits_for_it(
    redis_proxy: CuttingProxy, api: TestClient
) -> None:
    """More checks than the API has threads: each would hold its thread for the whole timeout,
    and those behind them wait for a thread first (every other route of the API with them).
    Once one check found Redis silent, the others fail at once."""
    assert check(api).status_code == 200
    redis_proxy.silence()
    assert_unavailable(timed(lambda: check(api))[0])  # found silent

    with ThreadPoolExecutor(60) as pool:
        answers = list(pool.map(lambda _: timed(lambda: check(api)), range(60)))

    for response, _ in answers:
        assert_unavailable(response)
    waited = sorted(took for _, took in answers)
    assert waited[-2] < 0.75 * TIMEOUT_S, waited  # all but the one that waited for Redis
    assert waited[-1] < TIMEOUT_S + SLACK_S, waited
    # Answered again: every check goes through at once.
    redis_proxy.resume()
    assert check(api).status_code == 200
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda n: check(api, f"acct_{n}").status_code, range(8)))
    assert statuses == [200] * 8
