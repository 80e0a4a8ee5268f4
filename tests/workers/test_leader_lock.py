"""The relay's leader lock on SQLite: a file lock beside the database, one holder at a time."""

from __future__ import annotations

from pathlib import Path

from enforcement.bootstrap import bootstrap
from enforcement.workers.runtime import LeaderLock
from tests.workers.system import fast_settings


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
