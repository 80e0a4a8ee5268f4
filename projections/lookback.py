"""The strike lookback an event records, so that a past standing is drawn from the log alone.

A decision counts the account's prior strikes with its policy's ``strike_lookback``. Each event
records that lookback in its metadata, beside ``policy_version``, as the policy file writes a
duration (``"strike_lookback": "90d"``). A standing drawn for a past instant (``fold``,
``history``) then counts strikes as the policy that last acted on the account did, whatever
policy runs when the log is read: POLICY.md's "replaying the log gives the standing that the
policy of the day produced". Events recorded before the key existed carry none; the lookback
the caller passes (the running policy's) stands in for them, as it did for every event before.

Pure: text in, text out.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import timedelta
from functools import lru_cache
from typing import Any

METADATA_KEY = "strike_lookback"

DURATION = re.compile(r"([0-9]+)([smhd])")
UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
# The largest first: a duration is written in the largest unit that holds it whole.
_UNIT_SECONDS = (("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1))


@lru_cache(maxsize=64)
def duration_text(span: timedelta) -> str | None:
    """``span`` as the policy file writes it, in the largest unit that holds it whole (90 days
    ``"90d"``, 36 hours ``"36h"``); ``None`` for a negative span or one with a fraction of a
    second, which no policy file gives and this text cannot hold."""
    if span < timedelta(0) or span.microseconds:
        return None
    seconds = int(span.total_seconds())
    for unit, size in _UNIT_SECONDS:
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    raise AssertionError("unreachable: every whole number of seconds is whole in seconds")


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


class LookbackOfRecord:
    """The lookback of the last event seen that records one; ``fallback`` until one does."""

    __slots__ = ("_text", "value")

    def __init__(self, fallback: timedelta) -> None:
        self.value = fallback
        self._text: object = None  # the text ``value`` was read from: a stream repeats it

    def see(self, metadata: Mapping[str, Any]) -> timedelta:
        """Take the lookback ``metadata`` records, if any; the lookback of record after it."""
        text = metadata.get(METADATA_KEY)
        if text is not None and text != self._text:
            recorded = parse_duration_text(text)
            if recorded is not None:
                self.value, self._text = recorded, text
        return self.value
