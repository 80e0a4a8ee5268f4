"""The pieces of ``enforcement restore`` that need no database: the name the replaced database
is kept under, moving it aside (and back on a failure), copying the backup in, and finding
another process that has the database open (mutation testing, mt28)."""

from __future__ import annotations

import errno
import os
import re
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from enforcement import restore
from enforcement.restore import (
    DatabaseHold,
    InUse,
    RestoreError,
    aside_name,
    copy_file,
    describe_moved,
    move_aside,
    other_opener,
)
from tests.unit.open_files import another_process_with, files_open_here

NOW = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
SIDE = ("", "-wal", "-shm", "-journal")


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_the_replaced_database_gets_a_name_no_file_has_nor_one_sqlite_keeps_beside(
    tmp_path: Path,
) -> None:
    database = tmp_path / "enforcement.db"
    stem = "enforcement.db.before-restore-20260304T050607Z"
    assert aside_name(database, NOW) == tmp_path / stem
    (tmp_path / f"{stem}-journal").write_bytes(b"")
    assert aside_name(database, NOW) == tmp_path / f"{stem}-2"
    (tmp_path / f"{stem}-2-shm").write_bytes(b"")
    assert aside_name(database, NOW) == tmp_path / f"{stem}-3"
    for number in range(3, 999):
        (tmp_path / f"{stem}-{number}").write_bytes(b"")
    assert aside_name(database, NOW) == tmp_path / f"{stem}-999"
    (tmp_path / f"{stem}-999-wal").write_bytes(b"")
    with pytest.raises(
        RestoreError, match=re.escape(f"No free name for the database beside {database}.")
    ):
        aside_name(database, NOW)


def test_the_database_moves_aside_with_its_side_files_and_back_on_a_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database, aside = tmp_path / "enforcement.db", tmp_path / "aside"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{database}{suffix}").write_bytes(suffix.encode())
    before = names(tmp_path)
    rename = Path.rename

    def refuse_the_shm(self: Path, target: str) -> Path:
        if str(self).endswith("-shm"):
            raise PermissionError(13, "Permission denied")
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", refuse_the_shm)
    with pytest.raises(RestoreError, match=r"Cannot move .* aside: Permission denied\.$"):
        move_aside(database, aside)
    assert names(tmp_path) == before
    monkeypatch.undo()

    assert move_aside(database, aside) == ["", "-wal", "-shm"]
    assert names(tmp_path) == ["aside", "aside-shm", "aside-wal"]
    assert Path(f"{aside}-wal").read_bytes() == b"-wal"


@pytest.mark.parametrize(
    ("moved", "said"),
    [
        ([], "There was no database to replace."),
        (
            [""],
            "The database it replaced was moved to /d/aside; delete it once you are sure.",
        ),
        (
            ["", "-wal", "-shm"],
            "The database it replaced was moved to /d/aside (with its -wal and -shm); "
            "delete it once you are sure.",
        ),
        (
            ["-wal", "-shm"],
            "The files -wal, -shm that were beside no database were moved to /d/aside.",
        ),
    ],
)
def test_what_was_moved_is_told(moved: list[str], said: str) -> None:
    assert describe_moved(Path("/d/aside"), moved) == said


def test_the_backup_is_copied_whole_through_short_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, target = tmp_path / "b.db", tmp_path / "copy"
    source.write_bytes(bytes(range(10)))
    write = os.write
    monkeypatch.setattr(restore, "COPY_CHUNK", 4)
    monkeypatch.setattr(os, "write", lambda fd, data: write(fd, bytes(data[:3])))
    seen: list[tuple[int, int]] = []
    fd = os.open(target, os.O_WRONLY | os.O_CREAT)
    try:
        copy_file(source, fd, lambda done, total: seen.append((done, total)))
    finally:
        os.close(fd)
    assert target.read_bytes() == bytes(range(10))
    assert seen == [(4, 10), (8, 10), (10, 10)]


def test_the_backup_is_copied_whole_with_no_one_to_report_to(tmp_path: Path) -> None:
    source, target = tmp_path / "b.db", tmp_path / "copy"
    source.write_bytes(b"backup")
    with target.open("wb") as written:
        copy_file(source, written.fileno())
    assert target.read_bytes() == b"backup"


def fake_proc(proc: Path, pid: str, opened: list[Path], comm: str | None) -> None:
    """A process ``pid`` of a ``/proc`` laid out as Linux does, with ``opened`` open."""
    fds = proc / pid / "fd"
    fds.mkdir(parents=True)
    for number, path in enumerate(opened):
        (fds / str(number)).symlink_to(path)
    if comm is not None:
        (proc / pid / "comm").write_text(f"{comm}\n")


def test_another_process_that_has_the_database_open_is_named(tmp_path: Path) -> None:
    database, other = tmp_path / "enforcement.db", tmp_path / "other.db"
    database.write_bytes(b"db")
    other.write_bytes(b"other")
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "self").mkdir()  # not a process
    fake_proc(proc, "7", [other, tmp_path / "gone"], "python")
    fake_proc(proc, str(os.getpid()), [database], "pytest")  # this process
    assert other_opener(database, proc) is None

    (proc / "8").mkdir()  # a process whose files are not ours to look into: no fd listing
    fake_proc(proc, "9", [other, database], "sqlite3")
    assert other_opener(database, proc) == "process 9 (sqlite3)"
    (proc / "9" / "comm").unlink()  # gone since
    assert other_opener(database, proc) == "process 9"
    assert other_opener(tmp_path / "missing.db", proc) is None


def in_use(database: Path, why: str) -> str:
    return re.escape(
        f"The database {database} is in use: {why}; stop it, then run the restore again."
    )


def test_a_hold_let_go_leaves_nothing_open_and_can_be_taken_again(tmp_path: Path) -> None:
    """The relay leader's lock is a ``flock``, which another open file of this same process
    does not get while one holds it; SQLite's locks go with the database file's last close."""
    database = tmp_path / "enforcement.db"
    database.write_bytes(b"")
    Path(f"{database}.leader").write_bytes(b"")
    hold = DatabaseHold(database)
    hold.take()
    with pytest.raises(InUse, match=in_use(database, "a serve or a worker leads the relay on it")):
        DatabaseHold(database).take()
    hold.release()
    hold.release()  # let go already: nothing to close
    assert files_open_here(database) == []
    assert files_open_here(Path(f"{database}.leader")) == []
    again = DatabaseHold(database)
    again.take()
    again.release()


def test_a_database_another_process_reads_is_held_by_its_lock_where_proc_shows_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another user's process is not listed under /proc for this one: SQLite's lock tells."""
    database = tmp_path / "enforcement.db"
    with sqlite3.connect(database) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE t (x)")
    conn.close()
    with another_process_with(database, "SELECT * FROM t"):
        monkeypatch.setattr(restore, "other_opener", lambda *_: None)
        with pytest.raises(InUse, match="another process has it open"):
            DatabaseHold(database).take()


# Another process tries, without waiting, to read-lock each byte given and then to read the
# database through SQLite; it prints what it got.
PROBE = """
import fcntl, os, sqlite3, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
for byte in map(int, sys.argv[2:]):
    try:
        fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB, 1, byte)
    except OSError:
        print(byte, "locked")
    else:
        fcntl.lockf(fd, fcntl.LOCK_UN, 1, byte)
        print(byte, "free")
try:
    sqlite3.connect(sys.argv[1], timeout=0).execute("SELECT * FROM t").fetchall()
except sqlite3.OperationalError as exc:
    print(exc)
"""


def test_a_hold_takes_sqlites_exclusive_lock_byte_for_byte(tmp_path: Path) -> None:
    """SQLite's pending byte and shared range (its unix VFS), write-locked as SQLite does for
    an exclusive lock: no other connection can begin to read, and no byte beside them is held."""
    database = tmp_path / "enforcement.db"
    with sqlite3.connect(database) as conn:
        conn.execute("CREATE TABLE t (x)")
    conn.close()
    pending = 0x40000000
    shared = range(pending + 2, pending + 2 + 510)
    probed = [pending - 1, pending, pending + 1, shared[0], shared[-1], shared[-1] + 1]
    hold = DatabaseHold(database)
    hold.take()
    try:
        seen = subprocess.run(
            [sys.executable, "-c", PROBE, str(database), *map(str, probed)],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout.splitlines()
    finally:
        hold.release()
    assert seen == [
        f"{pending - 1} free",
        f"{pending} locked",
        f"{pending + 1} free",
        f"{shared[0]} locked",
        f"{shared[-1]} locked",
        f"{shared[-1] + 1} free",
        "database is locked",
    ]


def test_a_hold_refused_for_another_opener_keeps_no_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = tmp_path / "enforcement.db"
    database.write_bytes(b"")
    Path(f"{database}.leader").write_bytes(b"")
    monkeypatch.setattr(restore, "other_opener", lambda *_: "process 9 (sqlite3)")
    with pytest.raises(InUse, match=in_use(database, "process 9 (sqlite3) has it open")):
        DatabaseHold(database).take()
    assert files_open_here(database) == []
    assert files_open_here(Path(f"{database}.leader")) == []


def test_a_database_that_cannot_be_opened_or_locked_is_a_restore_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not "in use": an error of the file itself, with the system's words, and nothing held."""
    directory = tmp_path / "enforcement.db"
    directory.mkdir()
    with pytest.raises(RestoreError, match=re.escape(f"Cannot open {directory}: Is a directory.")):
        DatabaseHold(directory).take()

    database = tmp_path / "other.db"
    database.write_bytes(b"")

    def no_locks(*_: object) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(restore.fcntl, "lockf", no_locks)
    with pytest.raises(
        RestoreError, match=re.escape(f"Cannot lock {database}: No locks available.")
    ):
        DatabaseHold(database).take()
    assert files_open_here(database) == []
