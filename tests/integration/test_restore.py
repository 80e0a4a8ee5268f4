"""``enforcement restore BACKUP`` on SQLite: a checked backup put in the database's place, only
while no process uses the database, the database it replaces (with its -wal and -shm) kept
aside; PostgreSQL is refused with pg_restore named.

The commands run as an operator types them (the console script in a subprocess), against real
files; the processes that hold the database are real ones (a connection of this process, the
relay leader's lock, ``enforcement serve``).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from backup_support import HEAD, Live, break_a_chain, everything, files_in, one_sentence, run_cli
from test_service_support import FakeClock, open_system

from enforcement.workers.leader import LeaderLock
from tests.e2e.harness import start_server
from tests.unit.open_files import another_process_with

# A process that records events and dies before it closes the database (a crash, a kill): SQLite
# leaves them in the -wal beside it, which whatever file has the database's name takes in.
CRASH_AFTER_REPORTS = textwrap.dedent(
    """
    import os, sys
    from datetime import UTC, datetime
    from enforcement.bootstrap import bootstrap
    from enforcement.policy import ViolationReport
    from enforcement.service import Actor
    from enforcement.settings import Settings

    system = bootstrap(Settings(database_url=sys.argv[1]))
    for n in range(3):
        report = ViolationReport(category="spam", occurred_at=datetime.now(UTC))
        system.service.report_violation(f"acct_after_{n}", report, Actor("reporter:t", "t"))
    os._exit(0)
    """
)


def database_of(live: Live) -> Path:
    return Path(live.url.removeprefix("sqlite:///"))


def backed_up(live: Live, tmp_path: Path) -> tuple[Path, dict[str, object]]:
    """A backup of the live database (``enforcement backup``) and what it holds."""
    backup = tmp_path / "b.db"
    result = run_cli(live.url, "backup", str(backup))
    assert result.returncode == 0, result.stderr
    return backup, everything(live.system)


def crash_after_more_events(url: str) -> None:
    """Three more events recorded by a process that dies with the database open."""
    subprocess.run([sys.executable, "-c", CRASH_AFTER_REPORTS, url], check=True, timeout=120)


def accounts_in(database: Path) -> list[str]:
    """The accounts SQLite reads events of in ``database`` (with whatever files lie beside it)."""
    with sqlite3.connect(database) as conn:
        rows = conn.execute("SELECT DISTINCT account_id FROM events ORDER BY 1").fetchall()
    conn.close()
    return [str(row[0]) for row in rows]


def fingerprint(directory: Path, *, sizes: bool = True) -> dict[str, tuple[int, ...]]:
    """Every file in ``directory``, its inode and (``sizes``) its size and time of last change.
    (Not its bytes: a process that opens and closes a database file loses the locks its SQLite
    connections hold on it, POSIX locks being per process.)"""
    return {
        p.name: (s.st_ino, s.st_size, s.st_mtime_ns) if sizes else (s.st_ino,)
        for p in sorted(directory.iterdir())
        if p.is_file() and (s := p.stat())
    }


def restored_everything(url: str, clock: FakeClock) -> dict[str, object]:
    with open_system(url, FakeClock(clock())) as system:
        return everything(system)


# ------------------------------------------------------------------ putting a backup back


@pytest.mark.parametrize("live_file", ["beside its -wal", "gone, its -wal left"])
def test_a_restore_gives_back_exactly_the_backup_whatever_wal_the_old_database_left(
    live: Live, tmp_path: Path, live_file: str
) -> None:
    """The database crashed after the backup with later events in its -wal. Copied over the
    database file, the backup took those events in (SQLite applies a -wal to whatever file has
    the database's name); restored, it holds exactly the backup's log, and the old database is
    kept aside whole, its later events with it."""
    database = database_of(live)
    backup, before = backed_up(live, tmp_path)
    live.system.close()
    crash_after_more_events(live.url)
    assert Path(f"{database}-wal").stat().st_size > 0
    if live_file == "gone, its -wal left":
        database.unlink()  # a lost disk block, a removal by hand: the -wal stays
    size = backup.stat().st_size

    result = run_cli(live.url, "restore", str(backup))

    assert result.returncode == 0, result.stderr
    assert restored_everything(live.url, live.clock) == before
    assert result.stderr.startswith("copying ")  # the bar as it ended: every byte copied
    assert f" {size}/{size} 100% " in result.stderr
    asides = [name for name in files_in(database.parent) if ".before-restore-" in name]
    assert asides and not [n for n in files_in(database.parent) if n.startswith("enforcement.db-")]
    aside = database.with_name(min(asides).removesuffix("-shm").removesuffix("-wal"))
    figures = f"{len(before['events']):,} events of 10 account(s)"  # type: ignore[arg-type]
    assert f"Restored {database} from {backup}: {figures}" in result.stdout
    assert f"schema revision {HEAD}" in result.stdout
    assert "10 of 10 account chain(s) intact" in result.stdout
    assert "Next: `enforcement init`" in result.stdout
    if live_file == "beside its -wal":
        assert f"moved to {aside}" in result.stdout
        # Nothing of the old database is lost: with what lay beside it, it has the later events.
        later = [f"acct_after_{n}" for n in range(3)]
        assert accounts_in(aside) == sorted([*before["stored"], *later])  # type: ignore[misc]
    else:
        assert f"beside no database were moved to {aside}" in result.stdout
        assert Path(f"{aside}-wal").exists()


def test_a_damaged_database_is_replaced_and_kept_as_it_was(live: Live, tmp_path: Path) -> None:
    """A file SQLite cannot read at all is what a restore is for: it is moved aside untouched."""
    database = database_of(live)
    backup, before = backed_up(live, tmp_path)
    live.system.close()
    database.write_bytes(b"not a database, " * 1000)

    result = run_cli(live.url, "restore", str(backup))

    assert result.returncode == 0, result.stderr
    assert restored_everything(live.url, live.clock) == before
    (aside,) = [p for p in database.parent.iterdir() if ".before-restore-" in p.name]
    assert aside.read_bytes() == b"not a database, " * 1000
    assert stat_mode(database) == 0o600


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


# ------------------------------------------------------------------ a database in use


@contextmanager
def held_by(how: str, live: Live, tmp_path: Path) -> Iterator[None]:
    """The live database held by another process than the restore's, as ``how`` says."""
    if how == "a connection of another process":
        yield  # this one's: the system on it has read it
        return
    if how == "a connection that has read nothing yet":
        # A sqlite3 shell just started: the file is open, no lock is held (SQLite's locks
        # cannot see it), and what it reads next would be whatever file has the name's inode.
        live.system.close()
        with another_process_with(database_of(live), "select 1"):
            yield
        return
    if how == "the relay leader's lock":
        leader = LeaderLock(live.system)
        live.system.close()  # no connection left: only the lock file is held
        assert leader.acquire()
        try:
            yield
        finally:
            leader.release()
        return
    live.system.close()
    workdir = tmp_path / "serve"
    workdir.mkdir()
    with contextmanager(start_server)(live.url, workdir, "sqlite"):
        yield


@pytest.mark.parametrize(
    "how",
    [
        "a connection of another process",
        "a connection that has read nothing yet",
        "the relay leader's lock",
        "enforcement serve",
    ],
)
def test_a_database_in_use_is_not_replaced(live: Live, tmp_path: Path, how: str) -> None:
    database = database_of(live)
    backup, _ = backed_up(live, tmp_path)
    with held_by(how, live, tmp_path):
        # A serve goes on writing (its workers record deliveries): only names and files count.
        before = fingerprint(database.parent, sizes=False)

        result = run_cli(live.url, "restore", str(backup))

        message = one_sentence(result, 2)
        assert message.startswith(f"The database {database} is in use: "), message
        assert message.endswith("then run the restore again.")
        assert fingerprint(database.parent, sizes=False) == before  # nothing moved, no part


# ------------------------------------------------------------------ a backup that fails


def test_a_backup_that_fails_its_check_leaves_the_database_as_it_was(
    live: Live, tmp_path: Path
) -> None:
    database = database_of(live)
    backup, _ = backed_up(live, tmp_path)
    break_a_chain(f"sqlite:///{backup}")
    live.system.close()
    crash_after_more_events(live.url)  # a -wal beside it, which must stay where it is
    before = fingerprint(database.parent)

    result = run_cli(live.url, "restore", str(backup))

    message = one_sentence(result, 1)
    assert message.startswith("The backup failed its check: 1 account chain(s) are broken, ")
    assert message.endswith(f"the database {database} was left as it was.")
    assert fingerprint(database.parent) == before


@pytest.mark.parametrize(
    ("name", "said"),
    [
        ("missing.db", "Cannot read {path}: No such file or directory."),
        (".", "{path} is not a regular file; name a backup file."),
        ("live/enforcement.db", "{path} is the database or a file SQLite keeps beside it"),
        ("live/enforcement.db-wal", "{path} is the database or a file SQLite keeps beside it"),
    ],
)
def test_a_backup_argument_that_names_no_backup_is_refused(
    live: Live, tmp_path: Path, name: str, said: str
) -> None:
    live.system.close()
    path = tmp_path / name
    before = fingerprint(database_of(live).parent)
    result = run_cli(live.url, "restore", str(path))
    assert said.format(path=path) in one_sentence(result, 2)
    assert fingerprint(database_of(live).parent) == before


def test_a_backup_with_a_wal_beside_it_is_refused(live: Live, tmp_path: Path) -> None:
    """Its rows in the -wal are not in the file: restored alone, they would be missing."""
    backup, _ = backed_up(live, tmp_path)
    live.system.close()
    Path(f"{backup}-wal").write_bytes(b"frames")
    result = run_cli(live.url, "restore", str(backup))
    assert "has a -wal beside it" in one_sentence(result, 2)
    assert ".before-restore-" not in " ".join(files_in(database_of(live).parent))


def test_an_empty_wal_beside_a_backup_is_no_part_of_it(live: Live, tmp_path: Path) -> None:
    """SQLite can leave a -wal of no bytes behind: it holds no rows, so the file is whole."""
    backup, before = backed_up(live, tmp_path)
    live.system.close()
    Path(f"{backup}-wal").write_bytes(b"")
    result = run_cli(live.url, "restore", str(backup))
    assert result.returncode == 0, result.stderr
    assert restored_everything(live.url, live.clock) == before


def test_a_database_in_memory_is_refused(tmp_path: Path) -> None:
    backup = tmp_path / "b.db"
    backup.write_bytes(b"")
    result = run_cli("sqlite://", "restore", str(backup))
    assert (
        one_sentence(result, 2) == "sqlite:// is a database in memory: there is no file to restore."
    )
    assert files_in(tmp_path) == ["b.db"]


@pytest.mark.postgres
def test_on_postgresql_the_command_names_pg_restore(pg_url: str, tmp_path: Path) -> None:
    backup = tmp_path / "b.db"
    backup.write_bytes(b"")
    result = run_cli(pg_url, "restore", str(backup))
    assert "pg_restore" in one_sentence(result, 2)


def test_the_next_steps_tell_what_redis_needs(live: Live, tmp_path: Path) -> None:
    backup, _ = backed_up(live, tmp_path)
    live.system.close()
    environment = {"ENFORCEMENT_REDIS_URL": "redis://127.0.0.1:1/0"}  # not reached: only named
    result = run_cli(live.url, "restore", str(backup), **environment)
    assert result.returncode == 0, result.stderr
    assert "Redis needs nothing: the leading worker" in result.stdout
    assert "Redis" not in run_cli(live.url, "restore", str(backup)).stdout
    assert os.path.exists(live.url.removeprefix("sqlite:///"))
