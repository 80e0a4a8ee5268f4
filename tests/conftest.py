"""Shared fixtures: a fresh migrated database on SQLite and on a real PostgreSQL per test.

PostgreSQL comes from ``ENFORCEMENT_TEST_PG_URL`` (``scripts/test`` starts the tests' own server,
without fsync, and sets it: ``scripts/test-services``). A test that needs PostgreSQL fails when it
is unreachable; it is never skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import settings as hypothesis_settings

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from enforcement.api.warning_filters import quiet_fastapi_alias_warning  # noqa: E402
from enforcement.migrations import upgrade  # noqa: E402
from events import EventStore, create_engine  # noqa: E402
from tests.cutting_proxy import CuttingProxy  # noqa: E402
from tests.pgbouncer import PgBouncer  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402

# No per-example deadline: Hypothesis' default (200 ms) fails a test as Flaky when one example
# was slow once (a loaded CI machine, a GC pause), whatever the code does. A property's time is
# bounded by its max_examples instead; timings belong to benchmarks/.
hypothesis_settings.register_profile("enforcement", deadline=None)
hypothesis_settings.load_profile("enforcement")


def pytest_sessionstart(session: pytest.Session) -> None:
    # ``create_app`` installs it too, but pytest puts back the filters it started with after
    # collection and after each test: installed here, it is in every list a thread may save
    # and put back, whichever test left it behind (enforcement/api/warning_filters.py).
    quiet_fastapi_alias_warning()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, None, None]:
    try:
        return (yield)
    finally:
        forget_fastapi_endpoints()


def forget_fastapi_endpoints() -> None:
    """Clear FastAPI's module-level caches of the endpoints it has classified.

    ``fastapi.dependencies.models`` keeps each endpoint and dependency function it has looked
    at in LRU caches of 4,096 entries, and an endpoint's closure holds its app: every app a test
    built stayed alive, about 1,700 objects each. One test process held 2.7 million objects by
    the suite's end, so each full garbage collection walked them all (and a test that counts
    live objects took 45 s instead of 2). A cleared cache is only filled again."""
    models = sys.modules.get("fastapi.dependencies.models")
    if models is None:  # no test in this process has imported FastAPI yet
        return
    for value in vars(models).values():
        clear = getattr(value, "cache_clear", None)
        if callable(clear):
            clear()


DEFAULT_PG_ADMIN_URL = "postgresql+psycopg://enforcement:enforcement@127.0.0.1:5432/postgres"


def pg_admin_url() -> str:
    return os.environ.get("ENFORCEMENT_TEST_PG_URL", DEFAULT_PG_ADMIN_URL)


def create_pg_database(template: str | None = None) -> str:
    """Create a PostgreSQL database, empty or a copy of the database ``template``, and return
    its URL."""
    admin = sa.make_url(pg_admin_url())
    name = f"enf_test_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        copy = "" if template is None else f' TEMPLATE "{template}"'
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"{copy}')
    engine.dispose()
    return admin.set(database=name).render_as_string(hide_password=False)


def drop_pg_database(url: str) -> None:
    admin = sa.make_url(pg_admin_url())
    name = sa.make_url(url).database
    engine = sa.create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    engine.dispose()


def libpq(url: str) -> tuple[str, dict[str, str]]:
    """``ENFORCEMENT_DATABASE_URL`` as the PostgreSQL tools take it (``postgresql://``, no
    password in it) and the environment that gives them the password (``PGPASSWORD``)."""
    parsed = sa.make_url(url)
    plain = parsed.set(drivername="postgresql", password=None).render_as_string(False)
    return plain, {**os.environ, "PGPASSWORD": parsed.password or ""}


def pg_dump(url: str, dump: Path) -> Path:
    """Dump the database at ``url`` to ``dump`` as docs/operations.md does it."""
    source, env = libpq(url)
    subprocess.run(
        ["pg_dump", "--format=custom", f"--file={dump}", source], env=env, check=True, timeout=120
    )
    return dump


def pg_restore(dump: Path, url: str) -> None:
    """Restore ``dump`` into the (empty) database at ``url`` as docs/operations.md does it."""
    target, env = libpq(url)
    options = ["--no-owner", "--exit-on-error", "--single-transaction", f"--dbname={target}"]
    subprocess.run(["pg_restore", *options, str(dump)], env=env, check=True, timeout=120)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """An empty database on the PostgreSQL test server (not migrated)."""
    url = create_pg_database()
    yield url
    drop_pg_database(url)


@pytest.fixture
def pgbouncer() -> Iterator[PgBouncer]:
    """A real PgBouncer in front of the PostgreSQL test server, in transaction pooling mode with
    one server connection per database: its clients share that server session
    (``pgbouncer.url(pg_url)``). Fails when pgbouncer is not installed."""
    with PgBouncer(pg_admin_url()) as pooler:
        yield pooler


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """An empty SQLite file (not migrated)."""
    return f"sqlite:///{tmp_path / 'enforcement.db'}"


class MigratedTemplates:
    """One database per backend migrated to head, made once per test process, which each
    test's fresh database copies: a file copy or a ``CREATE DATABASE … TEMPLATE`` instead of a
    run of the migrations (0.1 to 0.2 s a test). The migrations themselves are tested on empty
    databases (``tests/integration/test_migrations.py``)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.postgres_template: str | None = None  # its URL

    def sqlite(self, target: Path) -> str:
        template = self.directory / "migrated.db"
        if not template.exists():
            upgrade(f"sqlite:///{template}")  # closed after: no write-ahead log beside it
        shutil.copyfile(template, target)
        return f"sqlite:///{target}"

    def postgres(self) -> str:
        if self.postgres_template is None:
            self.postgres_template = create_pg_database()
            # Its engine disposed after: no session left that would refuse the copies.
            upgrade(self.postgres_template)
        return create_pg_database(template=sa.make_url(self.postgres_template).database)

    def close(self) -> None:
        if self.postgres_template is not None:
            drop_pg_database(self.postgres_template)


@pytest.fixture(scope="session")
def migrated_templates(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MigratedTemplates]:
    templates = MigratedTemplates(tmp_path_factory.mktemp("migrated"))
    yield templates
    templates.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(
    request: pytest.FixtureRequest, tmp_path: Path, migrated_templates: MigratedTemplates
) -> Iterator[str]:
    """A fresh, migrated database: every store test runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        yield migrated_templates.sqlite(tmp_path / "enforcement.db")
    else:
        url = migrated_templates.postgres()
        yield url
        drop_pg_database(url)


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    eng = create_engine(database_url)
    yield eng
    eng.dispose()


@pytest.fixture
def store(engine: sa.Engine) -> EventStore:
    return EventStore(engine)


@contextmanager
def store_on(
    url: str, engine_options: dict[str, Any] | None = None, **store_options: Any
) -> Iterator[EventStore]:
    """A store on the migrated database ``url`` (``engine_options`` for ``create_engine``,
    ``store_options`` for ``EventStore``); its engine disposed after."""
    engine = create_engine(url, **(engine_options or {}))
    try:
        yield EventStore(engine, **store_options)
    finally:
        engine.dispose()


@contextmanager
def migrated_store(
    url: str, engine_options: dict[str, Any] | None = None, **store_options: Any
) -> Iterator[EventStore]:
    """``store_on`` the database ``url``, migrated first."""
    upgrade(url)
    with store_on(url, engine_options, **store_options) as store:
        yield store


@pytest.fixture
def pg_store(migrated_templates: MigratedTemplates) -> Iterator[EventStore]:
    """A store on a fresh, migrated PostgreSQL database, for what only PostgreSQL has."""
    url = migrated_templates.postgres()
    with store_on(url) as store:
        yield store
    drop_pg_database(url)


@pytest.fixture
def sqlite_store(migrated_templates: MigratedTemplates, tmp_path: Path) -> Iterator[EventStore]:
    """A store on a fresh, migrated SQLite file, for what only SQLite has."""
    with store_on(migrated_templates.sqlite(tmp_path / "enforcement.db")) as store:
        yield store


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real ``redis-server`` for the session (gate and workers suites)."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """An empty Redis (started again if an earlier test left it stopped, and after the test)."""
    redis_server.start()
    client = redis_server.client()
    client.flushall()
    client.close()
    yield redis_server.url
    redis_server.start()


@pytest.fixture
def redis_proxy(redis_url: str) -> Iterator[CuttingProxy]:
    """A ``CuttingProxy`` in front of the empty Redis of ``redis_url`` (``redis_proxy.url``),
    to make it silent; it forwards again before it closes, so that what still waits ends."""
    with CuttingProxy(redis_url) as proxy:
        yield proxy
        proxy.resume()
