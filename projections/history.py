"""An account's history: each event with what it changed in the standing and why.

Pure: it takes events (in version order) and returns entries; the CLI and API render them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from events import RecordedEvent
from projections.lookback import LookbackOfRecord
from projections.standing import StandingState, advance, view

JSON = dict[str, Any]
_IGNORED = {"as_of", "version"}


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    event: RecordedEvent
    change: JSON  # {field: {"from": …, "to": …}} for every standing field the event changed
    policy_version: str | None
    statement_of_reasons: JSON | None


def standing_diff(before: JSON, after: JSON) -> JSON:
    """The fields whose value differs, as ``{"from", "to"}`` pairs (``as_of``/``version`` aside)."""
    return {
        key: {"from": before.get(key), "to": value}
        for key, value in after.items()
        if key not in _IGNORED and before.get(key) != value
    }


def history(
    account_id: str, events: Iterable[RecordedEvent], strike_lookback: timedelta
) -> Iterator[HistoryEntry]:
    """Each event with the standing change it caused, seen at the moment it was recorded, with
    the strike lookback of the policy of that moment: the one the event records, else the last
    one recorded before it (``projections.lookback``), else ``strike_lookback``. Both sides of
    a change use it, so a change shows what the event did, not what a policy change did."""
    state = StandingState.empty(account_id)
    of_record = LookbackOfRecord(strike_lookback)
    for event in events:
        lookback = of_record.see(event.metadata)
        before = view(state, event.recorded_at, lookback).to_json()
        state = advance(state, event)  # not ``apply``: a copy a step costs n² over n steps
        after = view(state, event.recorded_at, lookback).to_json()
        sor = event.data.get("statement_of_reasons")
        yield HistoryEntry(
            event=event,
            change=standing_diff(before, after),
            policy_version=event.metadata.get("policy_version"),
            statement_of_reasons=sor if isinstance(sor, dict) else None,
        )
