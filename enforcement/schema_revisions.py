"""This release's schema revisions, and a database's, read without Alembic.

The checks made at every start (``serve``, ``worker``), by a command that meets a missing table
and by a backup's check only compare revisions; importing Alembic to do so cost about 0.14 s of
CPU, a tenth of ``serve``'s start. ``REVISIONS`` lists the ids of ``alembic/versions/`` in order;
a test holds it to Alembic's own reading of those files (``migrations.alembic_revisions``).
"""

from __future__ import annotations

import sqlalchemy as sa

REVISIONS: tuple[str, ...] = (
    "0001_event_log",
    "0002_read_models",
    "0003_standing_records",
    "0004_contact_channel_since",
    "0005_policy_activations",
    "0006_contacts_updated_at",
)
VERSION_TABLE = "alembic_version"  # Alembic's default, which alembic/env.py keeps


def release_revisions() -> tuple[str, set[str]]:
    """This release's schema: the revision ``upgrade`` brings a database to, and every
    revision of its migrations."""
    return REVISIONS[-1], set(REVISIONS)


def current_revision(database_url: str, connect_timeout: int | None = None) -> str | None:
    """The database's schema revision (None: no schema), as Alembic records it. ``connect_timeout``
    (seconds, on PostgreSQL) bounds the wait for a server that accepts connections but does not
    answer."""
    from events.dialects import create_engine

    engine = create_engine(database_url, connect_timeout=connect_timeout)
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table(VERSION_TABLE):
                return None
            rows = conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).all()
    finally:
        engine.dispose()
    if len(rows) > 1:  # Alembic's branches, which these migrations never make
        raise ValueError(f"{VERSION_TABLE} holds {len(rows)} revisions, where one was expected")
    return str(rows[0][0]) if rows else None
