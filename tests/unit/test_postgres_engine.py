"""What ``events.create_engine`` gives a PostgreSQL engine, seen without a server: its pool, and
the parameters each connection is opened with (caught as the driver would get them)."""

from __future__ import annotations

from typing import Any, cast

import pytest
import sqlalchemy as sa
from sqlalchemy.pool import QueuePool

from events import create_engine
from events.dialects import POSTGRES_CONNECT_TIMEOUT_SECONDS

URL = "postgresql+psycopg://u@h/db"


class Caught(Exception):
    """Stops the connection before the driver is called."""


def connect_parameters(engine: sa.Engine) -> dict[str, Any]:
    """The keyword arguments ``engine`` would open a connection with."""
    seen: dict[str, Any] = {}

    @sa.event.listens_for(engine, "do_connect")
    def catch(dialect: Any, record: Any, cargs: Any, cparams: dict[str, Any]) -> None:
        seen.update(cparams)
        raise Caught

    with pytest.raises(Caught):
        engine.connect()
    engine.dispose()
    return seen


def test_a_postgresql_engine_keeps_10_connections_and_opens_up_to_20_more() -> None:
    """Unless the caller gives its own."""
    for options, expected in (({}, (10, 20)), ({"pool_size": 2, "max_overflow": 0}, (2, 0))):
        engine = create_engine(URL, **options)
        pool = cast(QueuePool, engine.pool)
        assert (pool.size(), pool._max_overflow) == expected
        engine.dispose()


def test_connecting_waits_the_callers_bound_else_the_usual_one() -> None:
    timeout = connect_parameters(create_engine(URL))["connect_timeout"]
    assert timeout == POSTGRES_CONNECT_TIMEOUT_SECONDS
    assert connect_parameters(create_engine(URL, connect_timeout=3))["connect_timeout"] == 3


def test_the_callers_connect_args_are_kept_beside_the_usual_ones() -> None:
    parameters = connect_parameters(
        create_engine(URL, connect_args={"application_name": "mine", "connect_timeout": 4})
    )
    assert (parameters["application_name"], parameters["connect_timeout"]) == ("mine", 4)
