"""What the workers close when they stop: every Redis connection they opened (the broker's,
the leader's ``RedisWatch``), with the database pool and the gates' clients that
``Container.close`` closes; a client or pool a thread still uses when the stop's waits end is
closed once that thread has ended, not before."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

import dramatiq
import pytest
import redis
import sqlalchemy as sa
from dramatiq.worker import WorkerThread

from enforcement.bootstrap import Container, bootstrap
from enforcement.closing import close_once_ended
from enforcement.workers import redis_watch, runtime
from enforcement.workers.actors import Actors
from enforcement.workers.redis_watch import RedisWatch
from enforcement.workers.runtime import start_runtime
from tests.conftest import pg_admin_url
from tests.workers.system import (
    fast_settings,
    hold_gate_keeper_seeds,
    outcomes_of,
    relay_position,
    report,
    wait_until,
)


def watch(redis_url: str) -> redis.Redis:
    """A client of the test's own, connected before the test starts anything (see
    ``connections``)."""
    watcher = redis.Redis.from_url(redis_url)
    watcher.client_id()
    return watcher


def connections(watcher: redis.Redis) -> list[str]:
    """The last command of each connection to Redis opened after ``watcher``'s own: Redis
    numbers connections in the order they come, and one an earlier test of this process left
    (a client its threads still used when it ended, closed once they end) is not this test's."""
    own = watcher.client_id()
    return sorted(c["cmd"] for c in watcher.client_list() if int(c["id"]) > own)


@pytest.fixture
def watches(monkeypatch: pytest.MonkeyPatch) -> list[RedisWatch]:
    """The watches the runtime makes, kept referenced here: a client nothing refers to any more
    is closed when it is collected, and ``stop`` must not depend on when that is."""
    made: list[RedisWatch] = []

    class KeptWatch(RedisWatch):
        def __init__(self, url: str) -> None:
            super().__init__(url)
            made.append(self)

    monkeypatch.setattr(runtime, "RedisWatch", KeptWatch)
    return made


@pytest.mark.redis
def test_stopping_the_workers_closes_their_redis_connections(
    sqlite_db: str, tmp_path: Path, redis_url: str, watches: list[RedisWatch]
) -> None:
    watcher = watch(redis_url)
    container = bootstrap(fast_settings(sqlite_db, tmp_path, redis_url=redis_url))
    try:
        _, stop = start_runtime(container, consumers=True, relay=True)
        try:
            [notice] = [e for e in report(container, "acct_1").events if e.type == "NoticeIssued"]
            wait_until(lambda: watcher.exists(RedisWatch.KEY), "the leader marks Redis")
            # A consumer took the notice's message (no contact: recorded undeliverable).
            wait_until(lambda: outcomes_of(container.store, notice.event_id), "its outcome")
            assert len(watches) == 1
            assert connections(watcher) != []
        finally:
            stop()
    finally:
        container.close()
    assert connections(watcher) == []
    watcher.close()


def running(*names: str) -> list[str]:
    return [t.name for t in threading.enumerate() if t.name in names]


def database_sessions(database_url: str) -> int:
    """How many sessions PostgreSQL has open on ``database_url``'s database (none on SQLite)."""
    url = sa.make_url(database_url)
    if url.get_backend_name() != "postgresql":
        return 0
    admin = sa.create_engine(pg_admin_url(), poolclass=sa.NullPool)
    try:
        with admin.connect() as conn:
            query = "SELECT count(*) FROM pg_stat_activity WHERE datname = %(name)s"
            return int(conn.exec_driver_sql(query, {"name": url.database}).scalar_one())
    finally:
        admin.dispose()


@pytest.mark.redis
def test_a_helper_busy_at_the_stop_keeps_its_redis_clients_and_database_pool_until_it_ends(
    database_url: str,
    tmp_path: Path,
    redis_url: str,
    watches: list[RedisWatch],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Given Redis lost its data, the gate keeper re-seeds the gate (slowly: it waits until the
    test lets it go) from the database and then re-sends the notices without an outcome
    (through the broker) and marks Redis again (through the watch). When the workers are
    stopped meanwhile and the container closed right after, as ``serve`` and ``enforcement
    worker`` do, the stop returns after its waits, and the watch, the broker, the gate's
    client and the database pool are closed only once the gate keeper ended: closed before,
    each would connect again when it went on, and stay connected."""
    monkeypatch.setattr(redis_watch, "REDIS_WATCH_SECONDS", 0.05)
    monkeypatch.setattr(runtime, "HELPERS_STOP_SECONDS", 0.2)
    monkeypatch.setattr(runtime, "THREADS_STOP_SECONDS", 0.2)
    seeding, go_on = hold_gate_keeper_seeds(monkeypatch)
    caplog.set_level(logging.INFO, logger="enforcement.workers")
    watcher = watch(redis_url)
    container = bootstrap(fast_settings(database_url, tmp_path, redis_url=redis_url))
    try:
        _, stop = start_runtime(container, consumers=False, relay=True)
        try:
            report(container, "acct_1")  # no consumer: its notice stays without an outcome
            wait_until(lambda: watcher.exists(RedisWatch.KEY), "the leader marks Redis")
            wait_until(
                lambda: relay_position(container.store) >= container.store.max_position(),
                "the relay passes the notice",
            )
            watcher.delete(RedisWatch.KEY)  # Redis lost its data
            wait_until(seeding.is_set, "the gate keeper re-seeds")
        finally:
            stop()
            container.close()
        go_on.set()
        wait_until(
            lambda: not running("gate-keeper", "relay", "closing-broker", "closing-container"),
            "the threads end",
        )
        assert "re-sent 1 notice deliveries without an outcome" in caplog.messages
        assert watcher.exists(RedisWatch.KEY)  # marked after the stop
        assert connections(watcher) == []
        assert database_sessions(database_url) == 0
    finally:
        go_on.set()
        container.close()
        watcher.close()
    still = sorted(m for m in caplog.messages if " still runs " in m)  # waited for
    told = "0.2 s after the workers were told to stop"
    assert still == [
        f"the gate-keeper thread still runs {told}; closing the Redis watch waits for it",
        f"the relay thread still runs {told}; "
        "closing the Redis clients and the database pool waits for it",
    ]


def test_a_message_still_running_at_the_stop_keeps_the_broker_and_the_pool_until_it_ends(
    sqlite_db: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A Dramatiq worker thread still busy when the stop's wait ends (a slow delivery) is
    waited for as the relay's threads are: logged, and the broker and the container's engine
    and gates closed once it has ended."""
    monkeypatch.setattr(runtime, "THREADS_STOP_SECONDS", 0.2)
    running_one, go_on = threading.Event(), threading.Event()
    build_actors = runtime.build_actors

    def with_a_slow_actor(container: Container) -> Actors:
        actors = build_actors(container)

        def slow() -> None:
            running_one.set()
            go_on.wait()

        dramatiq.actor(broker=actors.broker, actor_name="slow")(slow)
        return actors

    monkeypatch.setattr(runtime, "build_actors", with_a_slow_actor)
    caplog.set_level(logging.WARNING, logger="enforcement.workers")
    container = bootstrap(fast_settings(sqlite_db, tmp_path))
    try:
        actors, stop = start_runtime(container, consumers=True, relay=False)
        try:
            actors.broker.get_actor("slow").send()
            wait_until(running_one.is_set, "the slow message to run")
        finally:
            stop()
        [busy] = [t for t in container.users if isinstance(t, WorkerThread)]
        assert busy.is_alive()
        assert (
            f"the {busy.name} thread still runs 0.2 s after the workers were told to stop; "
            "closing the Redis clients and the database pool waits for it"
        ) in caplog.messages
        assert running("closing-broker") == ["closing-broker"]  # waiting for it
        container.close()
        assert running("closing-container") == ["closing-container"]  # waiting for it too
        go_on.set()
        wait_until(
            lambda: not running("closing-broker", "closing-container"), "the broker and pool closed"
        )
    finally:
        go_on.set()
        container.close()


class Joined(threading.Thread):
    """A thread that records the timeout of each ``join``."""

    def __init__(self, target: Callable[[], object]) -> None:
        super().__init__(target=target, daemon=True)
        self.timeouts: list[float | None] = []

    def join(self, timeout: float | None = None) -> None:
        self.timeouts.append(timeout)
        super().join(timeout)


def test_a_stop_waits_for_its_threads_up_to_its_bound_in_all() -> None:
    go_on = threading.Event()
    busy, ended = Joined(go_on.wait), Joined(lambda: None)
    ended.start()
    ended.join()
    ended.timeouts.clear()
    busy.start()
    try:
        # The busy thread is waited for up to the bound; the one after it, no longer
        assert runtime.join_within([busy, ended], 0.05) == [busy]
        [busy_wait], [ended_wait] = busy.timeouts, ended.timeouts
        assert busy_wait is not None and 0.0 < busy_wait <= 0.05
        assert ended_wait is not None and ended_wait < busy_wait
    finally:
        go_on.set()
    assert runtime.join_within([busy, ended], 10.0) == []


def test_closing_is_at_once_when_no_thread_runs_else_from_a_daemon_thread_after_them() -> None:
    """``close_once_ended``: with every thread ended, the caller closes, once; with one still
    running, a daemon thread of the given name closes once it has ended (a thread that is not
    a daemon would keep the process alive at exit behind a thread that never ends)."""
    closed: list[str] = []

    def close() -> None:
        closed.append(threading.current_thread().name)

    ended = threading.Thread(target=lambda: None)
    ended.start()
    ended.join()
    close_once_ended([ended], close, "closing-test")
    wait_until(lambda: not running("closing-test"), "no closing thread")
    assert closed == [threading.current_thread().name]

    closed.clear()
    go_on = threading.Event()
    busy = threading.Thread(target=go_on.wait, daemon=True)
    busy.start()
    try:
        close_once_ended([ended, busy], close, "closing-test")
        [closer] = [t for t in threading.enumerate() if t.name == "closing-test"]
        assert closer.daemon
        assert closed == []  # not while the busy thread runs
    finally:
        go_on.set()
    closer.join()
    assert closed == ["closing-test"]
