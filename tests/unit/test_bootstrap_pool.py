"""The pool options the composition root gives an engine: a SQLite file gets a pool with a
connection for every thread that may hold one (``tests/integration/test_sqlite_pool.py`` shows
that they are reused); other databases keep SQLAlchemy's defaults."""

from __future__ import annotations

from enforcement.bootstrap import engine_options
from enforcement.settings import Settings


def test_only_a_file_database_gets_the_pool_options() -> None:
    assert engine_options(Settings(database_url="sqlite:///x.db", worker_threads=8)) == {
        "pool_size": 24,
        "max_overflow": 40,
    }
    assert engine_options(Settings(database_url="sqlite://")) == {}
    assert engine_options(Settings(database_url="sqlite:///")) == {}
    assert engine_options(Settings(database_url="sqlite:///:memory:")) == {}
    shared = "sqlite:///file:shared?mode=memory&cache=shared&uri=true"  # a named memory database
    assert engine_options(Settings(database_url=shared)) == {}
    assert engine_options(Settings(database_url="postgresql+psycopg://u@h/db")) == {}
