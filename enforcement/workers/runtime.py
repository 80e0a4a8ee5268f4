"""How the workers run: threads inside ``serve`` (embedded) or ``enforcement worker`` processes.

- Embedded (no Redis): an in-memory broker, Dramatiq worker threads, the relay and the deadline
  sweep, all inside the ``serve`` process: one command runs everything.
- Distributed: the Redis broker; ``enforcement worker`` runs the relay and the sweep in its main
  process (one leader at a time on PostgreSQL, by an advisory lock) and Dramatiq consumers in
  ``worker_processes`` child processes.

The leader lock is ``leader``'s; the leader's look at Redis (lost data, a restored log) and the
gate keeper are ``redis_watch``'s.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from enforcement.bootstrap import Container
from enforcement.closing import close_after, close_once_ended
from enforcement.gatekeeping import seed_gate
from enforcement.log_folding import FoldRepeats, Repeats
from enforcement.notices.delivery import CHANNELS, NoticeDelivery, hold_seconds
from enforcement.notices.email import EmailSender, sweep_parts
from enforcement.notices.guard import DeliveryGuard, LocalGuard, RedisGuard
from enforcement.notices.webhook import WebhookSender
from enforcement.settings import Settings
from enforcement.workers.actors import NOTICE_TIME_LIMIT_MS, Actors, register_actors
from enforcement.workers.broker import make_broker
from enforcement.workers.leader import LeaderLock, still_leads, watch_leader
from enforcement.workers.recovery import LostRetryScan, pending_deliveries
from enforcement.workers.redis_watch import RedisWatch, forget_another_log, keep_gate
from enforcement.workers.relay import Message, Relay
from enforcement.workers.retrying import (
    CameBack,
    log_failure,
    one_line,
    retry_delay,
    wait_to_retry,
)
from enforcement.workers.sweep import sweep_once

log = logging.getLogger("enforcement.workers")
# How often the relay (and a leader that could not start) asks whether Redis answers again
# while it waits to retry after Redis failed it (``RedisWatch.answers_again``).
REDIS_PROBE_SECONDS = 1.0
# How long a stop waits for the relay's helpers, and for the threads and Dramatiq's: a thread
# still busy then (a slow seed, a re-send) is logged and left to end; what it uses is closed
# once it has.
HELPERS_STOP_SECONDS = 5.0
THREADS_STOP_SECONDS = 10.0


def build_actors(container: Container, broker: dramatiq.Broker | None = None) -> Actors:
    settings = container.settings
    broker = broker or make_broker(settings)
    email = EmailSender(settings.smtp_url, settings.mail_dir, sender=settings.mail_from)
    webhook = WebhookSender(settings.webhook_secret, settings.webhook_allow_private)
    guard = delivery_guard(
        broker, hold_seconds(email, webhook, settings.database_timeout_ms / 1000)
    )
    delivery = NoticeDelivery(container.service, email, webhook, guard)
    gate_applier = container.extras.get("gate_applier")
    return register_actors(
        broker,
        container.service,
        delivery,
        gate_applier,
        notice_retries=settings.notice_retries,
        min_backoff_ms=settings.notice_backoff_ms,
        max_backoff_ms=settings.notice_max_backoff_ms,
        # A try may wait for another copy's delivery, then hold the guard for its own.
        notice_time_limit_ms=max(NOTICE_TIME_LIMIT_MS, int((guard.wait_s + guard.hold_s) * 1000)),
    )


def delivery_guard(broker: dramatiq.Broker, hold_s: float) -> DeliveryGuard:
    """In the broker's Redis, which every consumer process shares (on its client: two commands
    a delivery on connections it has); in this process with the in-memory broker."""
    if isinstance(broker, RedisBroker):
        return RedisGuard(broker.client, hold_s)
    return LocalGuard(hold_s)


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
    """Run ``job`` every ``every_seconds`` until ``stop``; a failure is logged, not fatal: in
    full the first time, then at most once a minute while the same failure (its exception's
    type) goes on (``log_folding.Repeats``), and one line when ``job`` succeeds again."""
    failing: tuple[type[BaseException], Repeats] | None = None
    while not stop.wait(every_seconds):
        try:
            job()
        except Exception as exc:
            if failing is None or failing[0] is not type(exc):
                failing = (type(exc), Repeats())
            said = failing[1].occurrence()
            if said is None:
                continue
            if said.first:
                log.exception(
                    "%s failed; it runs again every %g s (repeats: one line a minute at most)",
                    what,
                    every_seconds,
                )
            else:
                log.error(
                    "%s still fails after %.0f s (%d failures since the last such line): %s",
                    what,
                    said.lasted,
                    said.folded,
                    one_line(exc),
                )
        else:
            if failing is not None:
                log.info("%s works again (it failed %d times in a row)", what, failing[1].total)
            failing = None


def fold_dramatiq_repeats(broker: dramatiq.Broker) -> FoldRepeats:
    """Fold the repeats of Dramatiq's consumers and worker threads (``log_folding``): while
    Redis is away each queue's consumer says "Consumer encountered a connection error" every
    3 s, and while the database is away each message fails "with unhandled exception", a
    traceback each. Until the returned folding is removed."""
    queues = broker.get_declared_queues() | broker.get_declared_delay_queues()
    folding = FoldRepeats()
    folding.add_to(
        [
            *(f"dramatiq.worker.ConsumerThread({queue})" for queue in queues),
            "dramatiq.worker.WorkerThread",
        ]
    )
    return folding


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
    folding: FoldRepeats | None = None
    if consumers:
        folding = fold_dramatiq_repeats(actors.broker)
        try:
            worker = dramatiq.Worker(
                actors.broker, worker_threads=settings.worker_threads, worker_timeout=100
            )
            worker.start()
        except BaseException:
            folding.remove()  # no stop function to remove it: the caller gets the error
            raise
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
            """Send again the deliveries whose failed attempt's retry the broker could not take,
            and send those a changed contact gave a channel (``recovery.LostRetryScan``).
            Delivery numbers its attempts on from those recorded, so the notice's limit of
            attempts holds."""
            leads = functools.partial(still_leads, leader, stepping_down)
            lost = lost_retry_scan.run(send_deliveries, leads)
            if lost:
                log.warning(
                    "re-sent %d notice deliveries whose retry or first message was lost, or "
                    "that a changed contact gave a channel",
                    len(lost),
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
        if folding is not None:
            folding.remove()
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
    connections), once the threads that use it have ended. A process that delivers notices
    (``consumers``) as files first removes the stale part files a crash left (``sweep_parts``)."""
    actors = build_actors(container)
    settings = container.settings
    if consumers and settings.webhook_secret is None:
        # Said once by each process that delivers notices, when it starts: otherwise only each
        # refused notice's outcome would tell (not by ``serve`` on Redis, nor the worker's
        # relay process: they deliver none, and may run without the secret the consumers have).
        log.warning(
            "ENFORCEMENT_WEBHOOK_SECRET is unset: notices to a contact's webhook_url are "
            "refused, not sent (e-mail is not affected)"
        )
    if consumers and settings.smtp_url is None:
        # The part files a crash left among the notices written as files: gone now, not only
        # once another notice is written (a directory that gets none would keep them).
        sweep_parts(Path(settings.mail_dir))
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


def run_worker_processes(settings: Settings, record_at_once: bool = True) -> int:
    """``enforcement worker``: consumer processes plus the relay and sweep in this one. Returns
    the exit status: 0 when stopped by a signal, 1 when a consumer process died (everything
    stops then, as with Dramatiq's own command, so that a supervisor starts the worker again).
    It records the policy it runs (``policy_activations``): at once, or from a thread when
    ``record_at_once`` is false (the database did not answer a moment ago)."""
    from enforcement.bootstrap import bootstrap
    from enforcement.policy_activations import record_when_possible

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
        policy, clock = container.policy, container.clock
        record_when_possible(container.engine, policy, clock, done, wait=record_at_once)
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
