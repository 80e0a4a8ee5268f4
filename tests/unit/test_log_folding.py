"""Folding repeated log records: the first in full, a line a minute, the end told; another
failure (another message, another exception type) is never hidden behind one that repeats."""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterator
from types import FrameType

import pytest

from enforcement.log_folding import FoldRepeats, Repeats
from enforcement.workers.runtime import run_every

LOGGER = "tests.log_folding"


@pytest.fixture
def clock() -> list[float]:
    """Monotonic seconds: ``clock[0]``, moved by the test."""
    return [1000.0]


@pytest.fixture
def folding(clock: list[float]) -> Iterator[FoldRepeats]:
    fold = FoldRepeats(every_s=60.0, stopped_after_s=5.0, clock=lambda: clock[0])
    fold.add_to([LOGGER])
    yield fold
    fold.remove()


@pytest.fixture
def log(folding: FoldRepeats, caplog: pytest.LogCaptureFixture) -> logging.Logger:
    """The folded logger, its records in ``caplog``."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    return logging.getLogger(LOGGER)


def fail(log: logging.Logger, exc: Exception, template: str = "fetching %s failed") -> None:
    try:
        raise exc
    except Exception:
        log.exception(template, "the queue")


def test_repeats_say_the_first_then_one_a_period_with_the_count_folded() -> None:
    now = [0.0]
    repeats = Repeats(every_s=60.0, clock=lambda: now[0])
    said = []
    for second in range(0, 150, 3):
        now[0] = float(second)
        occurrence = repeats.occurrence()
        said.append((second, None if occurrence is None else occurrence.folded))
    assert [(s, n) for s, n in said if n is not None] == [(0, 0), (60, 19), (120, 19)]
    assert repeats.total == 50 and repeats.lasted() == 147.0


def test_a_repeated_failure_is_logged_once_in_full_a_line_a_minute_and_its_end_once(
    folding: FoldRepeats, clock: list[float], log: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a failure that repeats every 3 s for 90 s
    for _ in range(30):
        fail(log, ConnectionError("refused"))
        folding.look()  # (not stopped: it comes again within 1.5 times its gap)
        clock[0] += 3
    # Then it is logged once with its traceback and a word that repeats are folded, and once
    # a minute later in one line, with how long it lasted and how many it folded
    first, reminder = caplog.records
    assert first.getMessage() == (
        "fetching the queue failed (repeats of this are folded: one line a minute at most)"
    )
    assert first.exc_info is not None
    assert reminder.getMessage() == (
        "fetching the queue failed (still repeating after 60 s; 19 repeats folded since the "
        "last such line)"
    )
    assert reminder.exc_info is None

    # When it stops repeating, one line says so, with how many times it came
    clock[0] += 5
    folding.look()
    [end] = caplog.records[2:]
    assert end.levelno == logging.WARNING
    assert end.getMessage() == (
        "stopped repeating after 87 s (30 times in all, ConnectionError; the first: "
        "fetching the queue failed)"
    )
    # and it is a first again when it comes back
    fail(log, ConnectionError("refused"))
    assert len(caplog.records) == 4 and caplog.records[3].exc_info is not None


def test_another_exception_or_message_on_the_same_logger_is_not_hidden(
    log: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    for _ in range(5):
        fail(log, ConnectionError("refused"))
        fail(log, TimeoutError("no answer"))
        fail(log, ConnectionError("refused"), "acknowledging %s failed")
    assert [
        (r.getMessage().split(" (")[0], type(r.exc_info[1]).__name__)
        for r in caplog.records
        if r.exc_info
    ] == [
        ("fetching the queue failed", "ConnectionError"),
        ("fetching the queue failed", "TimeoutError"),
        ("acknowledging the queue failed", "ConnectionError"),
    ]


def test_a_periodic_job_that_keeps_failing_is_logged_once_and_its_recovery_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="enforcement.workers")
    stop = threading.Event()
    runs = [0]

    def sweep() -> None:
        runs[0] += 1
        if runs[0] <= 10:
            raise ConnectionError("the database is away")
        stop.set()

    # When the deadline sweep fails ten times in a row and then succeeds
    run_every(stop, 0.001, sweep, "deadline sweep")

    # Then the first failure is logged in full, the repeats folded, the recovery told
    messages = [(r.levelname, r.getMessage(), r.exc_info is not None) for r in caplog.records]
    assert messages == [
        (
            "ERROR",
            "deadline sweep failed; it runs again every 0.001 s "
            "(repeats: one line a minute at most)",
            True,
        ),
        ("INFO", "deadline sweep works again (it failed 10 times in a row)", False),
    ]


def test_the_first_of_two_simultaneous_failures_keeps_its_traceback(
    log: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a failure whose first occurrence was just counted when another worker thread's
    # repeat of it is counted (the interleaving is forced: a trace on this thread runs the other
    # thread's log call at the filter's first line after it counted this one)
    filter_code = FoldRepeats.filter.__code__
    state = {"counted": False, "done": False}

    def other_thread() -> None:
        fail(log, ConnectionError("refused"))

    def in_filter(frame: FrameType, event: str, arg: object) -> object:
        if event == "line" and state["counted"] and not state["done"]:
            state["done"] = True
            thread = threading.Thread(target=other_thread)
            thread.start()
            thread.join()
        return in_filter

    def counting(frame: FrameType, event: str, arg: object) -> object:
        if event == "return":
            state["counted"] = True
        return None

    def tracer(frame: FrameType, event: str, arg: object) -> object:
        if event != "call":
            return None
        if frame.f_code is filter_code:
            return in_filter
        called_by_filter = frame.f_back is not None and frame.f_back.f_code is filter_code
        if called_by_filter and frame.f_code.co_name in {"occurred", "occurrence"}:
            return counting  # the count of this occurrence (Repeats)
        return None

    def this_thread() -> None:
        sys.settrace(tracer)
        try:
            fail(log, ConnectionError("refused"))
        finally:
            sys.settrace(None)

    thread = threading.Thread(target=this_thread)
    thread.start()
    thread.join()

    # Then the first is said with its traceback, the other folded
    assert state["done"]
    [first] = caplog.records
    assert first.exc_info is not None, first.getMessage()
    assert "repeats of this are folded" in first.getMessage()


def test_the_same_exception_raised_elsewhere_is_not_hidden(
    log: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    # Given two actors failing with one exception type for different causes, each again and
    # again, logged by one logger with one template (Dramatiq's "Failed to process message %s
    # with unhandled exception.")
    def expire() -> None:
        raise KeyError("remediation")

    def apply_gate() -> None:
        raise KeyError("standing")

    for _ in range(3):
        for actor in (expire, apply_gate):
            try:
                actor()
            except KeyError:
                log.exception("Failed to process message %s with unhandled exception.", actor)

    # Then each cause's traceback is logged once
    assert [r.exc_info[1].args for r in caplog.records if r.exc_info] == [
        ("remediation",),
        ("standing",),
    ]


def test_a_record_without_an_exception_is_folded_too(
    log: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    for _ in range(3):
        log.warning("Consumer encountered a connection error")
    assert [r.getMessage() for r in caplog.records] == [
        "Consumer encountered a connection error"
        " (repeats of this are folded: one line a minute at most)"
    ]
