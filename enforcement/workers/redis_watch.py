"""The leader's look at Redis: whether Redis lost what it held (a restart, a flush, a failover)
or follows a log that lost events (a restore), and the gate keeper that then re-seeds the gate
and has the notices sent again, and re-seeds it every few hours anyway.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from contextlib import suppress

from enforcement.bootstrap import Container
from enforcement.gatekeeping import seed_gate
from enforcement.workers.retrying import log_failure
from events import EventStore, dialects

log = logging.getLogger("enforcement.workers")
GATE_RESEED_SECONDS = 6 * 3600
REDIS_WATCH_SECONDS = 5.0
# How long a command of the watch (its look, its mark, that probe) waits for Redis: one that
# accepts connections and answers nothing (a stopped process, a paused VM) would hold the relay
# for as long as redis-py's default lets it (none in older versions, 5 s in recent ones).
REDIS_WATCH_TIMEOUT_SECONDS = 2.0


class RedisWatch:
    """Whether Redis lost what it held since a leader marked it: a Redis that restarted
    without persistence (or was flushed) comes back without the mark, and without the gate's
    state and the messages it held. One that restarted from a snapshot (RDB, redis-server's
    default, or an append-only file not fsynced on every write) or failed over to a replica
    comes back with a mark, but without what was written since: the mark holds the ``run_id``
    of the Redis run it was set in, and another run's is lost too. And whether the log lost
    what Redis followed: Redis is told which database the leader reads and its newest event
    (``note``), and a database restored from a backup is another database, or no longer has
    that event (``follows``)."""

    KEY = "enforcement:marked"
    # "<database identity> <position> <event id>" of the newest event noted ("0 -": none yet)
    LOG_KEY = "enforcement:log"

    def __init__(self, url: str):
        from enforcement.redis_client import bounded_client

        # A failed look is tried again at the next one.
        self.client = bounded_client(url, REDIS_WATCH_TIMEOUT_SECONDS, retries=0)
        self._looked_at: str | None = None  # the run of Redis ``lost`` last saw
        self._said_no_run_id = False
        # The error INFO answered last (class and message) when it was no refusal we know of,
        # and whether one such came twice in a row, and so is taken as a refusal for good.
        self._info_error: tuple[type[Exception], str] | None = None
        self._info_refused = False

    def lost(self) -> bool:
        marked = self.client.get(self.KEY)
        self._looked_at = self._run_id()
        return marked is None or _text(marked) != self._looked_at

    def mark(self) -> None:
        """Mark Redis as holding what was re-seeded since the last ``lost``: with the run of
        Redis that look saw, so that one that restarted meanwhile (amid a re-seed that went
        partly to the run before) is seen as lost at the next look."""
        run_id = self._looked_at if self._looked_at is not None else self._run_id()
        self.client.set(self.KEY, run_id)

    def _run_id(self) -> str:
        """The id of this run of the Redis server: each start has a new one. ``"-"`` when Redis
        will not say (a user whose ACL forbids INFO, a proxy without it): then only a Redis that
        lost the mark itself is seen as lost, as before marks named runs (said once, in the
        log), not a leader that cannot start. Any other error from INFO is raised, a failed
        look as a failed GET is: taken for "no run id", it would make a mark that names a run
        look lost (a re-seed and the notices re-sent for nothing). But the same error again at
        the next INFO is a refusal in words we do not know (a managed service's own): taken so
        for good by this watch, which asks INFO no more, rather than fail every look (and every
        leader's start, for ever)."""
        import redis

        if self._info_refused:
            return "-"
        previous, self._info_error = self._info_error, None
        try:
            return str(self.client.info("server")["run_id"])
        except (redis.ResponseError, KeyError) as exc:
            if isinstance(exc, redis.ResponseError) and not _refused(exc):
                self._info_error = (type(exc), str(exc))
                if self._info_error != previous:
                    raise
                self._info_refused = True
            if not self._said_no_run_id or self._info_refused:  # (this once: not asked again)
                self._said_no_run_id = True
                log.warning(
                    "Redis does not say which run of it this is (INFO server: %s%s): a Redis "
                    "restarted from a snapshot will not be seen as having lost its data (the "
                    "6-hourly re-seed mends the gate, the lost-retry scan the notices; "
                    "docs/operations.md)",
                    exc,
                    ", twice in a row: taken as a refusal" if self._info_refused else "",
                )
            return "-"

    def follows(self, store: EventStore) -> bool:
        """Whether Redis's gate state follows this log: the database Redis was last told of
        (``note``) is this one, and has the event it was told of at its position; True when
        Redis was told of none. Not so, the gate's state may carry the versions of events the
        log no longer has, and the gate refuses every update older than them (the re-seeds
        too): a database restored from a backup (or a failover to a replica that missed the
        last commits, or Redis shared with another deployment)."""
        noted = self.client.get(self.LOG_KEY)
        if noted is None:
            return True
        parts = _text(noted).split(" ")
        if len(parts) != 3:
            return False
        identity, position, event_id = parts
        if identity != dialects.database_identity(store.engine):
            return False
        if event_id == "-":
            return True
        event = store.get_event(event_id)
        return event is not None and str(event.position) == position

    def note(self, store: EventStore) -> None:
        """Tell Redis which database the leader reads, and its newest event."""
        position, event_id = store.last_event() or (0, "-")
        identity = dialects.database_identity(store.engine)
        self.client.set(self.LOG_KEY, f"{identity} {position} {event_id}")

    def answers_again(self, failure: BaseException) -> bool | None:
        """Whether Redis answers a PING now, after ``failure`` came from Redis being unreachable
        (its connection refused, cut, timed out, or Redis still loading its data); None, without
        asking, after any other failure (the database's). The relay and the leader's start then
        retry at once rather than at the end of their backoff, if a probe of their run of
        failures saw Redis away (``retrying.CameBack``)."""
        import redis

        cause: BaseException | None = failure
        while cause is not None and not isinstance(
            cause, (redis.ConnectionError, redis.TimeoutError)
        ):
            cause = cause.__cause__  # a gate's GateUnavailable, raised from the client's error
        if cause is None:
            return None
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False

    def close(self) -> None:
        self.client.close()  # and its connection pool, which ``from_url`` made for it


def _refused(error: BaseException) -> bool:
    """Whether Redis (or a proxy in front of it) refuses the command for good: an ACL denial
    (``NOPERM``, which redis-py raises as ``NoPermissionError``), or a command it does not have
    (renamed away with ``rename-command``, or a proxy without it: "unknown command 'INFO', ...";
    some proxies say "unsupported command")."""
    from redis.exceptions import NoPermissionError

    message = str(error).lower()
    return isinstance(error, NoPermissionError) or message.startswith(
        ("unknown command", "unsupported command")
    )


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def forget_another_log(container: Container, watch: RedisWatch) -> bool:
    """If Redis followed events the log does not have (``RedisWatch.follows``), forget the
    gate's state (``Gate.clear``, which every process's gate then learns again from the stored
    standings) and say so; whether it did."""
    if watch.follows(container.store):
        return False
    log.warning(
        "Redis holds gate state of events this database does not have (restored from a backup, "
        "or a failover lost them): forgetting it, re-seeding the gate from the log, re-sending "
        "notices"
    )
    container.gate.clear()
    return True


def keep_gate(
    container: Container,
    stop: threading.Event,
    watch: RedisWatch | None = None,
    on_lost: Callable[[], Callable[[], None]] | None = None,
) -> None:
    """Re-apply every stored standing to the gate now and then: Redis gate state carries a TTL
    (30 days by default), so configuration nobody touched would otherwise expire. With Redis,
    also look every few seconds whether it lost its data: then re-seed at once, instead of
    letting a suspended account through until the next re-seed, and run what ``on_lost``
    returned (re-send the notices whose messages it held); ``on_lost`` is called as soon as
    the loss is seen, before the re-seed, so that it notes what was sent before. The same
    when the log lost events that Redis followed (``forget_another_log``), and each look
    (and the stop) tells Redis of the log's newest event."""
    last_seed = time.monotonic()
    failures = 0
    while not stop.wait(GATE_RESEED_SECONDS if watch is None else REDIS_WATCH_SECONDS):
        try:
            lost = watch is not None and watch.lost()
            if lost:
                log.warning("Redis lost its data: re-seeding the gate, re-sending notices")
            if watch is not None and (lost or forget_another_log(container, watch)):
                resend = None if on_lost is None else on_lost()
                seed_gate(container.gate, container.store, container.clock())
                if resend is not None:
                    resend()
                watch.mark()
                last_seed = time.monotonic()
            elif time.monotonic() - last_seed >= GATE_RESEED_SECONDS:
                seed_gate(container.gate, container.store, container.clock())
                last_seed = time.monotonic()
            if watch is not None:
                watch.note(container.store)
        except Exception as exc:
            failures += 1
            log_failure(log, "keeping the gate failed", exc, failures, None)
        else:
            failures = 0
    if watch is not None:
        # Stopped: what was recorded since the last look is noted too (not over a log that
        # lost what Redis followed: the next leader is to see that).
        with suppress(Exception):
            if watch.follows(container.store):
                watch.note(container.store)
