"""How the workers run: threads inside ``serve`` (embedded) or ``enforcement worker`` processes.

- Embedded (no Redis): an in-memory broker, Dramatiq worker threads, the relay and the deadline
  sweep, all inside the ``serve`` process: one command runs everything.
- Distributed: the Redis broker; ``enforcement worker`` runs the relay and the sweep in its main
  process (one leader at a time on PostgreSQL, by an advisory lock) and Dramatiq consumers in
  ``worker_processes`` child processes.
"""

from __future__ import annotations

import fcntl
import functools
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from datetime import timedelta
from typing import Any

import dramatiq
import sqlalchemy as sa

from enforcement.bootstrap import Container
from enforcement.closing import close_after, close_once_ended
from enforcement.gatekeeping import seed_gate
from enforcement.notices.delivery import CHANNELS, NoticeDelivery
from enforcement.notices.email import EmailSender
from enforcement.notices.webhook import WebhookSender
from enforcement.settings import Settings
from enforcement.workers.actors import Actors, register_actors
from enforcement.workers.broker import make_broker
from enforcement.workers.recovery import LostRetryScan, pending_deliveries
from enforcement.workers.relay import Message, Relay
from enforcement.workers.retrying import CameBack, log_failure, retry_delay, wait_to_retry
from enforcement.workers.sweep import sweep_once
from events import EventStore, dialects

log = logging.getLogger("enforcement.workers")
LEADER_LOCK_KEY = 7_301_947_562
GATE_RESEED_SECONDS = 6 * 3600
REDIS_WATCH_SECONDS = 5.0
# How often the relay (and a leader that could not start) asks whether Redis answers again
# while it waits to retry after Redis failed it (``RedisWatch.answers_again``).
REDIS_PROBE_SECONDS = 1.0
# How long a command of the watch (its look, its mark, that probe) waits for Redis: one that
# accepts connections and answers nothing (a stopped process, a paused VM) would hold the relay
# for as long as redis-py's default lets it (none in older versions, 5 s in recent ones).
REDIS_WATCH_TIMEOUT_SECONDS = 2.0
LEADER_CHECK_SECONDS = 5.0
# How long a stop waits for the relay's helpers, and for the threads and Dramatiq's: a thread
# still busy then (a slow seed, a re-send) is logged and left to end; what it uses is closed
# once it has.
HELPERS_STOP_SECONDS = 5.0
THREADS_STOP_SECONDS = 10.0


def build_actors(container: Container, broker: dramatiq.Broker | None = None) -> Actors:
    settings = container.settings
    broker = broker or make_broker(settings)
    delivery = NoticeDelivery(
        container.service,
        EmailSender(settings.smtp_url, settings.mail_dir, sender=settings.mail_from),
        WebhookSender(settings.webhook_secret, settings.webhook_allow_private),
    )
    gate_applier = container.extras.get("gate_applier")
    return register_actors(
        broker,
        container.service,
        delivery,
        gate_applier,
        notice_retries=settings.notice_retries,
        min_backoff_ms=settings.notice_backoff_ms,
        max_backoff_ms=settings.notice_max_backoff_ms,
    )


class LeaderLock:
    """Only one relay and sweep run per database.

    On PostgreSQL an advisory lock on a connection of its own. Connected to the server itself,
    a session lock (``pg_try_advisory_lock``), held while its session lives. Through a
    connection pooler (PgBouncer) the session is not the client's: in transaction pooling the
    server session that took a session lock serves other clients between transactions, keeps
    the lock after this process is gone, and gives it to another worker routed to it (a session
    takes its own advisory locks again), so two relays would send every message twice. There
    the lock is a transaction lock (``pg_try_advisory_xact_lock``) in a transaction kept open
    while leading: an open transaction keeps its server session to this client alone, and ends
    (with the lock) when the client goes. It writes nothing, so it has no transaction id, and
    it is READ COMMITTED, so it keeps no snapshot between its statements: it holds back no
    vacuum. Connected to the server itself the lock stays a session lock: a transaction kept
    open is ended by ``idle_in_transaction_session_timeout`` (the server's) or
    ``idle_transaction_timeout`` (PgBouncer's) when shorter than the leader's looks
    (``LEADER_CHECK_SECONDS``), and a session lock needs none of that.

    On SQLite an exclusive lock on a file beside the database (held while the process lives;
    an in-memory database has no other process to exclude)."""

    def __init__(self, container: Container):
        self.engine = container.engine
        self.conn: sa.Connection | None = None
        # Whether the lock is a transaction lock (``conn`` goes through a pooler).
        self.transactional = False
        self._file: Any = None
        # Every use of ``conn``: the watch and the relay both ask ``holds``, and ``acquire`` and
        # ``release`` replace and close it.
        self._using = threading.Lock()

    def acquire(self) -> bool:
        """Whether this process holds the lock now (taken, or held already). A process that does
        not lead keeps its connection for its next look; found lost (a restart, a failover, an
        idle timeout ended it), it looks again on a new one."""
        if self.engine.dialect.name != "postgresql":
            return self._acquire_file()
        with self._using:
            if self.conn is not None:
                try:
                    return self._try_lock(self.conn)
                except sa.exc.DBAPIError as exc:
                    if not exc.connection_invalidated:
                        raise
                log.info("the leader lock's connection was lost; looking again on a new one")
                self._close()
            self.conn = self.engine.connect()
            self.transactional = dialects.through_pooler(self.conn)
            if self.transactional:  # whatever the server's default: no snapshot kept
                self.conn.execution_options(isolation_level="READ COMMITTED")
            return self._try_lock(self.conn)

    def _try_lock(self, conn: sa.Connection) -> bool:
        if self.transactional:
            got = conn.exec_driver_sql(
                f"SELECT pg_try_advisory_xact_lock({LEADER_LOCK_KEY})"
            ).scalar()
            if not got:
                conn.rollback()  # the pooler may lend its server connection again
            return bool(got)
        got = conn.exec_driver_sql(f"SELECT pg_try_advisory_lock({LEADER_LOCK_KEY})").scalar()
        conn.commit()
        return bool(got)

    def holds(self) -> bool:
        """Whether the lock is still this process's: on PostgreSQL its session (or transaction)
        must still live (a restart, a failover or a terminated backend ends it, and the lock
        with it)."""
        if self.engine.dialect.name != "postgresql":
            return True
        with self._using:
            if self.conn is None:
                return False
            if self.transactional and not self.conn.in_transaction():
                return False  # not taken, or given up
            try:
                self.conn.exec_driver_sql("SELECT 1")
                if not self.transactional:
                    self.conn.commit()
            except Exception:
                return False
            return True

    def _acquire_file(self) -> bool:
        if self._file is not None:
            return True
        database = self.engine.url.database
        if not database or database == ":memory:" or database.startswith("file:"):
            return True
        handle = open(f"{database}.leader", "a+b")  # noqa: SIM115 - held while leading
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return False
        self._file = handle
        return True

    def release(self) -> None:
        with self._using:
            self._close()
            if self._file is not None:
                with suppress(Exception):
                    self._file.close()  # closing it releases the file lock
                self._file = None

    def _close(self) -> None:
        if self.conn is not None:
            with suppress(Exception):
                self.conn.rollback()  # ends a transaction lock at once
            with suppress(Exception):
                # Ending the session releases the lock; a plain close() would only return the
                # connection to the pool, session and lock included.
                self.conn.invalidate()
                self.conn.close()
            self.conn = None


def still_leads(leader: LeaderLock, stepping_down: threading.Event) -> bool:
    """Whether this process may go on relaying: asked by the relay before it sends a page, so
    that a process that lost the lock (its database session ended) stops at once, not only at
    the watch's next look (two relays meanwhile would send every message twice)."""
    if stepping_down.is_set():
        return False
    if leader.holds():
        return True
    log.warning("the relay's leader lock was lost; stepping down")
    stepping_down.set()
    return False


def watch_leader(leader: LeaderLock, stop: threading.Event, stepping_down: threading.Event) -> None:
    """Set ``stepping_down`` when ``stop`` is set, or once the leader lock is no longer held
    (looked at every few seconds): this process then stops relaying, as another one may have
    taken the lead."""
    while not stop.wait(LEADER_CHECK_SECONDS):
        if not still_leads(leader, stepping_down):
            return
    stepping_down.set()


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
        log), not a leader that cannot start."""
        import redis

        try:
            return str(self.client.info("server")["run_id"])
        except (redis.ResponseError, KeyError) as exc:
            if not self._said_no_run_id:
                self._said_no_run_id = True
                log.warning(
                    "Redis does not say which run of it this is (INFO server: %s): a Redis "
                    "restarted from a snapshot will not be seen as having lost its data (the "
                    "6-hourly re-seed mends the gate, the lost-retry scan the notices; "
                    "docs/operations.md)",
                    exc,
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


# How often the leader looks for failed attempts whose retry was lost, in deadline sweeps
# (every 5 minutes by default), and how long after the longest retry wait it takes one for lost.
LOST_RETRY_CHECK_SWEEPS = 10
LOST_RETRY_MARGIN_SWEEPS = 20


def retry_lost_after(settings: Settings) -> timedelta:
    """How long after a failed attempt with nothing after it its retry counts as lost: the
    longest wait between retries, plus 20 deadline sweeps (10 minutes by default) for a busy
    worker to take it up."""
    return timedelta(
        milliseconds=settings.notice_max_backoff_ms,
        seconds=settings.sweep_seconds * LOST_RETRY_MARGIN_SWEEPS,
    )


def run_every(
    stop: threading.Event, every_seconds: float, job: Callable[[], object], what: str
) -> None:
    """Run ``job`` every ``every_seconds`` until ``stop``; a failure is logged, not fatal."""
    while not stop.wait(every_seconds):
        try:
            job()
        except Exception:
            log.exception("%s failed", what)


def join_within(threads: Sequence[threading.Thread], seconds: float) -> list[threading.Thread]:
    """Wait up to ``seconds`` in all for ``threads`` to end; the ones still running."""
    deadline = time.monotonic() + seconds
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return [thread for thread in threads if thread.is_alive()]


def still_running(
    threads: Sequence[threading.Thread], seconds: float, waits: str
) -> list[threading.Thread]:
    """Those of ``threads`` still running, each logged: ``seconds`` after the stop, ``waits``
    (closing what they use) still waits for them."""
    running = [thread for thread in threads if thread.is_alive()]
    for thread in running:
        log.warning(
            "the %s thread still runs %g s after the workers were told to stop; %s waits for it",
            thread.name,
            seconds,
            waits,
        )
    return running


def start_background(
    container: Container,
    actors: Actors,
    *,
    consumers: bool,
    relay: bool,
    then_close: Callable[[], None] | None = None,
) -> Callable[[], None]:
    """Start consumers and/or the relay and sweep as threads; returns a stop function. It waits
    a bounded time for the threads (``THREADS_STOP_SECONDS``); the leader's ``RedisWatch`` is
    closed once nothing uses it, and so is whatever ``then_close`` closes (``actors.broker``,
    when given: else it is the caller's to close), once every thread started here has ended.
    A thread still running when the stop returns is added to ``container.users``, so that
    ``container.close()`` too closes the engine and the gates only once it has ended."""
    settings = container.settings
    stop = threading.Event()
    threads: list[threading.Thread] = []
    worker: dramatiq.Worker | None = None
    watch: RedisWatch | None = None
    if consumers:
        worker = dramatiq.Worker(
            actors.broker, worker_threads=settings.worker_threads, worker_timeout=100
        )
        worker.start()
    if relay:
        leader = LeaderLock(container)
        gate_applier = container.extras.get("gate_applier")

        def relay_send(message: Message) -> None:
            """Enqueue ``message``; a gate change is also applied to the gate at once. The
            ``apply_gate_state`` message shares its queue with the notice deliveries, and a
            backlog of them (or slow receivers) held it for minutes: when the decision's own
            push had failed (Redis away a moment before, or the push paused for 10 s after),
            the gate meanwhile served a suspended account. The message still follows (at least
            once: applying is stale-safe and idempotent)."""
            if message.actor == "apply_gate_state" and callable(gate_applier):
                try:
                    gate_applier(*message.args)
                except Exception as exc:
                    log.warning("the relay could not apply gate state at once: %s", exc)
            actors.enqueue(message)

        relay_obj = Relay(container.store, relay_send, CHANNELS)
        watch = None if settings.redis_url is None else RedisWatch(settings.redis_url)
        # After Redis failed them, the relay and the leader's start retry once it comes back
        # (``CameBack``: it answers again after a probe saw it away).
        answers_again = None if watch is None else watch.answers_again

        def take_the_lead() -> bool:
            if not leader.acquire():
                return False
            log.info("this process leads the relay and the deadline sweep")
            # The in-memory broker starts empty; Redis may have lost what it held meanwhile, or
            # follow events the log lost meanwhile (a restore).
            lost = watch is None or watch.lost() or forget_another_log(container, watch)
            seeded = seed_gate(container.gate, container.store, container.clock())
            log.info("gate seeded from %d stored standings", seeded)
            if lost:
                resend_pending_notices()
            if watch is not None:
                watch.mark()
                watch.note(container.store)
            return True

        def resend_pending_notices(up_to: int | None = None) -> None:
            """Re-send notices up to ``up_to`` (by default the relay's checkpoint) that have no
            outcome: their messages were in a broker that lost them (the in-memory one at a
            restart, or Redis restarted without persistence). Delivery is idempotent per notice
            and channel."""
            if up_to is None:
                up_to = relay_obj.position()
            pending = pending_deliveries(container.store, container.clock(), up_to_position=up_to)
            # Only the channels without a final outcome: one that failed for good stays so.
            send_deliveries(pending)
            log.info("re-sent %d notice deliveries without an outcome", len(pending))

        def on_redis_lost() -> Callable[[], None]:
            """Seen that Redis lost its data, while the relay runs on: what it sent up to now
            may be lost, what it sends from now on goes to the Redis that came back. Returns
            the re-send of the notices up to here, which the gate keeper runs once it re-seeded
            the gate: bounded later, it sent again, and twice, the notices the relay passed
            meanwhile (the whole re-seed long)."""
            return functools.partial(resend_pending_notices, relay_obj.reached())

        def send_deliveries(deliveries: list[tuple[str, str]]) -> None:
            for event_id, channel in deliveries:
                actors.enqueue(Message("deliver_notice", (event_id, channel)))

        lost_retry_scan = LostRetryScan(
            container.store,
            container.clock,
            retry_lost_after(settings),
            settings.notice_retries + 1,
        )

        def resend_lost_retries(stepping_down: threading.Event) -> None:
            """Send again the deliveries whose failed attempt's retry the broker could not take
            (``recovery.LostRetryScan``). Delivery numbers its attempts on from those recorded,
            so the notice's limit of attempts holds."""
            leads = functools.partial(still_leads, leader, stepping_down)
            lost = lost_retry_scan.run(send_deliveries, leads)
            if lost:
                log.warning(
                    "re-sent %d notice deliveries whose retry or first message was lost", len(lost)
                )

        helpers_started: list[threading.Thread] = []  # and not seen ended yet

        def lead() -> None:
            try:
                lead_until_stopped()
            finally:
                leader.release()
                # This thread ends only after its helpers, which use the watch and the broker
                # too: the watch is closed here once they ended, however long a busy one takes
                # (this thread then outlives the stop's wait, and the broker waits for it).
                waits = "stopping the relay" if watch is None else "closing the Redis watch"
                busy = still_running(helpers_started, HELPERS_STOP_SECONDS, waits)
                close_after(busy, lambda: None if watch is None else watch.close())

        def lead_until_stopped() -> None:
            came_back = None if answers_again is None else CameBack(answers_again)
            failures = 0
            while not stop.is_set():
                try:
                    leading = take_the_lead()
                except Exception as exc:
                    # Redis or the database is not there yet: a dead thread would leave this
                    # process running without a relay, so try again, less often the longer it
                    # lasts (``retrying``).
                    failures += 1
                    delay = retry_delay(failures)
                    log_failure(log, "could not start the relay", exc, failures, delay)
                    leader.release()
                    wait_to_retry(stop, delay, exc, came_back, REDIS_PROBE_SECONDS)
                    continue
                failures = 0
                if came_back is not None:
                    came_back.succeeded()
                if leading:
                    stepping_down = threading.Event()  # ``stop``, or the lock was lost
                    helpers = [
                        threading.Thread(
                            target=watch_leader,
                            args=(leader, stop, stepping_down),
                            name="leader-watch",
                            daemon=True,
                        ),
                        threading.Thread(
                            target=run_every,
                            args=(
                                stepping_down,
                                settings.sweep_seconds,
                                functools.partial(sweep_once, container.service),
                                "deadline sweep",
                            ),
                            name="sweep",
                            daemon=True,
                        ),
                        threading.Thread(
                            target=run_every,
                            args=(
                                stepping_down,
                                settings.sweep_seconds * LOST_RETRY_CHECK_SWEEPS,
                                functools.partial(resend_lost_retries, stepping_down),
                                "re-sending lost notice retries",
                            ),
                            name="lost-retries",
                            daemon=True,
                        ),
                        threading.Thread(
                            target=keep_gate,
                            args=(container, stepping_down, watch, on_redis_lost),
                            name="gate-keeper",
                            daemon=True,
                        ),
                    ]
                    for helper in helpers:
                        helper.start()
                    helpers_started[:] = [*(h for h in helpers_started if h.is_alive()), *helpers]
                    # No re-sending after a relay error: a broker that merely was unreachable
                    # lost nothing (the checkpoint did not move past what it could not take), and
                    # one that lost its data is seen by the watch.
                    relay_obj.guard = functools.partial(still_leads, leader, stepping_down)
                    relay_obj.run(
                        stepping_down,
                        answers_again=answers_again,
                        probe_seconds=REDIS_PROBE_SECONDS,
                    )
                    join_within(helpers, HELPERS_STOP_SECONDS)
                    if stop.is_set():
                        break
                    leader.release()  # lost: try to lead again, as any other process does
                stop.wait(5)

        threads.append(threading.Thread(target=lead, name="relay", daemon=True))
    for t in threads:
        t.start()

    def stop_all() -> None:
        stop.set()
        join_within(threads, THREADS_STOP_SECONDS)
        users = list(threads)
        if worker is not None:
            worker.stop(timeout=int(THREADS_STOP_SECONDS * 1000))
            users += [*worker.workers, *worker.consumers.values()]
        busy = still_running(
            users, THREADS_STOP_SECONDS, "closing the Redis clients and the database pool"
        )
        # They use the container's engine and gates too: its close waits for them as well.
        container.users.extend(busy)
        if then_close is not None:  # closed by a thread of its own: the stop waits no longer
            close_once_ended(busy, then_close, "closing-broker")

    return stop_all


def start_runtime(
    container: Container, *, consumers: bool, relay: bool
) -> tuple[Actors, Callable[[], None]]:
    """``build_actors`` and ``start_background``, as ``serve`` and ``enforcement worker`` run
    them: the actors, and a stop function that also closes the broker made for them (its Redis
    connections), once the threads that use it have ended."""
    actors = build_actors(container)
    stop = start_background(
        container, actors, consumers=consumers, relay=relay, then_close=actors.broker.close
    )
    return actors, stop


def install_embedded_workers(container: Container) -> None:
    """Make ``serve`` start the workers inside its process (the app's lifespan calls it)."""

    def start() -> Callable[[], None]:
        embedded = container.settings.embedded
        actors, stop = start_runtime(container, consumers=embedded, relay=embedded)
        container.extras["actors"] = actors
        return stop

    container.extras["start_workers"] = start


PARENT_CHECK_SECONDS = 1.0


def _consumer_process(settings: Settings, parent_pid: int | None = None) -> None:
    from enforcement.bootstrap import bootstrap
    from enforcement.logs import configure_logging

    configure_logging()  # a spawned process starts without the worker's (structured) logging
    container = bootstrap(settings)
    _, stop = start_runtime(container, consumers=True, relay=False)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    log.info("consumer process %d is consuming", os.getpid())
    # A worker killed outright (SIGKILL, OOM) sends its consumers no signal: they stop when
    # they find themselves orphaned, as they would on its SIGTERM (their messages go back to
    # the broker), instead of running on beside the worker that replaces it.
    while not done.wait(PARENT_CHECK_SECONDS):
        if parent_pid is not None and os.getppid() != parent_pid:
            log.warning("the worker process that started this consumer is gone; stopping")
            break
    stop()
    container.close()


def run_worker_processes(settings: Settings) -> int:
    """``enforcement worker``: consumer processes plus the relay and sweep in this one. Returns
    the exit status: 0 when stopped by a signal, 1 when a consumer process died (everything
    stops then, as with Dramatiq's own command, so that a supervisor starts the worker again)."""
    from enforcement.bootstrap import bootstrap

    ctx = multiprocessing.get_context("spawn")
    children = [
        ctx.Process(target=_consumer_process, args=(settings, os.getpid()), name=f"consumer-{i}")
        for i in range(settings.worker_processes)
    ]
    for child in children:
        child.start()
    container = bootstrap(settings)
    _, stop = start_runtime(container, consumers=False, relay=True)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    status = 0
    try:
        while not done.wait(1):
            dead = [c for c in children if not c.is_alive()]
            if dead and not done.is_set():  # not a signal to the whole group (Ctrl-C)
                log.error(
                    "a consumer process died (exit code %s); stopping the worker with status 1",
                    dead[0].exitcode,
                )
                status = 1
                break
    finally:
        stop()
        for child in children:
            if child.is_alive():
                child.terminate()
            child.join(timeout=15)
        container.close()
    return status
