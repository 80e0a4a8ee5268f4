"""The Dramatiq broker, chosen once at start-up: Redis when configured, in-memory otherwise."""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import CurrentMessage

from enforcement.settings import Settings


def make_broker(settings: Settings) -> dramatiq.Broker:
    """Redis broker for ``ENFORCEMENT_REDIS_URL``; an in-memory twin in embedded mode."""
    broker: dramatiq.Broker
    if settings.redis_url:
        from dramatiq.brokers.redis import RedisBroker

        # A dead worker's unacknowledged messages are requeued after the heartbeat timeout.
        broker = RedisBroker(url=settings.redis_url, heartbeat_timeout=settings.worker_heartbeat_ms)
    else:
        broker = StubBroker()
        broker.emit_after("process_boot")
    broker.add_middleware(CurrentMessage())
    return broker
