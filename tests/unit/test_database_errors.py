"""What a driver error means (``events.database_errors``): when an SQLite I/O error is called
"disk full" (the disk has no block left for this process); PostgreSQL's ``disk_full``; a process
without psycopg."""

from __future__ import annotations

import os
import sqlite3
import sys
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

from events.database_errors import no_space_left_for, storage_full, unanswered

ROOT, USER = 0, 1000


def statvfs(*, free: int, available: int) -> os.statvfs_result:
    # (bsize, frsize, blocks, bfree, bavail, files, ffree, favail, flag, namemax)
    return os.statvfs_result((4096, 4096, 1000, free, available, 100, 50, 50, 0, 255))


def test_only_reserved_blocks_left_is_full_for_a_user_not_for_root() -> None:
    reserved_only = statvfs(free=50, available=0)
    assert no_space_left_for(reserved_only, USER)
    assert not no_space_left_for(reserved_only, ROOT)


def test_no_block_at_all_is_full_for_root_too() -> None:
    assert no_space_left_for(statvfs(free=0, available=0), ROOT)
    assert no_space_left_for(statvfs(free=0, available=0), USER)


def test_blocks_anyone_may_use_are_room_for_both() -> None:
    room = statvfs(free=60, available=10)
    assert not no_space_left_for(room, USER)
    assert not no_space_left_for(room, ROOT)


def test_no_error_is_postgresql_unanswered_in_a_process_that_never_loaded_psycopg(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A SQLite-only process asks too (``silent_database``): the answer is no, not an error."""
    monkeypatch.delitem(sys.modules, "psycopg", raising=False)
    assert unanswered(TimeoutError("a SQLite busy timeout")) is None


def test_postgresql_disk_full_is_storage_full_another_refusal_is_not() -> None:
    """SQLSTATE 53100 (``disk_full``) under SQLAlchemy's wrapper or bare; a cancelled statement
    (57014) under the same wrapper is not a full disk."""
    disk_full = psycopg.errors.DiskFull("could not extend file: No space left on device")
    assert storage_full(sa.exc.OperationalError("INSERT", {}, disk_full))
    assert storage_full(disk_full)
    cancelled = psycopg.errors.QueryCanceled("canceling statement due to statement timeout")
    assert not storage_full(sa.exc.OperationalError("INSERT", {}, cancelled))


def test_only_a_timeout_is_postgresql_unanswered_under_sqlalchemy_s_wrapper_or_not() -> None:
    """The driver's connect timeout is found under SQLAlchemy's wrapper (its ``orig``); an error
    the server answered with is no silence (a batch's other reports are still sent)."""
    timeout = psycopg.errors.ConnectionTimeout("connection timeout expired")
    assert unanswered(sa.exc.OperationalError("connect", {}, timeout)) is timeout
    assert unanswered(timeout) is timeout
    refused = psycopg.errors.DiskFull("could not extend file: No space left on device")
    assert unanswered(sa.exc.OperationalError("INSERT", {}, refused)) is None


def test_an_sqlite_io_error_where_the_directory_cannot_be_read_is_no_full_disk(
    tmp_path: Path,
) -> None:
    """Its free space unknown (``statvfs`` fails: the directory is gone), an I/O error is not
    called "disk full", nor is the question an error of its own."""
    io_error = sqlite3.OperationalError("disk I/O error")
    io_error.sqlite_errorcode = sqlite3.SQLITE_IOERR
    assert not storage_full(io_error, str(tmp_path / "gone" / "events.db"))
