"""Repeats of one failure folded into a line a minute, so that an outage does not flood the log.

While Redis or PostgreSQL is away, the same failure is logged again and again: Dramatiq's
consumers say "Consumer encountered a connection error" every 3 s for each queue, each message
taken up fails "with unhandled exception" (a traceback each), each deadline sweep fails.
``Repeats`` is the rule: the first occurrence is said in full, then at most one line every
``REMIND_S`` with how long it has lasted and how many repeats it folded. ``FoldRepeats`` applies
it to log records, keyed by what failed (the logger, the message's template, the exception's
type and where it was raised, never the logger alone: another failure, or the same exception
raised elsewhere, as by another actor, still gets its own first line), and says when a failure
stopped repeating.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

# A failure that goes on is said again at most once in this many seconds.
REMIND_S = 60.0
# A failure that repeated has stopped once nothing came for one and a half times the longest gap
# seen between its repeats, and at least this long (Dramatiq's consumers retry every 3 s).
STOPPED_AFTER_S = 5.0
# How often the folding looks for failures that stopped repeating.
LOOK_S = 1.0


class Said(NamedTuple):
    """An occurrence to say: the repeats folded since the last one said, whether it is the run's
    first, and how long the run had lasted at it (seconds)."""

    folded: int
    first: bool
    lasted: float


@dataclass
class Repeats:
    """One failure's repeats: the first is said, then at most one every ``every_s``.

    ``occurrence`` tells whether to say this occurrence and how many were folded since the
    last one said; ``started`` is when the run of repeats began (monotonic seconds)."""

    every_s: float = REMIND_S
    clock: Callable[[], float] = time.monotonic
    started: float = 0.0
    last: float = 0.0
    said_at: float | None = None
    folded: int = 0  # since the last line said
    total: int = 0  # occurrences in this run
    longest_gap: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def occurrence(self) -> Said | None:
        """This occurrence: None to fold it, else what to say of it, taken at once (another
        thread's occurrence just after it does not make it a repeat)."""
        with self._lock:
            now = self.clock()
            if self.total:
                self.longest_gap = max(self.longest_gap, now - self.last)
            else:
                self.started = now
            self.last = now
            self.total += 1
            if self.said_at is not None and now - self.said_at < self.every_s:
                self.folded += 1
                return None
            folded, self.folded, self.said_at = self.folded, 0, now
            return Said(folded, self.total == 1, self.last - self.started)

    def lasted(self) -> float:
        """Seconds from the first occurrence of this run to the last."""
        return self.last - self.started


@dataclass(frozen=True)
class _Key:
    logger: str
    template: str
    exception: str | None
    raised_at: tuple[tuple[str, int], ...]  # the traceback's (file, line) pairs


def _raised_at(exc: BaseException | None) -> tuple[tuple[str, int], ...]:
    if exc is None:
        return ()
    return tuple(
        (frame.f_code.co_filename, line) for frame, line in traceback.walk_tb(exc.__traceback__)
    )


class FoldRepeats(logging.Filter):
    """Folds repeated records (see the module's docstring); ``add_to`` the loggers to fold.

    A record's first occurrence passes with its traceback and a note that repeats are folded;
    a repeat within ``every_s`` of the last line passes nothing; a reminder of a warning or
    worse passes as one line (no traceback) saying how long it has lasted and how many it
    folded (below warning, the first line alone: Dramatiq's "Restarting consumer" follows each
    of its connection errors, whose reminders say enough). A warning or worse that repeated and
    then stopped is told as one line on its logger (looked for every ``LOOK_S`` until
    ``remove``)."""

    def __init__(
        self,
        every_s: float = REMIND_S,
        stopped_after_s: float = STOPPED_AFTER_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.every_s = every_s
        self.stopped_after_s = stopped_after_s
        self.clock = clock
        # Each failure's repeats, its level and its first message.
        self._runs: dict[_Key, tuple[Repeats, int, str]] = {}
        self._lock = threading.Lock()
        self._loggers: list[logging.Logger] = []
        self._removed = threading.Event()
        self._looking = False

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "folding_summary", False):
            return True
        exc = record.exc_info[1] if record.exc_info else None
        key = _Key(
            record.name, str(record.msg), type(exc).__name__ if exc else None, _raised_at(exc)
        )
        with self._lock:
            run = self._runs.get(key)
            if run is None:
                run = (Repeats(self.every_s, self.clock), record.levelno, record.getMessage())
                self._runs[key] = run
        said = run[0].occurrence()
        if said is None:
            return False
        if said.first:
            record.msg = f"{record.msg} (repeats of this are folded: one line a minute at most)"
            return True
        if record.levelno < logging.WARNING:
            return False
        record.msg = (
            f"{record.msg} (still repeating after {said.lasted:.0f} s; "
            f"{said.folded} repeats folded since the last such line)"
        )
        record.exc_info, record.exc_text = None, None
        return True

    def look(self) -> None:
        """Tell each warning or worse that repeated and has stopped, and forget every failure
        that has stopped (its next occurrence is a first again)."""
        now = self.clock()
        with self._lock:
            stopped = [
                (key, run)
                for key, run in self._runs.items()
                if now - run[0].last > max(self.stopped_after_s, 1.5 * run[0].longest_gap)
            ]
            for key, _ in stopped:
                del self._runs[key]
        for key, (repeats, level, message) in stopped:
            if repeats.total > 1 and level >= logging.WARNING:
                logging.getLogger(key.logger).log(
                    logging.WARNING if level >= logging.ERROR else logging.INFO,
                    "stopped repeating after %.0f s (%d times in all%s; the first: %s)",
                    repeats.lasted(),
                    repeats.total,
                    "" if key.exception is None else f", {key.exception}",
                    message,
                    extra={"folding_summary": True},
                )

    def add_to(self, logger_names: Iterable[str]) -> None:
        """Fold the records of ``logger_names`` (logged on them, not on their children) until
        ``remove``; the first call starts looking for failures that stopped."""
        for name in logger_names:
            logger = logging.getLogger(name)
            logger.addFilter(self)
            self._loggers.append(logger)
        with self._lock:
            start, self._looking = not self._looking, True
        if start:
            threading.Thread(
                target=self._look_until_removed, name="log-folding", daemon=True
            ).start()

    def remove(self) -> None:
        """Stop folding, and looking for failures that stopped."""
        self._removed.set()
        for logger in self._loggers:
            logger.removeFilter(self)
        self._loggers.clear()

    def _look_until_removed(self) -> None:
        while not self._removed.wait(LOOK_S):
            self.look()
