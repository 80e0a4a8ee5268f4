"""PostgreSQL refusing new connections ("too many connections": ``max_connections``, or here a
role's ``CONNECTION LIMIT``, which gives the same SQLSTATE 53300 without taking the shared test
server's connections from everyone else): the API answers 503 with the contract's error body,
writes nothing, and serves again as soon as connections are let in, without a restart."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
import sqlalchemy as sa
from silent_support import admin_client

from enforcement.migrations import upgrade
from enforcement.settings import Settings

pytestmark = pytest.mark.postgres

LIMIT = 2


@pytest.fixture
def limited_url(pg_url: str) -> Iterator[str]:
    """``pg_url`` migrated, as a role that may open ``LIMIT`` connections at a time."""
    upgrade(pg_url)
    role = f"enf_limited_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        for statement in (
            f"CREATE ROLE {role} LOGIN PASSWORD 'limited' NOSUPERUSER CONNECTION LIMIT {LIMIT}",
            f"GRANT USAGE ON SCHEMA public TO {role}",
            f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}",
            f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {role}",
        ):
            conn.exec_driver_sql(statement)
    try:
        url = sa.make_url(pg_url).set(username=role, password="limited")
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (role,),
            )
            conn.exec_driver_sql(f"DROP OWNED BY {role}")
            conn.exec_driver_sql(f"DROP ROLE {role}")
        admin.dispose()


def test_a_database_that_refuses_connections_is_a_503_until_it_takes_them(
    limited_url: str,
) -> None:
    libpq = sa.make_url(limited_url).set(drivername="postgresql").render_as_string(False)
    held = [psycopg.connect(libpq) for _ in range(LIMIT)]  # every connection the role may have
    report = {"account_id": "acct_1", "category": "spam"}
    with admin_client(Settings(database_url=limited_url)) as api:
        try:
            with pytest.raises(psycopg.OperationalError, match="too many connections"):
                psycopg.connect(libpq)

            refused = api.post("/v1/violations", json=report)
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"] == {
                "code": "dependency_unavailable",
                "message": "The database is unavailable; nothing was written.",
                "details": None,
            }
            assert api.get("/healthz").status_code == 503
        finally:
            for conn in held:
                conn.close()

        assert api.get("/healthz").status_code == 200
        assert api.post("/v1/violations", json=report).status_code == 201
        assert api.get("/v1/accounts/acct_1/events").json()["events"][0]["version"] == 1
