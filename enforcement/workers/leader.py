"""Only one relay and deadline sweep at a time per database: the leader lock (an advisory lock
on PostgreSQL, a file lock on SQLite), and the leader's looks that it still holds it.
"""

from __future__ import annotations

import fcntl
import logging
import threading
from contextlib import suppress
from typing import Any

import sqlalchemy as sa

from enforcement.bootstrap import Container
from events import dialects

log = logging.getLogger("enforcement.workers")
LEADER_LOCK_KEY = 7_301_947_562
LEADER_CHECK_SECONDS = 5.0


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
