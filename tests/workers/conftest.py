"""Fixtures for the workers suite: a real Redis, a real SMTP server, a real webhook receiver.

``redis-server`` is started once for the session (``tests/redis_server.py``) and emptied before
each test that uses it; a test that stopped it gets it started again. The database fixtures come
from ``tests/conftest.py``: ``sqlite_db`` here is a migrated SQLite file, ``database_url`` there
is parametrised over SQLite and PostgreSQL. Nothing is skipped: a missing server fails the test.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from enforcement.bootstrap import Container, bootstrap  # noqa: E402
from enforcement.settings import Settings  # noqa: E402
from tests.conftest import MigratedTemplates  # noqa: E402
from tests.pki import Pki, make_pki  # noqa: E402
from tests.workers.system import Receiver, SmtpSink  # noqa: E402


@pytest.fixture
def sqlite_db(tmp_path: Path, migrated_templates: MigratedTemplates) -> str:
    """A migrated SQLite file."""
    return migrated_templates.sqlite(tmp_path / "enforcement.db")


@pytest.fixture(params=["embedded", pytest.param("redis", marks=pytest.mark.redis)])
def broker_url(request: pytest.FixtureRequest) -> str | None:
    """``None`` for the embedded (in-memory) broker, else an empty Redis's URL."""
    if request.param == "embedded":
        return None
    return str(request.getfixturevalue("redis_url"))


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA the TLS tests' servers have their certificate from, and another (``tests/pki.py``)."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def smtp() -> Iterator[SmtpSink]:
    sink = SmtpSink()
    yield sink
    sink.close()


@pytest.fixture
def poster(settings: Settings) -> Iterator[Container]:
    """The recording side (what ``serve`` does) on the database of the module's ``settings``,
    without a broker."""
    container = bootstrap(replace(settings, redis_url=None))
    yield container
    container.close()
