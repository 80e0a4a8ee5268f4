"""Redis clients whose every wait for Redis is bounded, whatever the URL or redis-py's version.

A Redis that keeps its connections open and answers nothing (a paused VM, a stopped process, a
network path that drops everything without a reset) is seen by no socket error: a client
without a timeout waits for it forever (redis-py before 6 has none by default; 6 and later
wait 5 s). Every client of the service's own Redis is made here, with ``socket_timeout`` and
``socket_connect_timeout`` set to its bound; a ``socket_timeout`` in ``ENFORCEMENT_REDIS_URL``
does not replace it (``ENFORCEMENT_REDIS_TIMEOUT_MS`` does, for the gate and the broker).

A command that timed out is not sent again: it may have reached Redis (a partition heals, a
frozen server wakes up) and would then run twice, an enqueue enqueuing twice. A connection
error is retried ``retries`` times at once (mostly an idle connection the server closed).
"""

from __future__ import annotations

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

DEFAULT_TIMEOUT_S = 5.0


class SnapshotFailingError(redis.exceptions.ResponseError):
    """``MISCONF``: Redis takes snapshots, its last one failed (its disk full, its directory
    gone), and ``stop-writes-on-bgsave-error`` (the default) makes it refuse writes until one
    succeeds. redis-py has no class of its own for it (a plain ``ResponseError``)."""


def _register_misconf() -> None:
    """Have redis-py's reply parsers raise ``SnapshotFailingError`` for ``MISCONF`` (their
    table of error prefixes; if a release moved it, ``MISCONF`` stays a ``ResponseError``, which
    ``tests/integration/test_gate_full_redis.py`` would tell)."""
    from redis._parsers import base

    parser = getattr(base, "BaseParser", None)
    classes = getattr(parser, "EXCEPTION_CLASSES", None)
    if isinstance(classes, dict):
        classes.setdefault("MISCONF", SnapshotFailingError)


_register_misconf()

# A Redis that answers but refuses writes for now, in a state it leaves by itself or by an
# operator's hand: out of memory (``maxmemory`` with ``noeviction``), a replica (the clients
# still point at a primary that a failover turned into one), a replica whose primary is down,
# a cluster that is down or moving the slot, a failed snapshot (``MISCONF``). To the gate and
# the workers the same as a Redis they cannot reach; any other error reply is a bug to report,
# not an outage.
REFUSING_FOR_NOW: tuple[type[redis.RedisError], ...] = (
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.MasterDownError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
    SnapshotFailingError,
)
# Redis out of reach for a write: unreachable, silent past its timeout, or refusing writes for now.
UNAVAILABLE: tuple[type[redis.RedisError], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    *REFUSING_FOR_NOW,
)


def bounded_client(url: str, timeout_s: float, *, retries: int = 1) -> redis.Redis:
    """A client of ``url`` that waits at most ``timeout_s`` to connect and for each reply."""
    client = redis.Redis.from_url(
        url, retry=Retry(NoBackoff(), retries, supported_errors=(redis.ConnectionError,))
    )
    # The URL's own socket_timeout would win over arguments to from_url: set them after it.
    client.connection_pool.connection_kwargs.update(
        socket_timeout=timeout_s, socket_connect_timeout=timeout_s
    )
    return client
