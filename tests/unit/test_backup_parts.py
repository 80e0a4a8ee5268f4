"""The pieces of ``enforcement backup`` that need no populated database: what a failed check
says, which files a backup must never replace, and what a copy that was not put in place
leaves behind (mutation testing, mt28)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from enforcement.backup import (
    BackupError,
    CopyCheck,
    check_copy,
    companions,
    copy_sqlite,
    remove_part,
)
from enforcement.cli_backup import _size
from enforcement.schema_revisions import release_revisions
from tests.unit.open_files import files_open_here


@pytest.mark.parametrize(
    ("check", "problems"),
    [
        (CopyCheck(["ok"], "head", True), []),
        (
            CopyCheck(["a", "b", "c"], "head", True),
            ["SQLite's integrity_check says a; b; c"],
        ),
        (
            CopyCheck(["a", "b", "c", "d"], "head", True),
            ["SQLite's integrity_check says a; b; c and 1 more"],
        ),
        (
            CopyCheck(["a", "b", "c", "d", "e"], None, False),
            [
                "SQLite's integrity_check says a; b; c and 2 more",
                "it has no schema revision",
            ],
        ),
        (
            CopyCheck(["ok"], "9999_new", False, unreadable="disk I/O error"),
            [
                "its schema revision 9999_new is not one this release knows",
                "its log could not be read (disk I/O error)",
            ],
        ),
        (
            CopyCheck(
                ["ok"],
                "head",
                True,
                broken=[
                    {"account_id": "acct_1", "broken_at_version": 4, "reason": "hash mismatch"},
                    {"account_id": "acct_2", "broken_at_version": 1, "reason": "gap"},
                ],
            ),
            ["2 account chain(s) are broken, the first acct_1 at version 4: hash mismatch"],
        ),
    ],
)
def test_each_failed_check_is_named(check: CopyCheck, problems: list[str]) -> None:
    assert check.problems == problems


def test_a_backup_never_replaces_the_database_or_a_file_sqlite_or_the_workers_keep_beside_it(
    tmp_path: Path,
) -> None:
    database = tmp_path / "enforcement.db"
    real = os.path.realpath(database)
    assert companions(database) == {
        real,
        f"{real}-wal",
        f"{real}-shm",
        f"{real}-journal",
        f"{real}.leader",
    }


def test_a_part_not_put_in_place_is_removed_with_the_files_sqlite_kept_beside_it(
    tmp_path: Path,
) -> None:
    part = tmp_path / ".b.db.1.part"
    for suffix in ("", "-journal", "-wal", "-shm"):
        Path(f"{part}{suffix}").write_bytes(b"x")
    (tmp_path / "b.db").write_bytes(b"kept")

    remove_part(part)
    remove_part(part)  # nothing left to remove: no error

    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.db"]


def test_a_copy_without_a_schema_revision_is_not_read_further(tmp_path: Path) -> None:
    """Its log is not read as if it had the schema: it has none to be sure of."""
    copy = tmp_path / "copy.db"
    with sqlite3.connect(copy) as conn:
        conn.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
    conn.close()
    check = check_copy(copy, show_progress=False)
    assert check == CopyCheck(["ok"], None, False, size=copy.stat().st_size)
    assert check.problems == ["it has no schema revision"]


def test_a_database_that_cannot_be_opened_is_neither_copied_nor_created(tmp_path: Path) -> None:
    missing, copy = tmp_path / "missing.db", tmp_path / "copy.db"
    with pytest.raises(
        BackupError, match=r"^The database .*missing\.db cannot be opened \(.+\)\.$"
    ):
        copy_sqlite(missing, copy)
    assert list(tmp_path.iterdir()) == []


def test_a_database_that_cannot_be_read_is_said_so_not_a_full_disk_nor_no_schema(
    tmp_path: Path,
) -> None:
    database = tmp_path / "enforcement.db"
    with sqlite3.connect(database) as conn:
        conn.execute("CREATE TABLE alembic_version (revision VARCHAR(32))")
    conn.close()
    with pytest.raises(BackupError) as raised:
        copy_sqlite(database, tmp_path / "copy.db")
    assert str(raised.value) == (
        f"The database {database} could not be copied (no such column: version_num)."
    )


def test_a_copy_whose_log_cannot_be_read_says_why(tmp_path: Path) -> None:
    """integrity_check passes and the revision is this release's, yet the log does not read."""
    copy, head = tmp_path / "copy.db", release_revisions()[0]
    with sqlite3.connect(copy) as conn:
        conn.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
        conn.execute("INSERT INTO alembic_version VALUES (?)", (head,))
    conn.close()
    check = check_copy(copy, show_progress=False)
    assert check == CopyCheck(
        ["ok"], head, True, unreadable="no such table: events", size=copy.stat().st_size
    )
    assert check.problems == ["its log could not be read (no such table: events)"]


def test_a_copy_without_a_progress_bar_is_whole(tmp_path: Path) -> None:
    database, copy = tmp_path / "enforcement.db", tmp_path / "copy.db"
    with sqlite3.connect(database) as conn:
        conn.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
        conn.execute("INSERT INTO alembic_version VALUES ('0001_first')")
    conn.close()
    assert copy_sqlite(database, copy) == "0001_first"
    with sqlite3.connect(copy) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [
            ("0001_first",)
        ]
    conn.close()


def test_a_copy_stopped_midway_leaves_neither_database_open(tmp_path: Path) -> None:
    """Closed, not left to the garbage collector: the exception held keeps the frame (and the
    read transaction on the database, were it open) alive."""
    database, copy = tmp_path / "enforcement.db", tmp_path / "copy.db"
    with sqlite3.connect(database) as conn:
        conn.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
        conn.execute("INSERT INTO alembic_version VALUES ('0001_first')")
        conn.execute("CREATE TABLE t (x)")
        conn.executemany("INSERT INTO t VALUES (?)", [(b"x" * 4000,)] * 8)
    conn.close()

    def stop(copied: int, total: int) -> None:
        raise RuntimeError("stopped")

    with pytest.raises(RuntimeError) as raised:
        copy_sqlite(database, copy, stop, pages_per_step=1)
    assert str(raised.value) == "stopped"
    assert files_open_here(database) == []
    assert files_open_here(copy) == []


@pytest.mark.parametrize(
    ("size", "said"),
    [
        (0, "0.0 KiB"),
        (1536, "1.5 KiB"),
        (2**20 - 1, "1,024.0 KiB"),
        (2**20, "1.0 MiB"),
        (3 * 2**29, "1,536.0 MiB"),
    ],
)
def test_the_size_of_a_copy_is_said_in_kib_below_one_mib_and_in_mib_from_it(
    size: int, said: str
) -> None:
    """``enforcement backup`` and ``restore`` end their summary with it (mt41)."""
    assert _size(size) == said
