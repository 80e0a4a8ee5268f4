"""The Dramatiq broker, chosen once at start-up: Redis when configured, in-memory otherwise."""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import CurrentMessage

from enforcement.settings import Settings

MAINTENANCE_CHANCE = 50_000  # per million Redis commands


class ClosingRedisBroker(RedisBroker):
    """Dramatiq's Redis broker, whose ``close`` closes its connections: Dramatiq's does nothing,
    and the pool it makes from the URL stays open until the broker is collected (it is in a
    reference cycle with its actors, so only by the cyclic collector)."""

    def close(self) -> None:
        self.client.close()
        self.client.connection_pool.disconnect()


def make_broker(settings: Settings) -> dramatiq.Broker:
    """Redis broker for ``ENFORCEMENT_REDIS_URL``; an in-memory twin in embedded mode."""
    broker: dramatiq.Broker
    if settings.redis_url:
        # A dead worker's unacknowledged messages are requeued by the queue maintenance that a
        # live worker's command runs once the dead one's heartbeat is older than the timeout.
        # Dramatiq runs it on 0.1% of commands: an idle consumer polls ~10 times a second, so a
        # dead worker's messages would wait minutes. 5% runs it within a second or two; without
        # dead workers it costs two small sorted-set reads.
        broker = ClosingRedisBroker(  # type: ignore[no-untyped-call]
            url=settings.redis_url,
            heartbeat_timeout=settings.worker_heartbeat_ms,
            maintenance_chance=MAINTENANCE_CHANCE,
        )
    else:
        broker = StubBroker()
    # Dramatiq's own command announces the process boot; without it the time limit's watcher
    # thread never starts, and no actor is ever cut off at its time limit.
    broker.emit_after("process_boot")
    broker.add_middleware(CurrentMessage())
    return broker
