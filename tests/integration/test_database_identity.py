"""``database_identity``: the word the workers keep in Redis beside the newest event they noted,
so that a log restored in the database's place is not taken for the one they knew
(``enforcement/workers/redis_watch.py``). It must change when another database takes the place."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import sqlalchemy as sa

from events import create_engine
from events.dialects import database_identity


def test_a_sqlite_file_is_named_by_device_and_inode_and_memory_by_one_word(
    tmp_path: Path,
) -> None:
    path = tmp_path / "enforcement.db"
    engine = create_engine(f"sqlite:///{path}")  # creates the file
    before = os.stat(path)
    assert database_identity(engine) == f"sqlite:{before.st_dev}:{before.st_ino}"

    shutil.copyfile(path, tmp_path / "backup.db")
    os.replace(tmp_path / "backup.db", path)  # a backup put in its place: another file

    assert database_identity(engine) == f"sqlite:{before.st_dev}:{os.stat(path).st_ino}"
    assert os.stat(path).st_ino != before.st_ino
    engine.dispose()
    assert database_identity(create_engine("sqlite://")) == "sqlite:memory"


@pytest.mark.postgres
def test_a_postgresql_database_is_named_by_its_oid(pg_url: str) -> None:
    engine = create_engine(pg_url)
    with engine.connect() as conn:
        oid = conn.execute(
            sa.text("SELECT oid FROM pg_database WHERE datname = :name"),
            {"name": sa.make_url(pg_url).database},
        ).scalar_one()

    assert database_identity(engine) == f"postgresql:{oid}"
    engine.dispose()
