"""Pieces the benchmarks share: the PostgreSQL server they use by default (and their
``--pg-url`` option), a temporary database on it, and the load average."""

from __future__ import annotations

import argparse
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa

# The Debian cluster (``pg_ctlcluster 15 main start``), fsync on: the server the benchmarks
# measure on by default, not the tests' own, which runs without fsync.
DEFAULT_PG_URL = "postgresql+psycopg://enforcement:enforcement@127.0.0.1:5432/postgres"


@contextmanager
def pg_database(admin_url: str, prefix: str) -> Iterator[str]:
    """The URL of a new, empty database named ``<prefix>_<random>`` on the server of
    ``admin_url`` (an account that may CREATE DATABASE), dropped on exit."""
    admin = sa.make_url(admin_url)
    if admin.get_driver_name() in ("", "psycopg2"):
        admin = admin.set(drivername="postgresql+psycopg")
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    # A connection each time: the server may have restarted meanwhile (the soak crashes its own).
    engine = sa.create_engine(admin, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        try:
            yield admin.set(database=name).render_as_string(hide_password=False)
        finally:
            with engine.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        engine.dispose()


def load_average(all_three: bool = False) -> str:
    """The 1-minute load average (or the 1, 5 and 15 minute ones), "n/a" where unknown."""
    try:
        loads = os.getloadavg()
    except OSError:
        return "n/a"
    return " ".join(f"{x:.2f}" for x in loads) if all_three else f"{loads[0]:.2f}"


def add_pg_url_argument(parser: argparse.ArgumentParser) -> None:
    """``--pg-url``: the admin URL of the PostgreSQL server where a benchmark creates and drops
    its databases (default ``$BENCH_PG_URL``, else ``DEFAULT_PG_URL``)."""
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("BENCH_PG_URL", DEFAULT_PG_URL),
        help="admin URL of a PostgreSQL server where databases may be created and dropped "
        "(default $BENCH_PG_URL or %(default)s: the Debian cluster, fsync on; not the tests' "
        "own server, which runs without fsync)",
    )
