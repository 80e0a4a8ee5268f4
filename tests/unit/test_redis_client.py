"""Every Redis client of the service waits a bounded time, whatever the URL says
(``enforcement.redis_client``); the behaviour against a silent Redis is tested behind a proxy
(``tests/integration/test_gate_silent_redis.py``, ``tests/workers/test_silent_redis.py``)."""

from __future__ import annotations

import redis

from enforcement.gatekeeping import build_gate, build_push_gate
from enforcement.policy import DEFAULT_POLICY
from enforcement.redis_client import bounded_client
from enforcement.settings import Settings
from enforcement.workers.broker import make_broker


def bounds(client: redis.Redis) -> tuple[float, float]:
    kwargs = client.connection_pool.connection_kwargs
    return kwargs["socket_timeout"], kwargs["socket_connect_timeout"]


def test_the_urls_own_socket_timeout_does_not_replace_the_bound() -> None:
    client = bounded_client("redis://127.0.0.1:1/0?socket_timeout=60&socket_connect_timeout=60", 2)
    try:
        assert bounds(client) == (2, 2)
        retry = client.connection_pool.connection_kwargs["retry"]
        assert retry.get_retries() == 1
        assert redis.TimeoutError not in retry._supported_errors  # a timed-out command may have run
    finally:
        client.close()


def test_the_gate_and_the_broker_wait_the_configured_time_the_push_its_own() -> None:
    settings = Settings(redis_url="redis://127.0.0.1:1/0?socket_timeout=60", redis_timeout_ms=750)
    broker = make_broker(settings)
    gate = build_gate(settings, DEFAULT_POLICY)
    push = build_push_gate(settings, DEFAULT_POLICY, gate)
    try:
        assert bounds(broker.client) == (0.75, 0.75)  # type: ignore[attr-defined]
        assert bounds(gate._client) == (0.75, 0.75)  # type: ignore[attr-defined]
        assert bounds(push._client) == (0.25, 0.25)  # type: ignore[attr-defined]
    finally:
        broker.close()
        gate.close()
        push.close()
