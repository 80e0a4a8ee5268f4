"""The pool options the composition root gives an engine: a SQLite file gets a pool with a
connection for every thread that may hold one (``tests/integration/test_sqlite_pool.py`` shows
that they are reused); other databases keep SQLAlchemy's defaults."""

from __future__ import annotations

from typing import cast

from sqlalchemy.pool import QueuePool

from enforcement.bootstrap import engine_options
from enforcement.settings import Settings
from events import create_engine


def test_only_a_file_database_gets_the_pool_options() -> None:
    assert engine_options(Settings(database_url="sqlite:///x.db", worker_threads=8)) == {
        "pool_size": 24,
        "max_overflow": 40,
    }
    assert engine_options(Settings(database_url="sqlite://")) == {}
    assert engine_options(Settings(database_url="sqlite:///:memory:")) == {}
    assert engine_options(Settings(database_url="postgresql+psycopg://u@h/db")) == {}


def test_a_postgresql_engine_keeps_10_connections_and_opens_up_to_20_more() -> None:
    """``events.create_engine``'s pool on PostgreSQL (made without connecting), unless the
    caller gives its own."""
    for options, expected in (({}, (10, 20)), ({"pool_size": 2, "max_overflow": 0}, (2, 0))):
        engine = create_engine("postgresql+psycopg://u@h/db", **options)
        pool = cast(QueuePool, engine.pool)
        assert (pool.size(), pool._max_overflow) == expected
        engine.dispose()
