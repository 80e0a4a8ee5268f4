"""The relay's retries while Redis or the database is away: spaced out, in full once, then one
line each (``enforcement.workers.retrying``)."""

from __future__ import annotations

import logging

import pytest
import sqlalchemy as sa

from enforcement.workers.relay import Relay
from enforcement.workers.retrying import (
    RETRY_MAX_SECONDS,
    log_failure,
    one_line,
    retry_delay,
    wait_to_retry,
)


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


def test_a_lasting_failure_is_logged_in_full_once_then_in_one_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = logging.getLogger("test.retrying")
    error = ConnectionRefusedError("connection refused")
    with caplog.at_level(logging.ERROR, logger="test.retrying"):
        for failures in (1, 2, 3):
            log_failure(log, "relay failed", error, failures, retry_delay(failures))
    first, second, third = caplog.records
    assert first.exc_info is not None and first.getMessage() == "relay failed; retrying in 1 s"
    assert second.exc_info is None and third.exc_info is None
    assert third.getMessage() == (
        "relay failed (3 times in a row): ConnectionRefusedError: connection refused; "
        "retrying in 4 s"
    )


class _Stop:
    """A stop event that records the waits and stops after ``limit`` of them."""

    def __init__(self, limit: int) -> None:
        self.waits: list[float] = []
        self.limit = limit

    def is_set(self) -> bool:
        return len(self.waits) >= self.limit

    def wait(self, seconds: float) -> bool:
        self.waits.append(seconds)
        return self.is_set()


def test_the_running_relay_backs_off_while_the_broker_stays_away() -> None:
    class Down:
        def read_all(self, after: int, limit: int) -> list[object]:
            raise ConnectionRefusedError("connection refused")

    relay = Relay(Down(), lambda message: None, ())  # type: ignore[arg-type]
    relay.position = lambda: 0  # type: ignore[method-assign]
    stop = _Stop(limit=7)
    relay.run(stop, error_seconds=1.0)  # type: ignore[arg-type]
    assert stop.waits == [1.0, 2.0, 4.0, 8.0, 15.0, 15.0, 15.0]


def test_a_wait_to_retry_ends_once_what_failed_answers_again_asking_every_so_often() -> None:
    failure = ConnectionRefusedError("connection refused")
    answers = iter([False, False, True])
    asked: list[BaseException] = []

    def answers_again(exc: BaseException) -> bool:
        asked.append(exc)
        return next(answers)

    stop = _Stop(limit=100)
    wait_to_retry(stop, 15.0, failure, answers_again, every=0.5)  # type: ignore[arg-type]
    assert stop.waits == [0.5, 0.5, 0.5]
    assert asked == [failure] * 3


def test_the_relay_retries_as_soon_as_what_failed_answers_again() -> None:
    error = ConnectionRefusedError("connection refused")

    class Down:
        def read_all(self, after: int, limit: int) -> list[object]:
            raise error

    relay = Relay(Down(), lambda message: None, ())  # type: ignore[arg-type]
    relay.position = lambda: 0  # type: ignore[method-assign]
    asked: list[BaseException] = []

    def answers_again(exc: BaseException) -> bool:
        asked.append(exc)
        return True

    stop = _Stop(limit=4)
    relay.run(stop, answers_again=answers_again, probe_seconds=0.25)  # type: ignore[arg-type]
    assert stop.waits == [0.25, 0.25, 0.25, 0.25]  # not 1, 2, 4, 8
    assert asked == [error] * 3  # the fourth wait was the stop


def test_a_probe_that_fails_counts_as_not_answering_yet_and_the_relay_goes_on() -> None:
    """The wait runs in the relay's (and the leader's start's) ``except`` block: a probe that
    raised out of it would end the relay's thread, and this process would relay no more."""
    error = ConnectionRefusedError("connection refused")
    asked: list[BaseException] = []

    def broken(exc: BaseException) -> bool:
        asked.append(exc)
        raise RuntimeError("the probe itself failed")

    stop = _Stop(limit=3)
    wait_to_retry(stop, 15.0, error, broken, every=0.5)  # type: ignore[arg-type]
    assert stop.waits == [0.5, 0.5, 0.5] and asked == [error] * 2

    class Down:
        def read_all(self, after: int, limit: int) -> list[object]:
            raise error

    relay = Relay(Down(), lambda message: None, ())  # type: ignore[arg-type]
    relay.position = lambda: 0  # type: ignore[method-assign]
    stop = _Stop(limit=4)
    relay.run(stop, answers_again=broken, probe_seconds=0.25)  # type: ignore[arg-type]
    assert len(stop.waits) == 4  # still retrying, not ended by the probe's failure
