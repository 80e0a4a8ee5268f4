"""A PostgreSQL connection's set-up and its bounds: how long it may take to connect
(``POSTGRES_CONNECT_TIMEOUT_SECONDS``), its socket's keepalives and ``tcp_user_timeout``
(``POSTGRES_SOCKET_DEFAULTS``), how long it waits for an answer (``bounded_connection_class``),
how a dropped connection is noticed when it is taken from the pool (``configure_postgres``),
whether it goes through a connection pooler (``through_pooler``), and the server session a lost
one leaves behind (``session_pid``, ``end_session``). ``events.dialects.create_engine`` applies
them.
"""

from __future__ import annotations

import functools
import logging
import select
import sys
import threading
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from events import fastjson
from events.driver import DriverConnection, fetch_all

# A pooled PostgreSQL connection idle for longer than this is pinged before use (see
# ``configure_postgres``); one used more recently is checked without a round trip.
POSTGRES_IDLE_PING_SECONDS = 10.0

# The logger's name is the one operators were told (operations.md), from when this was dialects.
log = logging.getLogger("events.dialects")

# In a pooled PostgreSQL connection's ``info`` (the pool's record of it, kept across checkouts):
# whether it goes through a connection pooler (``configure_postgres``).
THROUGH_POOLER = "events_through_pooler"

# The URLs (password hidden) warned of as going through a pooler: once a process, however many
# engines it makes of one URL (`enforcement init` makes several; each CLI command makes one).
_POOLER_WARNED: set[str] = set()
_POOLER_WARNED_LOCK = threading.Lock()


def _first_pooler_warning(url: str) -> bool:
    with _POOLER_WARNED_LOCK:
        first = url not in _POOLER_WARNED
        _POOLER_WARNED.add(url)
        return first


POSTGRES_CONNECT_TIMEOUT_SECONDS = 10
# libpq's socket settings for a PostgreSQL connection whose URL does not set them. A peer gone
# without a word (a failover or a network cut that sends no reset) would otherwise hold a
# request, or the workers' leader lock, until the kernel gives up: two hours for an idle
# connection (the system's keepalive default), about fifteen minutes for one waiting on an
# answer to data the peer never acknowledged. With these, an idle connection is found dead
# within a minute (a probe after 30 s of silence, then every 10 s, three unanswered), and a
# write the peer does not acknowledge for 60 s fails the connection. A busy server costs
# nothing here: its kernel acknowledges at once, however long the query runs.
POSTGRES_SOCKET_DEFAULTS: dict[str, int] = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "tcp_user_timeout": 60_000,  # milliseconds
}


ANSWER_TIMEOUT_MESSAGE = (
    "PostgreSQL did not answer within {seconds:g} s (silent, or a statement that runs longer); "
    "the connection was closed"
)


@functools.cache
def bounded_connection_class() -> type[Any]:
    """``psycopg.Connection`` whose every wait for the server (an answer, a pipeline's results,
    a COMMIT) gives up once it has waited ``answer_timeout`` seconds in all (None: never) for
    the whole answer, however many bytes came meanwhile (psycopg's own timeout). Made on first
    use: importing psycopg costs a tenth of a second, which SQLite need not pay.

    A server that keeps the connection open and sends nothing, with its kernel still
    acknowledging what it is sent (a hung server, a stuck proxy or pooler), is seen by neither
    keepalives nor ``tcp_user_timeout``: without this, a request waits for it forever. Past the
    bound the connection's state is unknown (an answer may still come), so it is closed
    (``broken``: SQLAlchemy sees a disconnect, and the pool discards it) and an
    ``OperationalError`` saying so (``ANSWER_TIMEOUT_MESSAGE``, of the class's ``Timeout``) is
    raised; ``unanswered`` tells such a failure. A statement the server is still running (or
    whose rows are still coming) is not told from a silent server: the bound is also the
    longest any one round trip may take."""
    import psycopg
    from psycopg.errors import _WaitTimeout

    class AnswerTimeout(psycopg.OperationalError):
        """The server did not answer a round trip within ``answer_timeout`` seconds."""

    class BoundedConnection(psycopg.Connection[Any]):
        answer_timeout: float | None = None
        Timeout = AnswerTimeout

        def wait(self, gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:
            bound = self.answer_timeout if timeout is None else timeout
            try:
                return super().wait(gen, interval, bound)
            except _WaitTimeout:
                if timeout is not None:
                    raise  # the caller's own bound (``notifies``, a cancel): its to handle
                self.pgconn.finish()
                raise AnswerTimeout(ANSWER_TIMEOUT_MESSAGE.format(seconds=bound)) from None

    return BoundedConnection


def bound_answers(engine: Engine, seconds: float) -> None:
    """Make ``engine``'s connections wait ``seconds`` at most for the server."""
    bounded = bounded_connection_class()

    @sa.event.listens_for(engine, "do_connect")
    def _connect(_dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
        conn = bounded.connect(*cargs, **cparams)
        conn.answer_timeout = seconds
        return conn


def configure_postgres(engine: Engine) -> None:
    """Hand out only live connections, without a ``SELECT 1`` on every checkout.

    ``pool_pre_ping`` costs a round trip per checkout, as much as a whole read. Instead: a server
    that ends a connection (restart, ``pg_terminate_backend``, idle timeout) sends a FATAL
    message and closes the socket, so a connection with unread input while it sat in the pool, or
    one psycopg already knows is closed or broken, is pinged (and replaced if the ping fails); so
    is one idle for longer than ``POSTGRES_IDLE_PING_SECONDS``, for whatever gives no sign. A
    ``DisconnectionError`` raised here makes the pool connect afresh.

    Also: json and jsonb values are parsed by ``fastjson.loads`` (exactly ``json.loads``), and
    the session's time zone is UTC, so ``timestamptz`` values come back in UTC already (psycopg
    gives them ``datetime.UTC``, which ``to_utc`` passes through instead of converting each),
    and its ``DateStyle`` ISO, the one psycopg can read times in whatever the server's default.

    And each new connection is marked (``THROUGH_POOLER``) with whether it goes through a
    connection pooler: the process id the driver was given at connect (the BackendKeyData
    message) is then not the server's (``pg_backend_pid()``), but one the pooler made up, and
    the server session behind it cannot be known (``session_pid``). One warning per
    database URL and process says so.
    """
    from psycopg.types.json import set_json_loads

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, record: Any) -> None:
        # json and jsonb come back as ``json.loads`` gives them, only faster (``fastjson``).
        set_json_loads(fastjson.loads, dbapi_conn)
        autocommit = dbapi_conn.autocommit
        dbapi_conn.autocommit = True  # a session setting, outside any transaction
        try:
            # ``SET TIME ZONE 'UTC'``, ``SET DateStyle 'ISO'`` (psycopg reads a ``timestamptz``
            # sent as text only in ISO style; a server may default to another) and the server's
            # process id, in the one round trip.
            [(server_pid, _, _)] = dbapi_conn.execute(
                "SELECT pg_backend_pid(), set_config('TimeZone', 'UTC', false), "
                "set_config('DateStyle', 'ISO', false)"
            ).fetchall()
        finally:
            dbapi_conn.autocommit = autocommit
        through_pooler = server_pid != dbapi_conn.info.backend_pid
        record.info[THROUGH_POOLER] = through_pooler
        if through_pooler:
            # No server-side prepared statements: in transaction pooling a statement prepared
            # in one server session is asked for in another ("does not exist"), or prepared
            # again in a session another client shares ("already exists"); PgBouncer before
            # 1.21 does not carry them over. A direct connection still prepares the statements
            # it runs often (psycopg's ``prepare_threshold``).
            dbapi_conn.prepare_threshold = None
        shown_url = engine.url.render_as_string(hide_password=True) if through_pooler else ""
        if through_pooler and _first_pooler_warning(shown_url):
            log.warning(
                "the PostgreSQL connections of %s go through a connection pooler (the server "
                "process %s was given to the driver as %s): they prepare no statements on the "
                "server, and an append whose connection is lost cannot have its server session "
                "ended, so one not found recorded is answered "
                "as possibly recorded (AppendOutcomeUnknown, HTTP 503: retry with the same "
                "idempotency key), not as not written",
                shown_url,
                server_pid,
                dbapi_conn.info.backend_pid,
            )

    @sa.event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_conn: Any, record: Any) -> None:
        record.info["events_idle_since"] = time.monotonic()

    @sa.event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get("events_idle_since")
        if idle_since is None:  # connected just now
            return
        if dbapi_conn.closed or dbapi_conn.broken:
            raise sa.exc.DisconnectionError("the connection was closed")
        if time.monotonic() - idle_since < POSTGRES_IDLE_PING_SECONDS and not _has_input(
            dbapi_conn
        ):
            return
        try:
            if dbapi_conn.info.transaction_status != 0:  # not IDLE: leave it to the reset
                dbapi_conn.rollback()
            dbapi_conn.execute("SELECT 1")
            dbapi_conn.rollback()
        except Exception as exc:
            raise sa.exc.DisconnectionError(f"the connection failed a ping: {exc}") from exc


def _has_input(dbapi_conn: Any) -> bool:
    """Whether the server sent anything to an idle connection (a FATAL message, end of file)."""
    try:
        poller = select.poll()
        poller.register(dbapi_conn.fileno(), select.POLLIN | select.POLLERR | select.POLLHUP)
        return bool(poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return True


def through_pooler(conn: Connection | DriverConnection) -> bool:
    """Whether this PostgreSQL connection goes through a connection pooler (PgBouncer), as
    found when it was made (``THROUGH_POOLER``); also for a connection not checked at connect
    (an engine not made by ``create_engine``), which may."""
    return bool(conn.info.get(THROUGH_POOLER, True))


def session_pid(driver: DriverConnection) -> int | None:
    """The PostgreSQL server process of this connection's session, without a round trip: what
    ``end_session`` needs once the connection is lost. None on SQLite, and through a connection
    pooler, where the session cannot be known: the driver's process id is one the pooler made
    up (it may even be another live session's), and the server connection a pooler lends can
    change from one transaction to the next; also for a connection not checked at connect (an
    engine not made by ``create_engine``)."""
    if driver.dialect.name != "postgresql" or through_pooler(driver):
        return None
    pid: int = driver.dbapi_connection.info.backend_pid
    return pid


# psycopg.pq.TransactionStatus.INERROR, written out: importing psycopg costs SQLite a tenth of a
# second.
_IN_FAILED_TRANSACTION = 3


def transaction_failed(driver: DriverConnection) -> bool:
    """Whether the PostgreSQL transaction on this connection failed (an error, caught or not):
    only a rollback can end it, and PostgreSQL answers its COMMIT with ROLLBACK. Without a round
    trip; False on SQLite, which aborts no transaction for a failed statement."""
    if driver.dialect.name != "postgresql":
        return False
    return bool(driver.dbapi_connection.info.transaction_status == _IN_FAILED_TRANSACTION)


def pipeline_aborted(exc: BaseException) -> bool:
    """Whether ``exc`` is psycopg's answer to a statement sent in a pipeline after an error
    that was already raised, and consumed, by someone else: the statement was skipped and
    the transaction is failed."""
    psycopg = sys.modules.get("psycopg")
    return psycopg is not None and isinstance(exc, psycopg.errors.PipelineAborted)


# How long ``end_session`` waits for a server process to end.
END_SESSION_TIMEOUT_MS = 10_000


def end_session(engine: Engine, pid: int) -> None:
    """End the PostgreSQL server process ``pid`` (a session whose connection this client lost)
    if it still runs, and wait until it has: its transaction is then committed or rolled back
    for good. A session's statements that reached the server run on after its client is gone
    (a pipeline's COMMIT included), so until then its outcome can still change.

    Raises ``DBAPIError`` when the server cannot be asked, ``TimeoutError`` when the process
    does not end in time (PostgreSQL 14 and later wait for it; older ones cannot be asked).
    """
    # Only a session of this database and user: the process may have ended long ago and its
    # pid been given to another, which is then at most another session of this application.
    own = (
        "FROM pg_stat_activity WHERE pid = %s AND datname = current_database()"
        " AND usename = current_user"
    )
    fetch_all(engine, f"SELECT pg_terminate_backend(pid, %s) {own}", (END_SESSION_TIMEOUT_MS, pid))
    # Autocommit: each statement reads the server's activity afresh.
    [(running,)] = fetch_all(engine, f"SELECT count(*) {own}", (pid,))
    if running:
        raise TimeoutError(f"the server process {pid} did not end")
