"""The relay's retries while Redis or the database is away: spaced out, one line each."""

from __future__ import annotations

import sqlalchemy as sa

from enforcement.workers.runtime import RETRY_MAX_SECONDS, one_line, retry_delay


def test_retries_back_off_to_a_ceiling() -> None:
    delays = [retry_delay(n) for n in range(1, 9)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 15.0, 15.0, 15.0, 15.0]
    assert retry_delay(10_000) == RETRY_MAX_SECONDS


def test_a_failure_is_told_in_one_line_naming_the_driver_error() -> None:
    driver = ConnectionRefusedError("connection refused\nis the server running?")
    wrapped = sa.exc.OperationalError("SELECT 1", {}, driver)
    assert one_line(wrapped) == "ConnectionRefusedError: connection refused"
    assert one_line(ValueError("")) == "ValueError"
    assert len(one_line(RuntimeError("x" * 1000))) == len("RuntimeError: ") + 300
