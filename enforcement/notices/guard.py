"""One delivery of a notice on a channel at a time: a guard held across its "already delivered?"
check, its send and the recording of its outcome.

Two messages for the same (notice, channel) can run at once (a new relay leader sends again
from its checkpoint while the first message's retry runs; a lost-retry scan meets a late
retry). Without the guard both found no ``NoticeDelivered`` and both sent. With it the second
waits until the first is done and then looks again: it skips what the first delivered, and
sends what the first failed to (whose own retry then finds it delivered).

The guard never costs a notice (at least once holds):

- it is held at most ``hold_s`` (the send's deadline and the recording): a holder that died,
  a process SIGKILLed, leaves a guard that lapses by itself; and the message it was delivering,
  which the broker hands to another worker, takes it over at once (it is held under the
  message's id and a token of the try's: a guard found under one's own message's id was left
  by a try of the same message). A try that was only frozen (a paused VM, SIGSTOP) past the
  broker's heartbeat, so that its message went to another worker, cannot free the guard that
  the next try took over when it resumes (their tokens differ): it goes on with its delivery,
  at least once, and logs that its guard lapsed;
- a copy waits at most ``wait_s`` for it, then sends without it (logged);
- a guard that cannot be taken (its Redis unreachable, silent or refusing writes) is not
  waited for: the copy sends as it did before the guard, logged once a minute at most.

``RedisGuard`` works across processes (``enforcement worker``'s consumers share the broker's
Redis): a key with an expiry, set by a script only when it is free (or a try of the same
message left it) to a token of the holder's, released by compare-and-delete so that a holder
never frees a guard that lapsed and another took. ``LocalGuard`` is the embedded mode's,
within one process (its workers are threads of ``serve``).
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis

from enforcement.log_folding import Repeats

log = logging.getLogger("enforcement.notices")
# How often a copy that waits looks again at a guard in Redis: from 10 ms, doubling, up to
# 250 ms (the local guard is woken at its release).
FIRST_LOOK_S = 0.01
LAST_LOOK_S = 0.25
# A guard that cannot be taken is logged once, then at most once in this many seconds.
UNAVAILABLE_LOG_S = 60.0
# Frees the guard only while it is still the releaser's (its token): a guard that lapsed
# meanwhile may be another copy's by now.
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
# Takes a guard that is free, or held by a try of the taker's message (one that died left it):
# ARGV[3] is what every try's token of that message starts with, empty for a copy of none.
_TAKE = """
local held = redis.call('get', KEYS[1])
if held and (ARGV[3] == '' or string.sub(held, 1, #ARGV[3]) ~= ARGV[3]) then return 0 end
redis.call('set', KEYS[1], ARGV[1], 'px', ARGV[2])
return 1
"""


class DeliveryGuard:
    """Held across one delivery (``held``); see the module's docstring for what it guarantees."""

    # What taking or releasing the guard may raise when its store is unavailable.
    unavailable: tuple[type[Exception], ...] = ()

    def __init__(self, hold_s: float, wait_s: float | None = None) -> None:
        self.hold_s = hold_s
        self.wait_s = hold_s if wait_s is None else wait_s
        self._waiting = 0
        self._lock = threading.Lock()  # the waiting count
        self._unavailable = Repeats(UNAVAILABLE_LOG_S)

    @property
    def waiting(self) -> int:
        """How many copies wait for a guard another holds, now."""
        return self._waiting

    @contextmanager
    def held(self, name: str, message_id: str | None = None) -> Iterator[None]:
        """Hold the guard of ``name`` (waiting for it a bounded time) for the ``with`` block;
        under ``message_id`` when given, so that the message's next try takes over a guard
        that a try which died left."""
        token = self._take_within(name, message_id)
        try:
            yield
        finally:
            if token is not None:
                self._give_back(name, token)

    def _take_within(self, name: str, message_id: str | None) -> str | None:
        """The token the guard was taken with, or None when the copy goes on without it."""
        # A try's own token, under its message's id: two tries of one message differ.
        message = None if message_id is None else f"{message_id}/"
        token = secrets.token_hex(16) if message is None else message + secrets.token_hex(8)
        deadline = time.monotonic() + self.wait_s
        pause = FIRST_LOOK_S
        waited = False
        try:
            while True:
                try:
                    if self._take(name, token, message):
                        return token
                except self.unavailable as exc:
                    self._say_unavailable(exc)
                    return None
                left = deadline - time.monotonic()
                if left <= 0:
                    log.warning(
                        "the delivery guard of %s was still held after %g s; delivering without it",
                        name,
                        self.wait_s,
                    )
                    return None
                if not waited:
                    waited = True
                    with self._lock:
                        self._waiting += 1
                self._wait(name, min(pause, left))
                pause = min(pause * 2, LAST_LOOK_S)
        finally:
            if waited:
                with self._lock:
                    self._waiting -= 1

    def _give_back(self, name: str, token: str) -> None:
        try:
            released = self._release(name, token)
        except self.unavailable as exc:
            self._say_unavailable(exc)  # it lapses by itself
            return
        if not released:
            log.warning(
                "the delivery guard of %s lapsed (%g s) before its delivery ended: another "
                "copy may have sent it too",
                name,
                self.hold_s,
            )

    def _say_unavailable(self, exc: Exception) -> None:
        said = self._unavailable.occurrence()
        if said is None:
            return
        log.warning(
            "the delivery guard is unavailable (%s: %s); notices are delivered without it, "
            "and two copies of one may both send (%d more since the last such line)",
            type(exc).__name__,
            exc,
            said.folded,
        )

    def _take(self, name: str, token: str, message: str | None) -> bool:
        """Take the guard if it is free, or held by a try of ``message`` (what every try's
        token of the message starts with; None for a copy of no message)."""
        raise NotImplementedError

    def _wait(self, name: str, seconds: float) -> None:
        raise NotImplementedError

    def _release(self, name: str, token: str) -> bool:
        raise NotImplementedError


class LocalGuard(DeliveryGuard):
    """Within one process: a copy that waits is woken when the guard is released."""

    def __init__(self, hold_s: float, wait_s: float | None = None) -> None:
        super().__init__(hold_s, wait_s)
        self._changed = threading.Condition()
        self._held: dict[str, tuple[str, float]] = {}  # name: (token, lapses at)

    def _free(self, name: str, message: str | None = None) -> bool:
        holder = self._held.get(name)
        if holder is None or holder[1] <= time.monotonic():
            return True
        return message is not None and holder[0].startswith(message)

    def _take(self, name: str, token: str, message: str | None) -> bool:
        with self._changed:
            if not self._free(name, message):
                return False
            self._held[name] = (token, time.monotonic() + self.hold_s)
            return True

    def _wait(self, name: str, seconds: float) -> None:
        with self._changed:
            if not self._free(name):
                self._changed.wait(seconds)

    def _release(self, name: str, token: str) -> bool:
        with self._changed:
            holder = self._held.get(name)
            if holder is None or holder[0] != token:
                return False
            del self._held[name]
            self._changed.notify_all()
            return holder[1] > time.monotonic()


class RedisGuard(DeliveryGuard):
    """Across processes, in Redis (the broker's client): two commands a delivery."""

    unavailable = (redis.RedisError,)
    PREFIX = "enforcement:delivering:"

    def __init__(self, client: redis.Redis, hold_s: float, wait_s: float | None = None) -> None:
        super().__init__(hold_s, wait_s)
        self.client = client
        self._release_script: Any = client.register_script(_RELEASE)
        self._take_script: Any = client.register_script(_TAKE)

    def key(self, name: str) -> str:
        return self.PREFIX + name

    def _take(self, name: str, token: str, message: str | None) -> bool:
        hold_ms = max(1, int(self.hold_s * 1000))
        return bool(self._take_script(keys=[self.key(name)], args=[token, hold_ms, message or ""]))

    def _wait(self, name: str, seconds: float) -> None:
        time.sleep(seconds)

    def _release(self, name: str, token: str) -> bool:
        return bool(self._release_script(keys=[self.key(name)], args=[token]))
