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
import threading
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
    """Sends packed commands over connections of ``client``'s pool, kept for this purpose.

    It keeps at most half of the pool's connections (``max_connections``, 100 by default), and
    at most ``MAX_KEPT``: the rest of the pool stays for the client's other commands (with a
    ``BlockingConnectionPool`` they would wait forever otherwise). A call that finds none of
    its connections idle and may keep no more borrows one from the pool as any command does.
    """

    MAX_KEPT = 64

    def __init__(self, client: redis.Redis) -> None:
        self._pool = client.connection_pool
        self._idle: list[Any] = []  # pop/append are atomic: no lock
        self._kept = 0
        # A pool of one keeps nothing: the client's own commands (SCRIPT LOAD) need it.
        self._max_kept = min(self.MAX_KEPT, int(self._pool.max_connections) // 2)
        self._keeping = threading.Lock()
        me = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _forget_connections(me))

    def call(self, command: bytes) -> Any:
        """Send one packed command and return its reply; Redis error replies are raised
        (``redis.ResponseError`` and its subclasses, ``NoScriptError`` among them)."""
        try:
            conn = self._idle.pop()
        except IndexError:
            conn = self._keep_one()
            if conn is None:
                return self._borrowed(command)
        try:
            return _send(conn, command)
        finally:
            self._idle.append(conn)

    def _keep_one(self) -> Any:
        """A new connection to keep, or None when as many are kept as may be. The lock only
        reserves the slot: connecting (which may wait on a slow or absent server) is done
        outside it, so concurrent checks do not queue behind one another's connect."""
        with self._keeping:
            if self._kept >= self._max_kept:
                return None
            self._kept += 1
        try:
            return self._pool.get_connection()  # kept by the wire, never released
        except BaseException:
            with self._keeping:
                self._kept -= 1
            raise

    def _borrowed(self, command: bytes) -> Any:
        conn = self._pool.get_connection()
        try:
            return _send(conn, command)
        finally:
            self._pool.release(conn)


def _send(conn: Any, command: bytes) -> Any:
    """Send and read one reply. A connection error is tried once more on a fresh connection:
    mostly a connection the server closed while it sat idle (restart, idle timeout, CLIENT
    KILL), which redis-py's pool would have probed and replaced before use. Should a reply be
    lost after the script ran, the check is counted twice, as redis-py's retries would.
    Any other interruption between the send and the reply (a timeout, a signal) disconnects
    the connection: a reply left unread must never reach the next caller."""
    try:
        return _round_trip(conn, command)
    except redis.ConnectionError:
        return _round_trip(conn, command)  # the send reconnects; a second failure stands


def _round_trip(conn: Any, command: bytes) -> Any:
    try:
        conn.send_packed_command((command,), check_health=False)
        return conn.read_response()
    except redis.ResponseError:
        raise  # an error reply, read in full: the connection is clean
    except BaseException:
        conn.disconnect()
        raise


def usable(client: object) -> TypeGuard[redis.Redis]:
    """Whether ``client`` is a plain Redis client whose pool hands out raw connections (not
    Redis Cluster, not client-side caching): only then is the check sent through a ``Wire``."""
    pool = getattr(client, "connection_pool", None)
    return isinstance(client, redis.Redis) and getattr(pool, "cache", False) is None


def _forget_connections(ref: weakref.ref[Wire]) -> None:
    wire = ref()
    if wire is not None:
        wire._idle.clear()  # the parent's sockets: not ours to use or close
        wire._kept = 0
        wire._keeping = threading.Lock()  # it may have been held by another thread
