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
from enforcement.workers import runtime
from enforcement.workers.runtime import run_every

LOGGER = "tests.log_folding"


@pytest.fixture
def clock() -> list[float]:
    """Monotonic seconds: ``clock[0]``, moved by the test."""
    return [1000.0]


@pytest.fixture
def folding(clock: list[float]) -> Iterator[FoldRepeats]:
    """The defaults: a line a minute, a failure stopped 5 s after its last repeat at least."""
    fold = FoldRepeats(clock=lambda: clock[0])
    fold.add_to([LOGGER])
    yield fold
    fold.remove()


@pytest.fixture
def by_hand(clock: list[float], caplog: pytest.LogCaptureFixture) -> Iterator[FoldRepeats]:
    """The folding with its defaults on the logger, looked for by the test alone (no thread
    looks while the test moves the clock)."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    fold = FoldRepeats(clock=lambda: clock[0])
    logging.getLogger(LOGGER).addFilter(fold)
    yield fold
    logging.getLogger(LOGGER).removeFilter(fold)


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


def test_a_periodic_job_failing_on_is_reminded_and_a_new_run_of_failures_is_said_in_full(
    clock: list[float], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="enforcement.workers")
    monkeypatch.setattr(runtime, "Repeats", lambda: Repeats(clock=lambda: clock[0]))
    stop = threading.Event()
    # Each run 30 s after the last: it fails three times, works twice, then fails with another
    # exception and once more with this one, and works again.
    outcomes: list[Exception | None] = [
        *[ConnectionError("the database is away")] * 3,
        None,
        None,
        TimeoutError("the pool is exhausted"),
        ConnectionError("the database is away"),
        None,
    ]

    def sweep() -> None:
        clock[0] += 30
        outcome = outcomes.pop(0)
        if not outcomes:
            stop.set()
        if outcome is not None:
            raise outcome

    run_every(stop, 0.001, sweep, "deadline sweep")

    # Then the run of failures is said in full, reminded a minute later, its end told once; a
    # failure after it, or of another type, starts a run of its own, said in full
    first = (
        "deadline sweep failed; it runs again every 0.001 s (repeats: one line a minute at most)"
    )
    messages = [(r.levelname, r.getMessage(), r.exc_info is not None) for r in caplog.records]
    assert messages == [
        ("ERROR", first, True),
        (
            "ERROR",
            "deadline sweep still fails after 60 s (1 failures since the last such line): "
            "ConnectionError: the database is away",
            False,
        ),
        ("INFO", "deadline sweep works again (it failed 3 times in a row)", False),
        ("ERROR", first, True),
        ("ERROR", first, True),
        ("INFO", "deadline sweep works again (it failed 1 times in a row)", False),
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


def test_by_default_the_next_line_is_said_a_minute_after_the_last_one_said() -> None:
    now = [0.0]
    repeats = Repeats(clock=lambda: now[0])
    said = []
    for second in (0.0, 59.5, 60.0, 119.5, 120.0):
        now[0] = second
        occurrence = repeats.occurrence()
        said.append(None if occurrence is None else occurrence.folded)
    assert said == [0, None, 1, None, 1]


def test_a_reminder_is_for_a_warning_or_worse_below_that_the_first_line_alone(
    clock: list[float], log: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    # Given Dramatiq's connection error (a warning) and its "Restarting consumer" (info), each
    # every 3 s for a minute
    for _ in range(21):
        log.info("Restarting consumer")
        log.warning("Consumer encountered a connection error")
        clock[0] += 3
    # Then the info is said once, the warning once and a minute later
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("INFO", "Restarting consumer (repeats of this are folded: one line a minute at most)"),
        (
            "WARNING",
            "Consumer encountered a connection error"
            " (repeats of this are folded: one line a minute at most)",
        ),
        (
            "WARNING",
            "Consumer encountered a connection error (still repeating after 60 s; 19 repeats"
            " folded since the last such line)",
        ),
    ]


def test_a_failure_stopped_5_s_or_one_and_a_half_of_its_longest_gap_after_its_last(
    by_hand: FoldRepeats, clock: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    log = logging.getLogger(LOGGER)
    # Given a warning twice 3 s apart, another three times 4 s apart, an info three times and a
    # warning once, all last seen at second 8
    start = clock[0]
    for second, message in [
        (0, "every 4 s"),
        (2, "an info"),
        (4, "every 4 s"),
        (5, "every 3 s"),
        (5, "an info"),
        (8, "every 3 s"),
        (8, "every 4 s"),
        (8, "an info"),
        (8, "once"),
    ]:
        clock[0] = start + second
        log.log(logging.INFO if message == "an info" else logging.WARNING, message)
    said = len(caplog.records)

    def told_at(second: float) -> list[tuple[str, str]]:
        clock[0] = start + second
        by_hand.look()
        told = [(r.levelname, r.getMessage()) for r in caplog.records[said:]]
        del caplog.records[said:]
        return told

    # Then nothing has stopped 5 s after, the 3 s one has 5.5 s after, the 4 s one only once
    # 6 s (1.5 times 4 s) have passed; a warning that came once, or an info, is not told
    assert told_at(13) == []
    assert told_at(13.5) == [
        ("INFO", "stopped repeating after 3 s (2 times in all; the first: every 3 s)")
    ]
    assert told_at(14) == []
    assert told_at(14.5) == [
        ("INFO", "stopped repeating after 8 s (3 times in all; the first: every 4 s)")
    ]
    # and each is a first again when it comes back
    for message in ("every 3 s", "every 4 s", "an info", "once"):
        log.warning(message)
    assert [r.getMessage().endswith("at most)") for r in caplog.records[said:]] == [True] * 4


def test_a_failure_said_once_is_forgotten_once_it_stopped(
    clock: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    log = logging.getLogger(LOGGER)
    fold = FoldRepeats(stopped_after_s=1.0, clock=lambda: clock[0])
    log.addFilter(fold)
    try:
        log.warning("once")
        clock[0] += 1.2
        fold.look()
        log.warning("once")
    finally:
        log.removeFilter(fold)
    assert [r.getMessage() for r in caplog.records] == [
        "once (repeats of this are folded: one line a minute at most)"
    ] * 2


def test_by_default_the_folding_runs_on_the_monotonic_clock(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    log = logging.getLogger(LOGGER)
    fold = FoldRepeats()
    log.addFilter(fold)
    try:
        log.warning("Consumer encountered a connection error")
        log.warning("Consumer encountered a connection error")  # (well within a minute)
    finally:
        log.removeFilter(fold)
    assert len(caplog.records) == 1


class Pauses(threading.Event):
    """The folding's event to stop on, its waits recorded: the first held until ``go`` is set,
    the later ones until the event is (``waiting_again`` tells that one has begun)."""

    def __init__(self) -> None:
        super().__init__()
        self.timeouts: list[float | None] = []
        self.go = threading.Event()
        self.waiting_again = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        self.timeouts.append(timeout)
        if len(self.timeouts) == 1:
            self.go.wait()
            return self.is_set()
        self.waiting_again.set()
        return super().wait()


def test_the_folding_looks_every_second_on_one_thread_of_its_own_until_removed(
    clock: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    log = logging.getLogger(LOGGER)
    fold = FoldRepeats(clock=lambda: clock[0])
    pauses = Pauses()
    fold._removed = pauses
    before = set(threading.enumerate())
    fold.add_to([LOGGER])
    [looking] = [t for t in threading.enumerate() if t not in before]
    fold.add_to([LOGGER + ".other"])  # (looked for by the same thread)
    try:
        assert [t for t in threading.enumerate() if t not in before] == [looking]
        assert (looking.name, looking.daemon) == ("log-folding", True)
        # Given a warning that repeated and stopped
        log.warning("Consumer encountered a connection error")
        clock[0] += 3
        log.warning("Consumer encountered a connection error")
        clock[0] += 10
        # When the thread's first second has passed, it looks and tells
        pauses.go.set()
        assert pauses.waiting_again.wait(timeout=30)
        assert caplog.records[-1].getMessage().startswith("stopped repeating after 3 s")
        assert pauses.timeouts == [1.0, 1.0]
    finally:
        fold.remove()
        pauses.go.set()
    # and once removed, it ends and folds no more
    looking.join(timeout=30)
    assert not looking.is_alive()
    log.warning("Consumer encountered a connection error")
    log.warning("Consumer encountered a connection error")
    assert [r.getMessage() for r in caplog.records[-2:]] == [
        "Consumer encountered a connection error"
    ] * 2
