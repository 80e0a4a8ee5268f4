"""Every Redis client of the service waits a bounded time, whatever the URL says
(``enforcement.redis_client``); the behaviour against a silent Redis is tested behind a proxy
(``tests/integration/test_gate_silent_redis.py``, ``tests/workers/test_silent_redis.py``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis
from dramatiq.brokers.redis import _RedisConsumer
from dramatiq.brokers.stub import StubBroker
from dramatiq.errors import ConnectionClosed
from dramatiq.middleware import CurrentMessage

from enforcement.gate import EmbeddedGate
from enforcement.gatekeeping import build_gate, build_push_gate
from enforcement.policy import DEFAULT_POLICY
from enforcement.redis_client import bounded_client
from enforcement.settings import Settings
from enforcement.workers.broker import ClosingRedisBroker, make_broker


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
        # The push gives up at once: the relay follows (a retry would double its wait).
        push_retry = push._client.connection_pool.connection_kwargs["retry"]  # type: ignore[attr-defined]
        assert push_retry.get_retries() == 0
    finally:
        broker.close()
        gate.close()
        push.close()


def test_without_redis_the_gate_is_in_process_and_the_push_writes_to_it() -> None:
    settings = Settings()
    gate = build_gate(settings, DEFAULT_POLICY)
    assert isinstance(gate, EmbeddedGate)
    assert gate.check("acct_1", "key_1").allowed  # on its default clock: the time of day
    assert build_push_gate(settings, DEFAULT_POLICY, gate) is gate
    # A gate not on Redis is pushed to itself, whatever the settings say.
    on_redis = Settings(redis_url="redis://127.0.0.1:1/0")
    assert build_push_gate(on_redis, DEFAULT_POLICY, gate) is gate


def test_the_broker_runs_queue_maintenance_on_five_percent_of_commands() -> None:
    settings = Settings(redis_url="redis://127.0.0.1:1/0", worker_heartbeat_ms=7_000)
    broker = make_broker(settings)
    try:
        assert isinstance(broker, ClosingRedisBroker)
        assert (broker.maintenance_chance, broker.heartbeat_timeout) == (50_000, 7_000)
    finally:
        broker.close()


def test_the_embedded_broker_is_in_memory_and_gives_the_actors_their_message() -> None:
    broker = make_broker(Settings(redis_url=None))
    assert isinstance(broker, StubBroker)
    assert any(isinstance(m, CurrentMessage) for m in broker.middleware)


def refusal(method: str, error: type[Exception]) -> Callable[..., Any]:
    def refuse(self: Any, *args: Any) -> Any:
        raise error(f"{method} refused")

    return refuse


WRITES = ("ack", "nack", "requeue")
REFUSED_FOR_NOW = (redis.exceptions.ReadOnlyError, redis.exceptions.OutOfMemoryError)


@pytest.mark.parametrize("method", [*WRITES, "__next__"])
@pytest.mark.parametrize("error", [redis.ConnectionError, redis.TimeoutError, *REFUSED_FOR_NOW])
def test_the_consumer_takes_redis_silent_or_refusing_a_write_for_a_lost_connection(
    method: str, error: type[Exception], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dramatiq's consumer thread starts again after a ``ConnectionClosed``; a fetch that Redis
    refuses stays an unexpected error (``broker._LosingConsumer``)."""
    broker = make_broker(Settings(redis_url="redis://127.0.0.1:1/0"))
    try:
        consumer = broker.consume("enforcement")
        monkeypatch.setattr(_RedisConsumer, method, refusal(method, error))
        lost = method in WRITES or error not in REFUSED_FOR_NOW
        with pytest.raises(ConnectionClosed if lost else error):
            getattr(consumer, method)(*(() if method == "__next__" else (None,)))
    finally:
        broker.close()


def test_the_consumer_passes_on_what_redis_gives(monkeypatch: pytest.MonkeyPatch) -> None:
    broker = make_broker(Settings(redis_url="redis://127.0.0.1:1/0"))
    try:
        consumer: Any = broker.consume("enforcement")
        done: list[tuple[str, Any]] = []
        for method in WRITES:
            monkeypatch.setattr(
                _RedisConsumer, method, lambda self, arg, m=method: done.append((m, arg))
            )
        monkeypatch.setattr(_RedisConsumer, "__next__", lambda self: "a message")
        consumer.ack("m1")
        consumer.nack("m2")
        consumer.requeue(["m3"])
        assert next(consumer) == "a message"
        assert done == [("ack", "m1"), ("nack", "m2"), ("requeue", ["m3"])]
    finally:
        broker.close()
