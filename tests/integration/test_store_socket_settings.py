"""A PostgreSQL connection's socket is set to find a peer gone without a word (a failover or a
network cut that sends no reset) within about a minute, not the kernel's hours: keepalive
probes after 30 s of silence, and a write unacknowledged for 60 s fails
(``events.postgres_connections.POSTGRES_SOCKET_DEFAULTS``). Read back from the socket itself, as
the kernel holds them; what the database URL sets stands."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from events import create_engine

pytestmark = pytest.mark.postgres


def socket_settings(engine: sa.Engine) -> dict[str, int]:
    """The keepalive and user-timeout settings of one of ``engine``'s connections' socket."""
    with engine.connect() as conn:
        driver = conn.connection.dbapi_connection
        assert driver is not None
        fd = driver.fileno()
        sock = socket.socket(fileno=os.dup(fd))  # a duplicate: closing it leaves the connection
        try:
            return {
                "keepalive": sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                "idle": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                "interval": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
                "count": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
                "user_timeout_ms": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
            }
        finally:
            sock.close()


@pytest.fixture
def engines() -> Iterator[list[sa.Engine]]:
    """The engines a test makes, disposed of after it."""
    engines: list[sa.Engine] = []
    yield engines
    for engine in engines:
        engine.dispose()


def test_a_connection_finds_a_silent_peer_within_a_minute(
    pg_url: str, engines: list[sa.Engine]
) -> None:
    engines.append(create_engine(pg_url))
    assert socket_settings(engines[0]) == {
        "keepalive": 1,
        "idle": 30,
        "interval": 10,
        "count": 3,
        "user_timeout_ms": 60_000,
    }


def test_the_database_urls_own_socket_settings_stand(pg_url: str, engines: list[sa.Engine]) -> None:
    url = sa.make_url(pg_url).update_query_dict({"keepalives_idle": "7", "tcp_user_timeout": "0"})
    engines.append(create_engine(url.render_as_string(hide_password=False)))
    settings = socket_settings(engines[0])
    assert (settings["idle"], settings["user_timeout_ms"]) == (7, 0)
    assert (settings["interval"], settings["count"]) == (10, 3)  # the rest: the defaults
