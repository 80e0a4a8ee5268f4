"""Retrying while Redis or the database is away: spaced out, and told once in full.

The relay, its leader's start and the gate's keeper each retry until what they need is back. A
failure that lasts is logged with its traceback once, then as one line per attempt, and the
attempts back off from ``RETRY_FIRST_SECONDS`` to ``RETRY_MAX_SECONDS``. The relay and its
leader's start also retry as soon as what failed comes back (``wait_to_retry`` asking a
``CameBack``), so that a backoff does not outlast the outage by up to ``RETRY_MAX_SECONDS``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)
RETRY_FIRST_SECONDS = 1.0
RETRY_MAX_SECONDS = 15.0


def retry_delay(failures: int, first: float = RETRY_FIRST_SECONDS) -> float:
    """Seconds to wait after the ``failures``-th failure in a row: 1, 2, 4, 8, then 15 (from
    ``first``, doubled, at most ``RETRY_MAX_SECONDS``)."""
    return min(RETRY_MAX_SECONDS, first * float(2 ** min(failures - 1, 16)))


def one_line(exc: BaseException) -> str:
    """The exception's type and the first line of its message (a driver's, if wrapped)."""
    cause = getattr(exc, "orig", None) or exc
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0][:300] if lines else ''}".rstrip(": ")


def log_failure(
    log: logging.Logger, what: str, exc: BaseException, failures: int, delay: float | None
) -> None:
    """``what`` failed for the ``failures``-th time in a row: the traceback the first time, one
    line after it; ``delay``: the seconds until the next attempt (None: the next round)."""
    then = "trying again later" if delay is None else f"retrying in {delay:g} s"
    if failures == 1:
        log.error("%s; %s", what, then, exc_info=exc)
    else:
        log.error("%s (%d times in a row): %s; %s", what, failures, one_line(exc), then)


def wait_to_retry(
    stop: threading.Event,
    delay: float,
    failure: BaseException,
    answers_again: Callable[[BaseException], bool | None] | None = None,
    every: float = 1.0,
) -> None:
    """Wait ``delay`` seconds after ``failure``, or until ``stop`` is set, or, with
    ``answers_again`` (asked every ``every`` seconds meanwhile), until it says that what raised
    ``failure`` answers again (true; None: ``failure`` is not one it can ask about). A probe
    that raises counts as "not yet" (logged once per wait): this wait runs in the retry loop's
    ``except`` block, and an exception out of it would end the loop's thread (no relay any
    more in this process)."""
    if answers_again is None:
        stop.wait(delay)
        return
    deadline = time.monotonic() + delay
    probe_failed = False
    while not stop.wait(min(every, max(0.0, deadline - time.monotonic()))):
        if time.monotonic() >= deadline:
            return
        try:
            if answers_again(failure):
                return
        except Exception:
            if not probe_failed:
                probe_failed = True
                log.warning("asking whether what failed answers again failed", exc_info=True)


class CameBack:
    """One retry loop's ``answers_again``, made to say yes only when what failed *came back*:
    it answers again after a probe of this run of failures saw it away (not answering, or the
    probe raised; a probe answering None, the failure not being one of what it watches, asked
    nothing and saw nothing: a database failure). Each such return is told once, and the loop
    calls ``succeeded`` when an attempt succeeds: the run of failures is over.

    A bare ``answers_again`` ends every wait after one probe while what failed answers but the
    work still fails with it: a Redis that answers the watch's PING and refuses new
    connections (``max number of clients reached``) had the relay retry, and log, every second.
    Now such a wait runs its whole backoff. The state spans the waits of a run: a failure just
    before Redis returns is retried at the next probe, since the probes of earlier waits saw
    Redis away."""

    def __init__(self, answers_again: Callable[[BaseException], bool | None]) -> None:
        self._answers_again = answers_again
        self._saw_it_away = False

    def __call__(self, failure: BaseException) -> bool:
        try:
            answers = self._answers_again(failure)
        except Exception:
            self._saw_it_away = True
            raise  # ``wait_to_retry`` counts it as "not yet"
        if answers is None:
            return False
        came_back = answers and self._saw_it_away
        self._saw_it_away = not answers
        return came_back

    def succeeded(self) -> None:
        self._saw_it_away = False
