"""Everything that differs between SQLite and PostgreSQL, in one place.

- connection set-up (SQLite: WAL, busy timeout, explicit ``BEGIN IMMEDIATE`` for writers);
- the append-only triggers;
- the write lock that makes position order equal commit order (gap-safe catch-up);
- how a JSON document comes back from the database (what the hash chain must cover);
- statements run on the driver's own connection (``driver_call``), and how a dropped PostgreSQL
  connection is noticed when it is taken from the pool, or a silent server given up
  (``create_engine``'s ``answer_timeout``, ``unanswered``);
- whether a PostgreSQL connection goes through a connection pooler (PgBouncer), and which server
  session a lost connection leaves behind;
- an INSERT that can take ``ON CONFLICT`` (``conflict_insert``).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import select
import sqlite3
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any, TypeVar
from urllib.parse import unquote

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from events import fastjson

APPEND_ONLY_MESSAGE = "events are append-only: UPDATE and DELETE are refused"

# Any constant works; it only has to be the same in every process that appends.
_POSTGRES_APPEND_LOCK_KEY = 7_301_947_561
_POSTGRES_APPEND_LOCK = f"SELECT pg_advisory_xact_lock({_POSTGRES_APPEND_LOCK_KEY})"

# A pooled PostgreSQL connection idle for longer than this is pinged before use (see
# ``_configure_postgres``); one used more recently is checked without a round trip.
POSTGRES_IDLE_PING_SECONDS = 10.0

R = TypeVar("R")

log = logging.getLogger("events.dialects")

# In a pooled PostgreSQL connection's ``info`` (the pool's record of it, kept across checkouts):
# whether it goes through a connection pooler (``_configure_postgres``).
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


def normalized_url(url: str | sa.URL) -> sa.URL:
    """``url`` as the log connects to it: PostgreSQL always through psycopg 3 (a URL without a
    driver, whose default is psycopg2 on SQLAlchemy 2.0, or naming psycopg2, gets it)."""
    sa_url = sa.make_url(url)
    if sa_url.get_backend_name() == "postgresql" and sa_url.drivername in (
        "postgresql",
        "postgresql+psycopg2",
    ):
        sa_url = sa_url.set(drivername="postgresql+psycopg")
    return sa_url


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
def _bounded_connection_class() -> type[Any]:
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


def unanswered(exc: BaseException) -> BaseException | None:
    """The driver's timeout that ``exc`` is, or was raised from (its ``orig``, cause or
    context), when it is PostgreSQL not answering in time: connecting (``connect_timeout``) or
    waiting for an answer (``create_engine``'s ``answer_timeout``); else None. Another call now
    would most likely wait as long: the server is silent, not merely failing."""
    psycopg = sys.modules.get("psycopg")
    if psycopg is None:
        return None  # never loaded: no PostgreSQL connection was ever tried
    timeouts = (psycopg.errors.ConnectionTimeout, _bounded_connection_class().Timeout)
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        for candidate in (cause, getattr(cause, "orig", None)):
            if isinstance(candidate, timeouts):
                found: BaseException = candidate
                return found
        cause = cause.__cause__ or cause.__context__
    return None


# PostgreSQL's SQLSTATE for a write refused because its disk is full (``disk_full``).
_POSTGRES_DISK_FULL = "53100"


def storage_full(exc: BaseException, database_file: str | None = None) -> bool:
    """Whether ``exc`` (or its driver error, ``orig``) is the database refusing a write because
    the disk that holds it is full: SQLite's ``SQLITE_FULL`` ("database or disk is full"), or
    PostgreSQL's ``disk_full``. SQLite rolls the transaction back whole; space freed, the next
    write succeeds on the same connections. With the SQLite ``database_file``, also an I/O
    error while its disk has no space left: a process that opens the database then cannot
    create its ``-wal`` or ``-shm`` file, which SQLite reports as "disk I/O error"."""
    orig = getattr(exc, "orig", None) or exc
    if isinstance(orig, sqlite3.Error):
        code = getattr(orig, "sqlite_errorcode", 0) & 0xFF
        return code == sqlite3.SQLITE_FULL or (
            code == sqlite3.SQLITE_IOERR
            and database_file is not None
            and _no_space_left(database_file)
        )
    return getattr(orig, "sqlstate", None) == _POSTGRES_DISK_FULL


def _no_space_left(path: str) -> bool:
    try:
        return os.statvfs(os.path.dirname(os.path.abspath(path))).f_bavail == 0
    except OSError:
        return False


def create_engine(
    url: str,
    connect_timeout: int | None = None,
    answer_timeout: float | None = None,
    **kwargs: Any,
) -> Engine:
    """An engine configured for the log: durable SQLite, pooled PostgreSQL (psycopg 3).
    ``connect_timeout`` (seconds, PostgreSQL only) replaces the usual bound on connecting: the
    URL's own, else ``POSTGRES_CONNECT_TIMEOUT_SECONDS``. PostgreSQL sockets take
    ``POSTGRES_SOCKET_DEFAULTS`` for what the URL does not set. ``answer_timeout`` (seconds,
    PostgreSQL only; None: no bound) is how long a connection waits in all for the whole answer
    of one round trip before it is closed as lost (``_bounded_connection_class``)."""
    sa_url = normalized_url(url)
    if sa_url.get_backend_name() == "sqlite":
        _create_private_file(sa_url)
        engine = sa.create_engine(
            sa_url, connect_args={"check_same_thread": False, "timeout": 60}, **kwargs
        )
        _configure_sqlite(engine)
        return engine
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 20)
    connect_args = dict(kwargs.pop("connect_args", None) or {})
    # A server that accepts connections and never answers would hold a request (and /healthz,
    # which should answer 503) for as long as the kernel keeps the socket.
    if connect_timeout is not None:
        connect_args["connect_timeout"] = connect_timeout
    for name, value in (
        ("connect_timeout", POSTGRES_CONNECT_TIMEOUT_SECONDS),
        *POSTGRES_SOCKET_DEFAULTS.items(),
    ):
        if name not in sa_url.query:  # the URL's own settings stand (``connect_args`` would win)
            connect_args.setdefault(name, value)
    kwargs["connect_args"] = connect_args
    engine = sa.create_engine(sa_url, **kwargs)
    if engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg":
        _configure_postgres(engine)
        if answer_timeout is not None:
            _bound_answers(engine, answer_timeout)
    return engine


def _bound_answers(engine: Engine, seconds: float) -> None:
    """Make ``engine``'s connections wait ``seconds`` at most for the server."""
    bounded = _bounded_connection_class()

    @sa.event.listens_for(engine, "do_connect")
    def _connect(_dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
        conn = bounded.connect(*cargs, **cparams)
        conn.answer_timeout = seconds
        return conn


def _configure_postgres(engine: Engine) -> None:
    """Hand out only live connections, without a ``SELECT 1`` on every checkout.

    ``pool_pre_ping`` costs a round trip per checkout, as much as a whole read. Instead: a server
    that ends a connection (restart, ``pg_terminate_backend``, idle timeout) sends a FATAL
    message and closes the socket, so a connection with unread input while it sat in the pool, or
    one psycopg already knows is closed or broken, is pinged (and replaced if the ping fails); so
    is one idle for longer than ``POSTGRES_IDLE_PING_SECONDS``, for whatever gives no sign. A
    ``DisconnectionError`` raised here makes the pool connect afresh.

    Also: json and jsonb values are parsed by ``fastjson.loads`` (exactly ``json.loads``), and
    the session's time zone is UTC, so ``timestamptz`` values come back in UTC already (psycopg
    gives them ``datetime.UTC``, which ``to_utc`` passes through instead of converting each).

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
            # ``SET TIME ZONE 'UTC'`` and the server's process id, in the one round trip.
            [(server_pid, _)] = dbapi_conn.execute(
                "SELECT pg_backend_pid(), set_config('TimeZone', 'UTC', false)"
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


# A new database file is readable and writable by its owner only: it holds contact addresses,
# webhook URLs, descriptions and token hashes. SQLite gives its -wal and -shm files the mode of
# the database file, so they follow; an operator who widens the file's mode widens theirs too.
DATABASE_FILE_MODE = 0o600


def _sqlite_target(url: str | sa.URL) -> tuple[str | None, str]:
    """The file SQLite opens for a SQLite URL (None: another database, or one in memory) and
    its URI ``mode`` ("" when unset). From the arguments the dialect hands ``sqlite3.connect``
    (the filename, and whether it is a URI), read as SQLite reads them: a URI's name ends at
    ``?`` or ``#``, ``%HH`` is decoded, and the last ``mode`` counts."""
    sa_url = sa.make_url(url)
    if sa_url.get_backend_name() != "sqlite":
        return None, ""
    args, kwargs = sa_url.get_dialect()().create_connect_args(sa_url)
    filename = str(args[0]) if args else ":memory:"
    mode = ""
    if kwargs.get("uri") and filename.startswith("file:"):
        name, _, query = filename[len("file:") :].partition("#")[0].partition("?")
        for part in query.split("&"):
            key, _, value = part.partition("=")
            if unquote(key) == "mode":
                mode = unquote(value)
        filename = unquote(name)
        if filename.startswith("//"):  # file://host/path: SQLite takes only an empty host
            filename = "/" + filename[2:].partition("/")[2]
    if filename in ("", ":memory:") or mode == "memory":
        return None, mode
    return filename, mode


def sqlite_file(url: str | sa.URL) -> str | None:
    """The file a SQLite URL names, a URI filename (``sqlite:///file:/path/x.db?uri=true``)
    included; None for another database or one in memory."""
    return _sqlite_target(url)[0]


def _create_private_file(sa_url: sa.URL) -> None:
    """Create the URL's file empty with ``DATABASE_FILE_MODE`` if it does not exist (SQLite
    takes an empty file as an empty database), unless it is opened in a mode that does not
    create it (``ro``, ``rw``: there a missing file must stay an error). Any other problem is
    left for SQLite to report."""
    path, mode = _sqlite_target(sa_url)
    if path is None or mode in ("ro", "rw"):
        return
    # It exists already, or cannot be created: SQLite says why when it connects.
    with suppress(OSError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, DATABASE_FILE_MODE))


def _configure_sqlite(engine: Engine) -> None:
    # pysqlite's own transaction handling defers BEGIN and cannot take the write lock up front;
    # we issue BEGIN ourselves so that writers start with BEGIN IMMEDIATE and never deadlock on
    # a read-to-write lock upgrade (they queue on the busy timeout instead).
    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")  # an acknowledged append survives power loss
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.execute("PRAGMA foreign_keys=ON")
        # REPLACE deletes the row it conflicts with without firing DELETE triggers unless this
        # is on: ``INSERT OR REPLACE INTO events`` would have replaced a recorded event.
        cursor.execute("PRAGMA recursive_triggers=ON")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        statement = f"BEGIN {mode}"
        driver_call(conn, statement, lambda dbapi_conn: dbapi_conn.execute(statement))


def database_identity(engine: Engine) -> str:
    """Which database ``engine`` opens, as a word that changes when another one takes its
    place: on PostgreSQL the database's OID (a dump restored into a database is a new
    database), on SQLite the file's device and inode (a backup put in its place is another
    file)."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            oid = conn.exec_driver_sql(
                "SELECT oid FROM pg_database WHERE datname = current_database()"
            ).scalar_one()
        return f"postgresql:{oid}"
    path = sqlite_file(engine.url)
    if path is None:
        return "sqlite:memory"
    info = os.stat(path)
    return f"sqlite:{info.st_dev}:{info.st_ino}"


def is_sqlite(conn: Connection | Engine) -> bool:
    return conn.dialect.name == "sqlite"


# One writer lock per database FILE in this process, whatever engine opened it: two engines on
# one file (a service and its embedded workers, a test and the system under test) must queue
# here rather than meet in SQLite's busy handler, which sleeps in steps of up to 100 ms.
_sqlite_writer_locks: dict[str, threading.RLock] = {}
_sqlite_writer_locks_guard = threading.Lock()


# Each engine's lock, once found: resolving the file's real path costs a few system calls.
_sqlite_engine_locks: weakref.WeakKeyDictionary[Engine, threading.RLock] = (
    weakref.WeakKeyDictionary()
)


def _sqlite_writer_lock(engine: Engine) -> threading.RLock:
    lock = _sqlite_engine_locks.get(engine)
    if lock is not None:
        return lock
    database = sqlite_file(engine.url)
    # A private in-memory database has a lock of its own.
    key = os.path.realpath(database) if database is not None else f"engine:{id(engine)}"
    with _sqlite_writer_locks_guard:
        lock = _sqlite_writer_locks.setdefault(key, threading.RLock())
        _sqlite_engine_locks[engine] = lock
    return lock


@contextmanager
def write_connection(engine: Engine) -> Iterator[Connection]:
    """A connection whose transactions are writers from their first statement.

    On SQLite, writers of one process also queue on an in-process lock: SQLite's own busy
    handler polls with growing sleeps, which under contention leaves the database idle and
    stretches tail latency; a lock hands over at once. Other processes still wait on the busy
    timeout.
    """
    if not is_sqlite(engine):
        with engine.connect() as conn:
            yield conn
        return
    with _sqlite_writer_lock(engine), engine.connect() as conn:
        yield conn.execution_options(sqlite_begin="IMMEDIATE")


class DriverConnection:
    """A driver (DBAPI) connection in use, whose errors come out as SQLAlchemy's.

    For the hot paths, where SQLAlchemy's per-statement and per-row processing costs more than
    the statement itself: callers pass values the driver takes as they are. A driver error is
    wrapped exactly as ``Connection.execute`` would wrap it (``IntegrityError``,
    ``OperationalError`` …), and a disconnect invalidates the connection.
    """

    __slots__ = ("_invalidate", "_invalidated", "dbapi_connection", "dialect", "info")

    def __init__(
        self,
        dialect: sa.Dialect,
        dbapi_connection: Any,
        invalidate: Callable[[], Any],
        info: dict[Any, Any],
    ):
        """``info``: the pooled connection's (the pool's record of it, ``THROUGH_POOLER``)."""
        self.dialect = dialect
        self.dbapi_connection = dbapi_connection
        self._invalidate = invalidate
        self._invalidated = False
        self.info = info

    @classmethod
    def of(cls, conn: Connection) -> DriverConnection:
        """The driver connection under a SQLAlchemy connection (in its transaction, if any)."""
        pooled = conn.connection
        return cls(conn.dialect, pooled.dbapi_connection, conn.invalidate, pooled.info)

    def call(self, statement: str, call: Callable[[Any], R], params: Any = None) -> R:
        """``call(dbapi_connection)``, which runs ``statement``."""
        try:
            return call(self.dbapi_connection)
        except self.dialect.loaded_dbapi.Error as exc:
            raise wrap_driver_error(
                self.dialect, exc, statement, params, self.dbapi_connection, self.invalidate
            ) from exc

    def execute(self, statement: str, params: Any = ()) -> Any:
        """Run one statement; its cursor (fetch inside ``call`` where fetching may fail)."""
        return self.call(statement, lambda c: c.execute(statement, params), params)

    def invalidate(self) -> None:
        """Discard the connection: the pool closes it instead of handing it out again."""
        if not self._invalidated:
            self._invalidated = True
            self._invalidate()


def driver_call(
    conn: Connection, statement: str, call: Callable[[Any], R], params: Any = None
) -> R:
    """``call(dbapi_connection)`` on ``conn``'s driver connection (``DriverConnection.call``)."""
    return DriverConnection.of(conn).call(statement, call, params)


def raw_connection(engine: Engine) -> Any:
    """``engine.raw_connection()``, with a failure to connect raised as ``engine.connect()``
    raises it (a SQLAlchemy ``OperationalError``, not the driver's)."""
    try:
        return engine.raw_connection()
    except engine.dialect.loaded_dbapi.Error as exc:
        wrapped = sa.exc.DBAPIError.instance(
            None, None, exc, engine.dialect.loaded_dbapi.Error, dialect=engine.dialect
        )
        raise wrapped from exc


def fetch_all(engine: Engine, statement: str, params: Sequence[Any] = ()) -> list[Any]:
    """The rows of one read-only statement in the driver's parameter style (``?`` on SQLite,
    ``%s`` on PostgreSQL), on a pooled connection of its own, without SQLAlchemy's
    per-statement work; errors come out as SQLAlchemy's.

    On PostgreSQL the statement runs in autocommit: a single statement sees one snapshot
    either way, and it saves the BEGIN and ROLLBACK round trips. The connection goes back
    to the pool in its usual mode, or is discarded.
    """
    return _read(engine, statement, params, lambda conn: conn.execute(statement, params).fetchall())


def fetch_each(engine: Engine, statement: str, params: Sequence[Sequence[Any]]) -> list[list[Any]]:
    """``[fetch_all(engine, statement, p) for p in params]`` on one pooled connection; on
    PostgreSQL in one round trip (psycopg's pipeline mode, in autocommit). The statements go
    out without a Sync between them, so the server runs them as one implicit transaction: an
    error in one aborts the ones after it (the call raises), and under READ COMMITTED each
    still reads a snapshot of its own. An error names the first statement's parameters."""
    if not params:
        return []

    def run(conn: Any) -> list[list[Any]]:
        if engine.dialect.name != "postgresql":
            return [conn.execute(statement, p).fetchall() for p in params]
        with conn.pipeline():
            cursors = [conn.cursor().execute(statement, p) for p in params]
        pages = []
        for cursor in cursors:
            with cursor:
                pages.append(cursor.fetchall())
        return pages

    return _read(engine, statement, params[0], run)


def _read(engine: Engine, statement: str, params: Any, run: Callable[[Any], R]) -> R:
    """``run(driver connection)`` for ``fetch_all`` and ``fetch_each`` (see ``fetch_all``)."""
    raw = raw_connection(engine)
    dbapi_conn: Any = raw.dbapi_connection
    postgres = engine.dialect.name == "postgresql"
    try:
        try:
            if postgres:
                dbapi_conn.autocommit = True
            return run(dbapi_conn)
        except engine.dialect.loaded_dbapi.Error as exc:
            raise wrap_driver_error(
                engine.dialect, exc, statement, params, dbapi_conn, raw.invalidate
            ) from exc
        finally:
            if postgres and raw.is_valid:
                try:
                    dbapi_conn.autocommit = False
                except Exception:
                    raw.invalidate()
    finally:
        raw.close()


@contextmanager
def write_transaction(engine: Engine) -> Iterator[DriverConnection]:
    """A writing transaction straight on a pooled driver connection, committed on success.

    The same transaction as ``write_connection`` + ``begin()`` (on SQLite, the in-process
    writer lock and ``BEGIN IMMEDIATE``), without SQLAlchemy's connection and transaction
    objects, for writers that need no SQLAlchemy connection.
    """
    sqlite = is_sqlite(engine)
    lock = _sqlite_writer_lock(engine) if sqlite else None
    if lock is not None:
        lock.acquire()
    try:
        raw = raw_connection(engine)
        try:
            driver = DriverConnection(
                engine.dialect, raw.dbapi_connection, raw.invalidate, raw.info
            )
            if sqlite:
                driver.execute("BEGIN IMMEDIATE")
            try:
                yield driver
            except BaseException:
                if raw.is_valid:
                    try:
                        driver.call("ROLLBACK", lambda c: c.rollback())
                    except Exception:
                        raw.invalidate()
                raise
            driver.call("COMMIT", lambda c: c.commit())
        finally:
            raw.close()
    finally:
        if lock is not None:
            lock.release()


def wrap_driver_error(
    dialect: sa.Dialect,
    exc: Exception,
    statement: str,
    params: Any,
    dbapi_conn: Any,
    invalidate: Callable[[], None],
) -> sa.exc.DBAPIError:
    """The SQLAlchemy exception for a driver error; invalidates the connection on a disconnect."""
    disconnect = dialect.is_disconnect(exc, dbapi_conn, None)  # type: ignore[arg-type]
    if disconnect:
        invalidate()
    wrapped = sa.exc.DBAPIError.instance(
        statement,
        params,
        exc,
        dialect.loaded_dbapi.Error,
        connection_invalidated=disconnect,
        dialect=dialect,
    )
    assert isinstance(wrapped, sa.exc.DBAPIError)
    wrapped.__cause__ = exc
    return wrapped


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


def connection_lost(exc: sa.exc.DBAPIError, driver: DriverConnection | None) -> bool:
    """Whether ``exc`` came from losing the connection (not from an error the server gave)."""
    if exc.connection_invalidated:
        return True
    return driver is not None and bool(getattr(driver.dbapi_connection, "broken", False))


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


def conflict_insert(conn: Connection, table: sa.Table) -> postgresql.Insert | sqlite.Insert:
    """An INSERT into ``table`` in ``conn``'s dialect, so that it can take ``ON CONFLICT …
    DO UPDATE`` (``on_conflict_do_update``): SQLite and PostgreSQL write the clause alike."""
    return postgresql.insert(table) if conn.dialect.name == "postgresql" else sqlite.insert(table)


def take_append_lock(conn: Connection | DriverConnection) -> None:
    """Serialise "assign positions + insert + commit" so insert order is commit order.

    On PostgreSQL a ``bigserial`` alone is not enough: a transaction that takes position 10 may
    commit after one that takes 11, and a reader following ``position > checkpoint`` would skip
    10 forever. A transaction-scoped advisory lock taken just before the insert, and released by
    the commit itself (after the rows became visible), closes that gap. Callers do all their
    reading and deciding first, so the lock covers only the stream heads, the insert and the
    commit.
    SQLite has a single writer (``BEGIN IMMEDIATE``), so its positions are commit-ordered already.

    The statement goes to the driver connection directly, so that the store can pipeline it with
    the reads of the stream heads that follow it; outside a pipeline it runs at once.
    """
    if conn.dialect.name == "postgresql":
        driver = conn if isinstance(conn, DriverConnection) else DriverConnection.of(conn)
        driver.execute(_POSTGRES_APPEND_LOCK)


def as_stored_json(conn: Connection | DriverConnection, document: Any) -> Any:
    """``document`` exactly as a JSON column of this database will give it back.

    The hash chain must cover what readers get. PostgreSQL's ``jsonb`` rewrites some numbers
    (``1e16`` comes back as ``10000000000000000``, ``-0.0`` as ``0.0``), so there the document
    makes one round trip through the server before it is hashed; SQLite keeps the JSON text as
    written. NaN and infinities are not JSON and raise ``ValueError`` on every database.
    """
    text = json.dumps(document, allow_nan=False)
    if conn.dialect.name == "postgresql" and not _jsonb_keeps(document):
        if isinstance(conn, DriverConnection):
            statement = "SELECT CAST(%s AS jsonb)"
            return conn.call(statement, lambda c: c.execute(statement, (text,)).fetchone()[0])
        query = sa.text("SELECT CAST(:document AS jsonb) AS document").columns(
            sa.column("document", postgresql.JSONB())
        )
        return conn.execute(query, {"document": text}).scalar_one()
    return json.loads(text)


def _jsonb_keeps(value: Any) -> bool:
    """Whether ``jsonb`` gives ``value`` back unchanged, so the round trip can be skipped.

    Strings, booleans, null and integers always come back as sent; a float does when its
    shortest representation has no exponent and it is not negative zero (the cases ``numeric``
    rewrites). Almost every payload qualifies, which saves a round trip per append.
    """
    if isinstance(value, dict):
        return all(_jsonb_keeps(v) for v in value.values())
    if isinstance(value, list):
        return all(_jsonb_keeps(v) for v in value)
    if isinstance(value, float):
        return jsonb_keeps_float(value)
    return not (isinstance(value, str) and "\x00" in value)


def jsonb_keeps_float(value: float) -> bool:
    """Whether ``jsonb`` gives this float back as sent (see ``_jsonb_keeps``)."""
    text = repr(value)
    return "e" not in text and "n" not in text and text != "-0.0"


def append_only_ddl(dialect_name: str) -> list[str]:
    """DDL for the triggers that make the database itself refuse UPDATE and DELETE on events."""
    if dialect_name == "sqlite":
        return [
            f"""CREATE TRIGGER events_refuse_update BEFORE UPDATE ON events
            BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY_MESSAGE}'); END""",
            f"""CREATE TRIGGER events_refuse_delete BEFORE DELETE ON events
            BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY_MESSAGE}'); END""",
        ]
    if dialect_name == "postgresql":
        return [
            f"""CREATE OR REPLACE FUNCTION events_refuse_change() RETURNS trigger AS $$
            BEGIN
                RAISE EXCEPTION '{APPEND_ONLY_MESSAGE} (% on events)', TG_OP
                    USING ERRCODE = 'restrict_violation';
            END $$ LANGUAGE plpgsql""",
            """CREATE TRIGGER events_refuse_update_delete BEFORE UPDATE OR DELETE ON events
            FOR EACH ROW EXECUTE FUNCTION events_refuse_change()""",
            """CREATE TRIGGER events_refuse_truncate BEFORE TRUNCATE ON events
            FOR EACH STATEMENT EXECUTE FUNCTION events_refuse_change()""",
        ]
    raise ValueError(f"unsupported database {dialect_name!r}")


def drop_append_only_ddl(dialect_name: str) -> list[str]:
    if dialect_name == "sqlite":
        return [
            "DROP TRIGGER IF EXISTS events_refuse_update",
            "DROP TRIGGER IF EXISTS events_refuse_delete",
        ]
    return [
        "DROP TRIGGER IF EXISTS events_refuse_update_delete ON events",
        "DROP TRIGGER IF EXISTS events_refuse_truncate ON events",
        "DROP FUNCTION IF EXISTS events_refuse_change()",
    ]
