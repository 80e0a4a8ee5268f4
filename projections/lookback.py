"""The strike lookback an event records, so that a past standing is drawn from the log alone.

A decision counts the account's prior strikes with its policy's ``strike_lookback``. Each event
records that lookback in its metadata, beside ``policy_version``, as the policy file writes a
duration (``"strike_lookback": "90d"``: ``projections.durations``). A standing drawn for a past
instant (``fold``, ``history``) then counts strikes as the policy that last acted on the
account did, whatever policy runs when the log is read: POLICY.md's "replaying the log gives
the standing that the policy of the day produced". Events recorded before the key existed carry
none; the lookback the caller passes (the running policy's) stands in for them, as it did for
every event before.

A policy also begins before it acts on an account: the deployment records the instant each
serving process began with its policy (``enforcement.policy_activations``). A standing drawn for
an instant after that, and before the account's next event, counts strikes as that policy does
(``PolicyStart``): the policy the next decision would have counted with.

Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from projections.durations import parse_duration_text

METADATA_KEY = "strike_lookback"


@dataclass(frozen=True, slots=True)
class PolicyStart:
    """The last policy the deployment began with by some instant, and when it began."""

    at: datetime
    policy_version: str
    strike_lookback: timedelta


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
