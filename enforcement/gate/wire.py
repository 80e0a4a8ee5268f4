"""The check's own Redis connections: a pre-packed EVALSHA sent straight down the socket.

``RedisGate.check`` is the hottest path we have, and most of its client-side cost was not the
call but redis-py's generic command path around it: packing eight arguments per call, and taking
a connection from the pool, which probes the socket with a non-blocking ``recv`` (two more
``settimeout`` calls) every time. Here a check's command is packed once per (account, key) pair
(``Packed``), the token count is appended per call, and the command goes over a connection this
module keeps for the gate's threads (taken from the client's pool once, so they carry its
settings: address, auth, TLS, timeouts, protocol; the client's ``close`` disconnects them).

A connection is always either idle and empty or in one thread's hands: redis-py's ``Connection``
disconnects itself on any error but a Redis error reply (which it reads in full), and a
disconnected one reconnects on its next send. A check that fails with a connection error is
sent once more on a fresh connection, as redis-py's default retry would; a timeout is not
retried (the gateway is waiting). Fork-safe: a child process drops the parent's connections.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Sequence
from typing import Any, TypeGuard

import redis


class Packed:
    """One command but its last argument, packed once in RESP (the argument count included)."""

    __slots__ = ("prefix",)

    def __init__(self, args: Sequence[str | bytes | int]) -> None:
        parts = [b"*%d\r\n" % (len(args) + 1)]
        for arg in args:
            data = arg if isinstance(arg, bytes) else str(arg).encode()
            parts.append(b"$%d\r\n%b\r\n" % (len(data), data))
        self.prefix = b"".join(parts)

    def with_last(self, last: int) -> bytes:
        """The whole command, with ``last`` (an integer) as its final argument."""
        digits = b"%d" % last
        return self.prefix + b"$%d\r\n%b\r\n" % (len(digits), digits)


class Wire:
    """Sends packed commands over connections of ``client``'s pool, kept for this purpose."""

    def __init__(self, client: redis.Redis) -> None:
        self._pool = client.connection_pool
        self._idle: list[Any] = []  # pop/append are atomic: no lock
        me = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _forget_connections(me))

    def call(self, command: bytes) -> Any:
        """Send one packed command and return its reply; Redis error replies are raised
        (``redis.ResponseError`` and its subclasses, ``NoScriptError`` among them)."""
        try:
            conn = self._idle.pop()
        except IndexError:
            conn = self._pool.get_connection()  # kept by the gate, never released
        try:
            try:
                conn.send_packed_command((command,), check_health=False)
                return conn.read_response()
            except redis.ConnectionError:
                # A connection the server closed (restart, idle timeout): redis-py has
                # disconnected it; the send reconnects. A second failure is the answer.
                conn.send_packed_command((command,), check_health=False)
                return conn.read_response()
        finally:
            self._idle.append(conn)


def usable(client: object) -> TypeGuard[redis.Redis]:
    """Whether ``client`` is a plain Redis client whose pool hands out raw connections (not
    Redis Cluster, not client-side caching): only then is the check sent through a ``Wire``."""
    pool = getattr(client, "connection_pool", None)
    return isinstance(client, redis.Redis) and getattr(pool, "cache", False) is None


def _forget_connections(ref: weakref.ref[Wire]) -> None:
    wire = ref()
    if wire is not None:
        wire._idle.clear()  # the parent's sockets: not ours to use or close
