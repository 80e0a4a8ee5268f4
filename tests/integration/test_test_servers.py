"""The servers the tests start come up, and are the ones answering, even when another process
took the port ``free_port`` found (the suite runs in two processes: between ``free_port``'s look
and the server's start, the other one may take that port)."""

from __future__ import annotations

import smtplib
import socket
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import httpx
import pytest
import sqlalchemy as sa

import tests.e2e.harness
import tests.pgbouncer
import tests.processes
import tests.redis_server
import tests.workers.system
from tests.conftest import pg_admin_url
from tests.e2e.harness import start_server
from tests.pgbouncer import PgBouncer
from tests.redis_server import RedisServer
from tests.workers.system import SmtpSink


@pytest.fixture
def taken() -> Iterator[int]:
    """A port another process listens on (it accepts connections, and answers nothing)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        yield listener.getsockname()[1]


def first_ports(monkeypatch: pytest.MonkeyPatch, module: ModuleType, *ports: int) -> None:
    """``module``'s ``free_port`` gives ``ports`` first (one taken after the look), then ports
    that are free."""
    given = iter(ports)
    monkeypatch.setattr(
        module,
        "free_port",
        lambda: next(given, None) or tests.processes.free_port(),
        raising=False,  # a starter that asks free_port for no port has none
    )


def test_redis_server_starts_on_another_port(monkeypatch: pytest.MonkeyPatch, taken: int) -> None:
    first_ports(monkeypatch, tests.redis_server, taken)
    with RedisServer() as server:
        assert server.port != taken
        client = server.client()
        assert client.info("server")["process_id"] == server.pid
        client.close()

        server.restart()  # on the same port: its clients know it
        client = server.client()
        assert client.info("server")["process_id"] == server.pid
        client.close()


def test_a_redis_cluster_starts_when_its_bus_port_was_taken(
    monkeypatch: pytest.MonkeyPatch, taken: int
) -> None:
    first_ports(monkeypatch, tests.redis_server, tests.processes.free_port(), taken)
    with RedisServer(cluster=True) as server:
        client = server.client()
        assert b"cluster_state:ok" in client.execute_command("CLUSTER", "INFO")
        client.close()


@pytest.mark.postgres
def test_pgbouncer_starts_on_another_port(monkeypatch: pytest.MonkeyPatch, taken: int) -> None:
    first_ports(monkeypatch, tests.pgbouncer, taken)
    with PgBouncer(pg_admin_url()) as pooler:
        assert pooler.port != taken
        engine = sa.create_engine(pooler.url(pg_admin_url()))
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT 1").scalar() == 1
        engine.dispose()


def test_the_smtp_sink_starts_on_another_port(monkeypatch: pytest.MonkeyPatch, taken: int) -> None:
    first_ports(monkeypatch, tests.workers.system, taken)
    sink = SmtpSink()
    try:
        assert sink.port != taken
        with smtplib.SMTP("127.0.0.1", sink.port, timeout=10) as smtp:
            assert smtp.noop()[0] == 250
    finally:
        sink.close()


def test_serve_starts_on_another_port(
    monkeypatch: pytest.MonkeyPatch, taken: int, tmp_path: Path
) -> None:
    first_ports(monkeypatch, tests.e2e.harness, taken)
    running = start_server(f"sqlite:///{tmp_path / 'enforcement.db'}", tmp_path, "sqlite")
    try:
        server = next(running)
        assert httpx.URL(server.base_url).port != taken
        answer = server.client("operator").get("/v1/accounts/acct_1/standing")
        assert answer.status_code == 200, answer.text
    finally:
        running.close()
