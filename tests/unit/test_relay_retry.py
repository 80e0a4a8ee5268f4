"""The relay's retries while Redis or the database is away: spaced out, in full once, then one
line each (``enforcement.workers.retrying``)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
import sqlalchemy as sa

from enforcement.workers import retrying
from enforcement.workers.relay import Relay
from enforcement.workers.retrying import (
    RETRY_MAX_SECONDS,
    log_failure,
    one_line,
    retry_delay,
    wait_to_retry,
)
from tests.unit.test_relay import CHANNELS, Broker, MemoryStore, WaitsThenStop, notices


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
    # One retried at its next round, not after a delay of its own:
    with caplog.at_level(logging.ERROR, logger="test.retrying"):
        log_failure(log, "keeper failed", error, 2, None)
    assert caplog.records[-1].getMessage() == (
        "keeper failed (2 times in a row): ConnectionRefusedError: connection refused; "
        "trying again later"
    )


def test_the_running_relay_backs_off_while_the_broker_stays_away(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Down:
        def read_all(self, after: int, limit: int) -> list[object]:
            raise ConnectionRefusedError("connection refused")

    relay = Relay(Down(), lambda message: None, ())  # type: ignore[arg-type]
    relay.position = lambda: 0  # type: ignore[method-assign]
    stop = WaitsThenStop(limit=7)
    with caplog.at_level(logging.ERROR, logger="enforcement.relay"):
        relay.run(stop)  # type: ignore[arg-type]
    assert stop.waits == [1.0, 2.0, 4.0, 8.0, 15.0, 15.0, 15.0]
    assert {r.name for r in caplog.records} == {"enforcement.relay"}  # its own logger


def test_the_running_relay_catches_up_page_after_page_and_idles_only_once_caught_up() -> None:
    """Embedded mode (no ``answers_again``): a backlog goes out a full page after another, with
    no idle wait between them; the relay waits its idle poll only on a page short of full."""
    store = MemoryStore(notices(4))
    relay = Relay(store, Broker(store), CHANNELS, page_size=2)  # type: ignore[arg-type]
    stop = WaitsThenStop(limit=1)
    relay.run(stop)  # type: ignore[arg-type]
    assert (relay.position(), stop.waits) == (4, [0.05])


def test_a_wait_to_retry_ends_once_what_failed_answers_again_asking_every_so_often() -> None:
    failure = ConnectionRefusedError("connection refused")
    answers = iter([False, False, True])
    asked: list[BaseException] = []

    def answers_again(exc: BaseException) -> bool:
        asked.append(exc)
        return next(answers)

    stop = WaitsThenStop(limit=100)
    wait_to_retry(stop, 15.0, failure, answers_again, every=0.5)  # type: ignore[arg-type]
    assert stop.waits == [0.5, 0.5, 0.5]
    assert asked == [failure] * 3


class _Timeline:
    """A stop event with a clock of its own, put in ``retrying``'s place of ``time``: a wait
    moves the clock on by its seconds (nothing sets the event meanwhile), and the event is set
    once the clock reaches ``until``."""

    def __init__(self, until: float) -> None:
        self.now = 0.0
        self.until = until

    def monotonic(self) -> float:
        return self.now

    def is_set(self) -> bool:
        return self.now >= self.until

    def wait(self, seconds: float) -> bool:
        self.now += seconds
        return self.is_set()


def _attempts_of_a_failing_relay(
    monkeypatch: pytest.MonkeyPatch,
    until: float,
    answers_again: Callable[[float], bool],
    succeeds_at: tuple[float, ...] = (),
) -> list[float]:
    """When a relay attempted, on the clock of a ``_Timeline`` run to ``until``: each attempt
    fails (but those at ``succeeds_at``, which find nothing to relay); it retries after 1, 2,
    4 s, asking every 0.25 s meanwhile ``answers_again(now)``."""
    timeline = _Timeline(until)
    monkeypatch.setattr(retrying, "time", timeline)
    attempts: list[float] = []

    class Store:
        def read_all(self, after: int, limit: int) -> list[object]:
            attempts.append(timeline.now)
            if timeline.now in succeeds_at:
                return []
            raise ConnectionError("max number of clients reached")

    relay = Relay(Store(), lambda message: None, ())  # type: ignore[arg-type]
    relay.position = lambda: 0  # type: ignore[method-assign]
    relay.run(
        timeline,  # type: ignore[arg-type]
        idle_seconds=0.5,
        error_seconds=1.0,
        answers_again=lambda exc: answers_again(timeline.now),
        probe_seconds=0.25,
    )
    return attempts


def test_the_relay_retries_as_soon_as_what_failed_comes_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given Redis away until t=0.6, and the relay failing on after it (no client let in)
    attempts = _attempts_of_a_failing_relay(monkeypatch, 7.0, lambda now: now >= 0.6)
    # Then it retries at the first probe that finds Redis back, then backs off again
    assert attempts == [0.0, 0.75, 2.75, 6.75]


def test_the_relay_backs_off_while_what_failed_answers_but_the_relay_still_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Redis answers the watch's PING on its open connection but refuses the relay's new one:
    every probe answers, and the retries still back off (they came every 0.25 s)."""
    attempts = _attempts_of_a_failing_relay(monkeypatch, 7.5, lambda now: True)
    assert attempts == [0.0, 1.0, 3.0, 7.0]


def test_what_a_probe_saw_away_in_an_earlier_wait_ends_a_later_wait_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given Redis away until t=1.1: the first wait's probes see it away, and the retry at
    # t=1 fails just before it answers again
    attempts = _attempts_of_a_failing_relay(monkeypatch, 5.5, lambda now: now >= 1.1)
    # Then the next wait ends at its first probe, which finds Redis back
    assert attempts == [0.0, 1.0, 1.25, 5.25]


def test_an_attempt_that_succeeds_ends_the_run_of_failures(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given Redis away until t=1 (the first wait's probes see it away), the retry at t=1
    # succeeding, and the next attempt failing while Redis answers
    attempts = _attempts_of_a_failing_relay(
        monkeypatch, 2.6, lambda now: now >= 1.0, succeeds_at=(1.0,)
    )
    # Then that failure waits its whole backoff: what the probes saw before the success is past
    assert attempts == [0.0, 1.0, 1.5, 2.5]


def test_a_wait_to_retry_asks_until_its_delay_is_up_and_ends_with_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A delay that is no multiple of ``every``: the last wait is what is left of it, not a
    whole ``every`` more."""
    timeline = _Timeline(until=100.0)
    monkeypatch.setattr(retrying, "time", timeline)
    asked: list[float] = []

    def answers_again(exc: BaseException) -> bool:
        asked.append(timeline.now)
        return False

    failure = ConnectionError("refused")
    wait_to_retry(timeline, 1.2, failure, answers_again, every=0.5)  # type: ignore[arg-type]
    assert asked == [0.5, 1.0]
    assert timeline.now == pytest.approx(1.2)


def test_came_back_says_so_once_per_return_after_a_probe_saw_it_away_or_raised() -> None:
    answers: list[bool | Exception] = [True, False, True, True, RuntimeError("probe"), True]
    answers += [False, True]

    def answers_again(exc: BaseException) -> bool:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    came_back = retrying.CameBack(answers_again)
    failure = ConnectionError("refused")
    told = [came_back(failure) for _ in range(4)]
    with pytest.raises(RuntimeError):
        came_back(failure)
    told.append(came_back(failure))
    assert told == [False, False, True, False, True]
    assert not came_back(failure)  # away
    came_back.succeeded()
    assert not came_back(failure)  # back, but that run of failures ended

    # A probe answering None (a failure not of what it watches: the database's) saw nothing
    of_the_database = iter([None, True])
    database = retrying.CameBack(lambda exc: next(of_the_database))
    assert [database(failure), database(failure)] == [False, False]


def test_a_probe_that_fails_counts_as_not_answering_yet_and_the_relay_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The wait runs in the relay's (and the leader's start's) ``except`` block: a probe that
    raised out of it would end the relay's thread, and this process would relay no more."""
    error = ConnectionRefusedError("connection refused")
    asked: list[BaseException] = []

    def broken(exc: BaseException) -> bool:
        asked.append(exc)
        raise RuntimeError("the probe itself failed")

    stop = WaitsThenStop(limit=3)
    with caplog.at_level(logging.WARNING, logger=retrying.__name__):
        wait_to_retry(stop, 15.0, error, broken, every=0.5)  # type: ignore[arg-type]
    assert stop.waits == [0.5, 0.5, 0.5] and asked == [error] * 2
    # told once per wait, with the probe's traceback
    assert [(r.name, r.getMessage(), r.exc_info and r.exc_info[0]) for r in caplog.records] == [
        (retrying.__name__, "asking whether what failed answers again failed", RuntimeError)
    ]

    class Down:
        def read_all(self, after: int, limit: int) -> list[object]:
            raise error

    relay = Relay(Down(), lambda message: None, ())  # type: ignore[arg-type]
    relay.position = lambda: 0  # type: ignore[method-assign]
    stop = WaitsThenStop(limit=4)
    relay.run(stop, answers_again=broken, probe_seconds=0.25)  # type: ignore[arg-type]
    assert len(stop.waits) == 4  # still retrying, not ended by the probe's failure
