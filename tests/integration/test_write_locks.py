"""What writers take (``events.write_locks``): on SQLite a ``write_connection`` transaction is a
writer from its first statement and holds the writer lock of its file, which every engine on
that file shares; a ``write_transaction`` commits its body, or rolls it back and raises."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa

from events.dialects import create_engine, write_connection, write_transaction
from events.write_locks import _sqlite_writer_lock


class _Failed(Exception):
    pass


def test_a_write_transaction_commits_its_body_or_rolls_it_back_and_raises(
    engine: sa.Engine,
) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE written (n integer)")
    with write_transaction(engine) as driver:
        driver.execute("INSERT INTO written VALUES (1)")
    with pytest.raises(_Failed), write_transaction(engine) as driver:
        driver.execute("INSERT INTO written VALUES (2)")
        raise _Failed()
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT n FROM written").scalars().all() == [1]


def _free_for_another_thread(lock: threading.RLock) -> bool:
    free: list[bool] = []

    def take() -> None:
        free.append(lock.acquire(blocking=False))
        if free[0]:
            lock.release()

    taker = threading.Thread(target=take)
    taker.start()
    taker.join(10)
    return free == [True]


def test_sqlite_writers_write_from_their_first_statement_under_the_files_lock(
    tmp_path: Path,
) -> None:
    path = tmp_path / "locks.db"
    engine, other_engine = (create_engine(f"sqlite:///{path}") for _ in range(2))
    # Another engine on the file queues on the same in-process lock.
    lock = _sqlite_writer_lock(other_engine)
    try:
        with write_connection(engine) as conn, conn.begin():
            conn.exec_driver_sql("SELECT 1").all()  # a read: a deferred BEGIN would not lock
            other = sqlite3.connect(path, timeout=0)
            try:
                with pytest.raises(sqlite3.OperationalError, match="locked"):
                    other.execute("BEGIN IMMEDIATE")
            finally:
                other.close()
            assert not _free_for_another_thread(lock)
        with write_transaction(engine):
            assert not _free_for_another_thread(lock)
        assert _free_for_another_thread(lock)
    finally:
        engine.dispose()
        other_engine.dispose()


def test_a_private_in_memory_database_has_a_writer_lock_of_its_own() -> None:
    engines = [create_engine("sqlite://") for _ in range(2)]
    try:
        with write_connection(engines[0]) as conn, conn.begin():
            assert _free_for_another_thread(_sqlite_writer_lock(engines[1]))
    finally:
        for engine in engines:
            engine.dispose()
