"""The relay's leader lock: one holder per database at a time, until it lets go. On SQLite a
file lock beside the database; on PostgreSQL through a real PgBouncer in transaction pooling
mode, a transaction lock in a transaction kept open (a session lock there would stay on a server
session that other clients share)."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa

from enforcement.bootstrap import Container, bootstrap
from enforcement.migrations import upgrade
from enforcement.workers import runtime
from enforcement.workers.leader import LEADER_LOCK_KEY, LeaderLock, watch_leader
from enforcement.workers.runtime import start_runtime
from tests.conftest import pg_admin_url
from tests.pgbouncer import PgBouncer
from tests.workers.system import fast_settings, outcomes_of, report, wait_until


def test_one_leader_per_sqlite_database_until_it_lets_go(sqlite_db: str, tmp_path: Path) -> None:
    first_system = bootstrap(fast_settings(sqlite_db, tmp_path))
    second_system = bootstrap(fast_settings(sqlite_db, tmp_path))
    other_db = tmp_path / "other.db"
    third_system = bootstrap(fast_settings(f"sqlite:///{other_db}", tmp_path))
    first, second, third = (LeaderLock(s) for s in (first_system, second_system, third_system))
    try:
        assert first.acquire() and first.acquire()  # taking it again while holding it
        assert not second.acquire()  # two `enforcement worker` on one file: one relay
        assert third.acquire()  # another database has a leader of its own

        first.release()
        assert second.acquire()
        assert not first.acquire()
    finally:
        for lock in (first, second, third):
            lock.release()
        for system in (first_system, second_system, third_system):
            system.close()


def test_a_process_that_finds_the_lead_taken_does_not_lead(
    sqlite_db: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    looks: list[tuple[Container, bool]] = []

    class Looked(LeaderLock):
        def __init__(self, container: Container) -> None:
            super().__init__(container)
            self.container = container

        def acquire(self) -> bool:
            held = super().acquire()
            looks.append((self.container, held))
            return held

    watched: list[Container] = []

    def watching(leader: Looked, *args: Any) -> None:
        watched.append(leader.container)
        watch_leader(leader, *args)

    monkeypatch.setattr(runtime, "LeaderLock", Looked)
    monkeypatch.setattr(runtime, "watch_leader", watching)
    caplog.set_level(logging.INFO, logger="enforcement.workers")
    first, second = (bootstrap(fast_settings(sqlite_db, tmp_path)) for _ in range(2))
    try:
        _, stop_first = start_runtime(first, consumers=False, relay=True)
        try:
            wait_until(lambda: (first, True) in looks, "the first process to lead")
            _, stop_second = start_runtime(second, consumers=False, relay=True)
            wait_until(lambda: (second, False) in looks, "the second to find the lead taken")
            stop_second()
        finally:
            stop_first()
    finally:
        first.close()
        second.close()
    assert (second, True) not in looks
    # Nor does it relay as a leader would (its helpers and the relay not started) ...
    assert watched == [first]
    # ... and it looks again only after a pause, not in a loop: once, then stopped.
    assert looks.count((second, False)) == 1
    leads = "this process leads the relay and the deadline sweep"
    assert caplog.messages.count(leads) == 1


def test_a_leader_that_lost_its_lock_relays_no_further_page(
    sqlite_db: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The relay asks whether it still leads before it sends a page: one lost between two of
    the watch's looks (every few seconds) sends nothing more, as another process may lead."""
    lost = threading.Event()

    class Losable(LeaderLock):
        def acquire(self) -> bool:
            return not lost.is_set() and super().acquire()

        def holds(self) -> bool:
            return not lost.is_set() and super().holds()

    def stop_watch_only(
        leader: LeaderLock, stop: threading.Event, stepping_down: threading.Event
    ) -> None:
        """The watch without its looks at the lock: the relay's own question alone."""
        while not stepping_down.wait(0.05) and not stop.is_set():
            pass
        stepping_down.set()

    monkeypatch.setattr(runtime, "LeaderLock", Losable)
    monkeypatch.setattr(runtime, "watch_leader", stop_watch_only)
    caplog.set_level(logging.INFO, logger="enforcement.workers")
    container = bootstrap(fast_settings(sqlite_db, tmp_path))
    stepped_down = "the relay's leader lock was lost; stepping down"
    try:
        actors, stop = start_runtime(container, consumers=False, relay=True)
        queues = actors.broker.queues.values()
        try:
            wait_until(
                lambda: "this process leads the relay and the deadline sweep" in caplog.messages,
                "the process to lead",
            )
            lost.set()
            report(container, "acct_1")
            wait_until(
                lambda: stepped_down in caplog.messages or any(q.qsize() for q in queues),
                "the relay to step down or to send",
            )
        finally:
            stop()
    finally:
        container.close()
    assert [q.qsize() for q in queues if q.qsize()] == []
    assert caplog.messages.count(stepped_down) == 1


def leader_session(direct: sa.Engine) -> tuple[object, object, str] | None:
    """The transaction id, snapshot horizon and state of the server session that holds the
    leader lock in ``direct``'s database (None when none does)."""
    high, low = divmod(LEADER_LOCK_KEY, 2**32)  # as pg_locks shows a bigint advisory key
    with direct.connect() as conn:
        row = conn.exec_driver_sql(
            "SELECT a.backend_xid, a.backend_xmin, a.state FROM pg_locks l"
            " JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory'"
            f" AND l.classid = {high} AND l.objid = {low} AND l.objsubid = 1 AND l.granted"
            " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        ).one_or_none()
    return None if row is None else (row[0], row[1], row[2])


def cut(lock: LeaderLock) -> None:
    """Shut the lock connection's socket under it, as the kernel does when its process dies."""
    assert lock.conn is not None
    fd = lock.conn.connection.dbapi_connection.fileno()
    with socket.socket(fileno=os.dup(fd)) as sock:
        sock.shutdown(socket.SHUT_RDWR)


@pytest.mark.postgres
def test_one_leader_through_pgbouncer_in_transaction_pooling(pg_url: str, tmp_path: Path) -> None:
    """Three `enforcement worker` processes through one PgBouncer, whose clients share server
    sessions: a session lock stayed on the server session that took it, and the next worker
    PgBouncer lent that session to took it as well (two relays). Two server connections: the
    leader keeps one for as long as it leads, the others take turns on the other."""
    upgrade(pg_url)
    direct = sa.create_engine(pg_url)
    with direct.begin() as conn:  # the lock's transaction is READ COMMITTED all the same
        database = sa.make_url(pg_url).database
        conn.exec_driver_sql(
            f'ALTER DATABASE "{database}" SET default_transaction_isolation = "repeatable read"'
        )
    with PgBouncer(pg_admin_url(), pool_size=2) as pooler:
        systems = [bootstrap(fast_settings(pooler.url(pg_url), tmp_path)) for _ in range(3)]
        first, second, third = (LeaderLock(s) for s in systems)
        try:
            assert first.acquire() and first.acquire()  # taking it again while holding it
            assert not second.acquire()
            assert not third.acquire()
            assert first.holds()
            assert not second.holds()  # its transaction ended with the look that failed
            # An open transaction that wrote nothing: no transaction id, no snapshot kept.
            assert leader_session(direct) == (None, None, "idle in transaction")

            first.release()
            assert leader_session(direct) is None  # at once, not when PgBouncer gets to it
            assert not first.holds()
            assert second.acquire()
            assert not first.acquire() and not third.acquire()

            # A leader whose process dies lets go with its connection.
            cut(second)
            assert not second.holds()
            wait_until(third.acquire, "the third to take the lead")
            assert third.holds() and not first.acquire()
        finally:
            for lock in (first, second, third):
                lock.release()
            for system in systems:
                system.close()
            direct.dispose()


@pytest.mark.postgres
def test_the_workers_run_through_pgbouncer_in_transaction_pooling(
    pg_url: str, tmp_path: Path
) -> None:
    """The relay leads, and a notice goes out, with every connection through PgBouncer: the
    lock keeps one of its two server connections, everything else takes turns on the other."""
    upgrade(pg_url)
    with PgBouncer(pg_admin_url(), pool_size=2) as pooler:
        container = bootstrap(fast_settings(pooler.url(pg_url), tmp_path))
        try:
            _, stop = start_runtime(container, consumers=True, relay=True)
            try:
                outcome = report(container, "acct_1")
                [notice] = [e for e in outcome.events if e.type == "NoticeIssued"]
                # No contact: the consumer records it undeliverable, once the relay sent it.
                wait_until(lambda: outcomes_of(container.store, notice.event_id), "its outcome")
            finally:
                stop()
        finally:
            container.close()


@pytest.mark.postgres
@pytest.mark.parametrize("pooled", [False, True], ids=["server", "pgbouncer"])
def test_a_waiting_process_whose_connection_was_lost_takes_the_lead_once_it_is_free(
    pg_url: str, tmp_path: Path, pooled: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """A process that does not lead keeps its lock connection for its next look; lost meanwhile
    (a restart, a failover, an idle timeout), the next look takes a new one. It raised, and the
    relay logged that it could not start, with a traceback, and waited to retry."""
    upgrade(pg_url)
    with contextlib.ExitStack() as stack:
        url = pg_url
        if pooled:
            url = stack.enter_context(PgBouncer(pg_admin_url(), pool_size=2)).url(pg_url)
        systems = [bootstrap(fast_settings(url, tmp_path)) for _ in range(2)]
        leader, waiting = (LeaderLock(s) for s in systems)
        direct = sa.create_engine(pg_url)
        stack.callback(direct.dispose)
        # A session lock leaves its session idle; a transaction lock, in its transaction.
        held = "idle in transaction" if pooled else "idle"
        try:
            assert leader.acquire()
            assert leader_session(direct) == (None, None, held)
            assert leader.holds()
            assert not waiting.acquire()
            kept = waiting.conn
            assert not waiting.acquire() and waiting.conn is kept  # one connection for its looks
            cut(waiting)
            leader.release()

            with caplog.at_level(logging.INFO, logger="enforcement.workers"):
                assert waiting.acquire()
            assert "the leader lock's connection was lost; looking again on a new one" in [
                r.getMessage() for r in caplog.records if r.name == "enforcement.workers"
            ]
            assert kept is not None and kept.closed and waiting.conn is not kept
            assert waiting.holds()
            assert leader_session(direct) == (None, None, held)
            assert not leader.acquire()
        finally:
            for lock in (leader, waiting):
                lock.release()
            for system in systems:
                system.close()


@pytest.mark.parametrize(
    "url",
    ["sqlite://", "sqlite:///:memory:", "sqlite:///file:shared?mode=memory&cache=shared&uri=true"],
    ids=["no-name", "memory", "memory-uri"],
)
def test_an_in_memory_sqlite_database_has_no_other_process_to_exclude(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # where a lock file named after the database would go
    engine = sa.create_engine(url, poolclass=sa.pool.StaticPool)
    first, second = (LeaderLock(SimpleNamespace(engine=engine)) for _ in range(2))  # type: ignore[arg-type]
    try:
        assert first.acquire() and second.acquire() and first.holds()
        assert list(tmp_path.iterdir()) == []  # no lock file
    finally:
        for lock in (first, second):
            lock.release()
        engine.dispose()


def test_a_look_that_fails_on_a_live_connection_raises_and_keeps_it() -> None:
    """Only a lost connection is replaced: another error of the look (the lock's query failing
    on a connection that still lives) is the caller's to retry, on the same connection."""
    error = sa.exc.OperationalError("SELECT pg_try_advisory_lock", {}, TimeoutError("canceled"))

    class Conn:
        def exec_driver_sql(self, sql: str) -> object:
            raise error

    class Engine:
        dialect = SimpleNamespace(name="postgresql")

        def connect(self) -> object:
            raise AssertionError("a new connection")

    lock = LeaderLock(SimpleNamespace(engine=Engine()))  # type: ignore[arg-type]
    conn: Any = Conn()
    lock.conn = conn
    with pytest.raises(sa.exc.OperationalError) as raised:
        lock.acquire()
    assert raised.value is error and lock.conn is conn
