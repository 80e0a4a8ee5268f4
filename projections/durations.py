"""Durations as the policy file writes them (``"90d"``, ``"36h"``, ``"10m"``, ``"30s"``), and the
largest whole unit of a span, which that notation and the statements' words both use. Pure."""

from __future__ import annotations

import re
from datetime import timedelta
from functools import lru_cache

DURATION = re.compile(r"([0-9]+)([smhd])")
UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
# The largest first: a duration is written in the largest unit that holds it whole.
_UNIT_SECONDS = (("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1))


def largest_whole_unit(seconds: int) -> tuple[int, str]:
    """``seconds`` as a count of the largest of ``d``, ``h``, ``m``, ``s`` that holds it whole:
    ``(90, "d")`` for 90 days, ``(36, "h")`` for 36 hours, ``(90, "s")`` for 90 seconds."""
    for unit, size in _UNIT_SECONDS:
        if seconds % size == 0:
            return seconds // size, unit
    raise AssertionError("unreachable: every whole number of seconds is whole in seconds")


@lru_cache(maxsize=64)
def duration_text(span: timedelta) -> str | None:
    """``span`` as the policy file writes it, in the largest unit that holds it whole (90 days
    ``"90d"``, 36 hours ``"36h"``); ``None`` for a negative span or one with a fraction of a
    second, which no policy file gives and this text cannot hold."""
    if span < timedelta(0) or span.microseconds:
        return None
    count, unit = largest_whole_unit(int(span.total_seconds()))
    return f"{count}{unit}"


def parse_duration_text(text: object) -> timedelta | None:
    """The duration ``duration_text`` wrote; ``None`` for anything else (not a string, another
    shape, or more days than a ``timedelta`` holds)."""
    match = DURATION.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        return None
    try:
        return timedelta(**{UNITS[match.group(2)]: int(match.group(1))})
    except OverflowError:
        return None
