"""The SQLite database file the service creates is its owner's alone, and so are the -wal and
-shm files SQLite makes beside it; a file that exists already keeps the mode it has."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from enforcement.migrations import upgrade
from events import EventStore, NewEvent, create_engine
from events.dialects import sqlite_file


@pytest.fixture
def open_umask() -> Iterator[None]:
    """The umask most systems start with: new files readable by everyone unless asked."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def connect_once(url: str) -> None:
    """Open a connection to ``url`` and close it (SQLite opens, or creates, the file)."""
    engine = create_engine(url)
    try:
        engine.connect().close()
    finally:
        engine.dispose()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def append_while_open(url: str, db: Path) -> dict[str, int]:
    """Migrate, append an event and give the modes of the files while the engine still holds
    them (the -wal and -shm files go when the last connection closes)."""
    upgrade(url)
    engine = create_engine(url)
    try:
        EventStore(engine).append("acct_1", 0, [NewEvent("Noted", {"n": 1}, datetime.now(UTC))])
        files = [db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")]
        return {path.name: mode(path) for path in files}
    finally:
        engine.dispose()


@pytest.mark.usefixtures("open_umask")
def test_a_new_database_and_its_wal_are_private(tmp_path: Path) -> None:
    db = tmp_path / "enforcement.db"
    modes = append_while_open(f"sqlite:///{db}", db)
    assert modes == {
        "enforcement.db": 0o600,
        "enforcement.db-wal": 0o600,
        "enforcement.db-shm": 0o600,
    }


@pytest.mark.usefixtures("open_umask")
def test_a_database_named_by_a_uri_filename_is_private_too(tmp_path: Path) -> None:
    db = tmp_path / "by uri.db"
    modes = append_while_open(f"sqlite:///file:{str(db).replace(' ', '%20')}?uri=true", db)
    assert set(modes.values()) == {0o600}


@pytest.mark.parametrize(
    ("url", "opened"),
    [
        ("sqlite:///{d}/plain.db?mode=ro", "plain.db"),  # without uri=true, mode means nothing
        ("sqlite:///file:{d}/a%23b.db?uri=true", "a"),  # SQLite cuts the name at '#'
        ("sqlite:///file:{d}/sp%2520ace.db?uri=true", "sp ace.db"),  # %HH decoded once
        ("sqlite:///file:{d}/t.db?uri=t", "t.db"),  # "t" is true to SQLAlchemy, as "true"
        ("sqlite:///{d}/a%2520b.db?uri=true", "a%20b.db"),  # not "file:": a name as it is
        ("sqlite:///file://localhost{d}/h.db?uri=true", "h.db"),  # the one host SQLite takes
        ("sqlite:///file://{d}/e.db?uri=true", "e.db"),  # an empty host
    ],
)
@pytest.mark.filterwarnings("ignore:Query string argument:sqlalchemy.exc.SAWarning")
def test_the_file_made_private_is_the_file_sqlite_opens(
    tmp_path: Path, url: str, opened: str
) -> None:
    connect_once(url.format(d=tmp_path))
    assert {p.name: mode(p) for p in tmp_path.iterdir()} == {opened: 0o600}


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:///file:{d}/missing.db?mode=rw&uri=true",
        "sqlite:///file:{d}/missing.db%3Fmode%3Drw%23frag?uri=true",  # the mode in the name
    ],
)
def test_a_uri_that_may_not_create_the_file_still_fails_when_it_is_missing(
    tmp_path: Path, url: str
) -> None:
    with pytest.raises(Exception, match="unable to open database file"):
        connect_once(url.format(d=tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_a_read_only_or_in_memory_uri_creates_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "absent.db"
    create_engine(f"sqlite:///file:{db}?mode=ro&uri=true").dispose()
    create_engine(f"sqlite:///file:{db}?mode=ro&nolock=1&uri=true").dispose()  # the mode's own
    assert list(tmp_path.iterdir()) == []
    assert sqlite_file("sqlite:///file:absent.db?mode=memory&uri=true") is None
    assert sqlite_file(f"sqlite:///file:{db}?mode=ro&uri=true") == str(db)


@pytest.mark.usefixtures("open_umask")
def test_an_existing_file_keeps_its_mode(tmp_path: Path) -> None:
    db = tmp_path / "enforcement.db"
    db.touch()
    db.chmod(0o640)  # an operator who shares the database with a group
    modes = append_while_open(f"sqlite:///{db}", db)
    assert set(modes.values()) == {0o640}


def test_a_missing_directory_is_still_sqlites_error(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="unable to open database file"):
        connect_once(f"sqlite:///{tmp_path / 'absent' / 'enforcement.db'}")
    assert not (tmp_path / "absent").exists()


def test_every_connection_is_durable_waits_for_the_lock_and_begins_as_asked(tmp_path: Path) -> None:
    """Each connection: WAL, full sync (an acknowledged append survives power loss), a busy
    timeout, foreign keys and recursive triggers on; its BEGIN takes the write lock only when
    asked (``sqlite_begin="IMMEDIATE"``). Each setting is asked for, not left to the build's
    default: this SQLite's default ``synchronous`` in WAL mode is FULL already, another
    build's may be NORMAL (commits not on disk)."""
    db = tmp_path / "enforcement.db"
    engine = create_engine(f"sqlite:///{db}")
    statements: list[str] = []

    def trace(dbapi_conn: sqlite3.Connection, _record: object) -> None:
        dbapi_conn.set_trace_callback(statements.append)

    sa.event.listen(engine, "connect", trace, insert=True)  # before the engine's own
    other = sqlite3.connect(db, isolation_level=None, timeout=0)
    try:
        with engine.connect() as conn:
            names = (
                "journal_mode",
                "synchronous",
                "busy_timeout",
                "foreign_keys",
                "recursive_triggers",
            )
            settings = [conn.exec_driver_sql(f"PRAGMA {name}").scalar() for name in names]
            assert settings == ["wal", 2, 60000, 1, 1]
            assert {
                "PRAGMA journal_mode=WAL",
                "PRAGMA synchronous=FULL",
                "PRAGMA busy_timeout=60000",
                "PRAGMA foreign_keys=ON",
                "PRAGMA recursive_triggers=ON",
            } <= set(statements)
        for options, locked in (({}, False), ({"sqlite_begin": "IMMEDIATE"}, True)):
            with engine.connect() as conn, conn.execution_options(**options).begin():
                if locked:
                    with pytest.raises(sqlite3.OperationalError, match="locked"):
                        other.execute("BEGIN IMMEDIATE")
                else:
                    other.execute("BEGIN IMMEDIATE")
                    other.execute("ROLLBACK")
    finally:
        other.close()
        engine.dispose()
