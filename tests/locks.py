"""What a test waits for when it holds a PostgreSQL lock open to provoke an interleaving."""

from __future__ import annotations

import sqlalchemy as sa


def waiting_on_a_lock(engine: sa.Engine) -> bool:
    """Whether a session on ``engine``'s PostgreSQL database waits for a lock (a row, a
    transaction, an advisory lock) that another one holds."""
    with engine.connect() as conn:
        waiting = conn.exec_driver_sql(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock'"
        ).scalar_one()
    return bool(waiting)
