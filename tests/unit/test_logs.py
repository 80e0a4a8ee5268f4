"""Structured logging: psycopg's pipeline-exit line after a handled error is debug, not warning."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from enforcement.logs import JsonFormatter, PipelineExitNoise, configure_logging


@pytest.fixture
def psycopg_records() -> Iterator[list[logging.LogRecord]]:
    root, psycopg = logging.getLogger(), logging.getLogger("psycopg")
    saved = (root.handlers[:], root.level, psycopg.filters[:], psycopg.level)
    configure_logging()
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    root.addHandler(Keep())
    yield seen
    root.handlers[:], root.level = saved[0], saved[1]
    psycopg.filters[:] = saved[2]
    psycopg.setLevel(saved[3])


def test_the_pipeline_exit_line_is_dropped_at_info_and_kept_as_debug(
    psycopg_records: list[logging.LogRecord],
) -> None:
    psycopg = logging.getLogger("psycopg")
    psycopg.warning("error ignored terminating %r: %s", "<Pipeline>", "duplicate key")
    psycopg.warning("connection pool is full")  # any other psycopg warning stays a warning
    assert [(r.levelname, r.getMessage()) for r in psycopg_records] == [
        ("WARNING", "connection pool is full")
    ]

    psycopg.setLevel(logging.DEBUG)
    psycopg.warning("error ignored terminating %r: %s", "<Pipeline>", "duplicate key")
    assert psycopg_records[-1].levelname == "DEBUG"
    assert sum(isinstance(f, PipelineExitNoise) for f in psycopg.filters) == 1


def test_a_log_line_stamps_its_time_as_the_contract_writes_times() -> None:
    record = logging.LogRecord("enforcement", logging.INFO, __file__, 1, "hello", None, None)
    record.created = 1_796_342_400.0  # a whole second: isoformat() would drop the microseconds
    line = json.loads(JsonFormatter().format(record))
    assert line["time"] == "2026-12-04T00:00:00.000000Z"
