"""What a driver error means (``events.database_errors``): when an SQLite I/O error is called
"disk full" (the disk has no block left for this process); a process without psycopg."""

from __future__ import annotations

import os
import sys

import pytest

from events.database_errors import no_space_left_for, unanswered

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
