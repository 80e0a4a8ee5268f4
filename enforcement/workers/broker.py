"""The Dramatiq broker, chosen once at start-up: Redis when configured, in-memory otherwise."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.brokers.stub import StubBroker
from dramatiq.errors import ConnectionClosed
from dramatiq.middleware import CurrentMessage

from enforcement.redis_client import UNAVAILABLE, bounded_client
from enforcement.settings import Settings

MAINTENANCE_CHANCE = 50_000  # per million Redis commands


class _LosingConsumer(_RedisConsumer):
    """Dramatiq's Redis consumer, to which Redis not answering in time is a lost connection,
    as a refused or reset one is (Dramatiq issue 894): the worker's consumer thread then logs
    it and starts again once Redis answers. Dramatiq's lets a ``redis.TimeoutError`` through
    as an unexpected error, whose handling puts the consumer's delayed messages back in Redis,
    which times out too, out of the handler: the thread died, and its queue (a delay queue: the
    deadlines, the notices' retries) was not consumed again until the worker restarted. A
    requeue that Redis cannot take is dropped here: the messages stay in Redis, among this
    worker's unacknowledged ones, as after any lost connection.

    A Redis out of memory (``maxmemory`` with ``noeviction``), or turned replica by a
    failover (``redis_client.REFUSING_FOR_NOW``), answers, but refuses every write: to an
    acknowledgement or a requeue that is a lost connection too. Dramatiq then
    retries the acknowledgement until Redis takes it (it would otherwise leave the message
    to be run again when the worker restarts), and a consumer that could not put its delayed
    messages back starts again: Dramatiq's lets the refusal out of its error handling, and the
    thread died (a delay queue was then not consumed until the worker restarted). A fetch
    refused so stays Dramatiq's unexpected error, after which the consumer starts again."""

    def ack(self, message: Any) -> None:
        with _lost_if_silent(_WRITE_LOST):
            super().ack(message)  # type: ignore[no-untyped-call]

    def nack(self, message: Any) -> None:
        with _lost_if_silent(_WRITE_LOST):
            super().nack(message)  # type: ignore[no-untyped-call]

    def requeue(self, messages: Iterable[Any]) -> None:
        with _lost_if_silent(_WRITE_LOST):
            super().requeue(messages)  # type: ignore[no-untyped-call]

    def __next__(self) -> Any:
        with _lost_if_silent():
            return super().__next__()  # type: ignore[no-untyped-call]


# What a consumer takes for a lost connection: Redis unreachable or silent; for a write, also
# Redis refusing writes for now.
_LOST: tuple[type[Exception], ...] = (redis.ConnectionError, redis.TimeoutError)
_WRITE_LOST: tuple[type[Exception], ...] = UNAVAILABLE


@contextmanager
def _lost_if_silent(lost: tuple[type[Exception], ...] = _LOST) -> Iterator[None]:
    """Raise these errors (``_LOST`` or ``_WRITE_LOST``) as Dramatiq's ``ConnectionClosed``
    (which Dramatiq's consumer does for a connection error alone, and not in ``requeue``)."""
    try:
        yield
    except lost as exc:
        raise ConnectionClosed(exc) from None  # type: ignore[no-untyped-call]


class ClosingRedisBroker(RedisBroker):
    """Dramatiq's Redis broker, whose ``close`` closes its connections: Dramatiq's does nothing,
    and the pool it makes from the URL stays open until the broker is collected (it is in a
    reference cycle with its actors, so only by the cyclic collector). Its consumers take Redis
    not answering in time for a lost connection (``_LosingConsumer``)."""

    @property
    def consumer_class(self) -> type[_RedisConsumer]:
        return _LosingConsumer

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
        # Every command waits for Redis a bounded time (``redis_client``): an enqueue of the
        # relay's, and each fetch and acknowledgement of the consumers.
        client = bounded_client(settings.redis_url, settings.redis_timeout_ms / 1000)
        broker = ClosingRedisBroker(  # type: ignore[no-untyped-call]
            client=client,
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
