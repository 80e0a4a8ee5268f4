"""``projections.history``: each event with the standing change it caused, walked through the
states one event at a time without copying the state at every step."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any
from unittest import mock

from hypothesis import given, settings
from test_open_items import carrying
from test_standing import LOOKBACK, SOR, T0, histories, records, violation

from events import RecordedEvent
from events.timefmt import format_time
from projections import aup_events as ev
from projections import standing_state
from projections.history import HistoryEntry, history, standing_diff
from projections.standing import StandingState, apply, view


def history_by_copies(events: Iterable[RecordedEvent]) -> Iterator[HistoryEntry]:
    """The history as a fold of values: ``apply`` makes a new state at every event."""
    state = StandingState.empty("acct_1")
    for event in events:
        before = view(state, event.recorded_at, LOOKBACK).to_json()
        state = apply(state, event)
        after = view(state, event.recorded_at, LOOKBACK).to_json()
        sor = event.data.get("statement_of_reasons")
        yield HistoryEntry(
            event,
            standing_diff(before, after),
            event.metadata.get("policy_version"),
            sor if isinstance(sor, dict) else None,
        )


@settings(deadline=None, max_examples=300)
@given(histories())
def test_the_history_equals_the_one_folded_with_a_new_state_at_every_event(
    events: list[RecordedEvent],
) -> None:
    assert list(history("acct_1", events, LOOKBACK)) == list(history_by_copies(events))


@contextmanager
def table_copies() -> Iterator[list[int]]:
    """A list whose one item counts the records copied into a state's tables while it is open."""
    copied = [0]
    table_init = standing_state.Table.__init__

    def counting(self: standing_state.Table, items: Any) -> None:
        copied[0] += len(items)
        table_init(self, items)

    with mock.patch.object(standing_state.Table, "__init__", counting):
        yield copied


def long_history(episodes: int) -> list[RecordedEvent]:
    """Findings an operator dismisses, each with a remediation the account completes."""
    steps: list[tuple[Any, Any]] = []
    for i in range(episodes):
        at = T0 + timedelta(hours=i)
        due = format_time(at + timedelta(days=7))
        steps.append((violation(f"vio_{i}"), at))
        steps.append((ev.RemediationRequested(f"rem_{i}", [f"vio_{i}"], due, SOR), at))
        steps.append((ev.ViolationDismissed(f"vio_{i}", "false positive"), at))
        steps.append((ev.RemediationCompleted(f"rem_{i}", "done"), at))
    return records(steps)


def test_walking_a_long_history_copies_no_state_per_event() -> None:
    """A copy of the state at each event copied every record so far: about n²/2 records over n
    events (a 100,000-event account's history took minutes). The walk copies none."""
    events = long_history(500)
    with table_copies() as copied:
        entries = list(history("acct_1", events, LOOKBACK))
    assert len(entries) == len(events) == 2000
    assert copied == [0]
    assert entries == list(history_by_copies(events))


def test_walking_a_history_carries_what_may_be_open_from_one_event_to_the_next() -> None:
    """Only the view before the first event looks at whole tables: each later one finds what may
    be open from the state before (``projections.open_items``), not from every record again."""
    with carrying() as carried:
        entries = list(history("acct_1", long_history(20), LOOKBACK))
    assert len(entries) == 80
    first = carried.index(next(c for c in carried if c is not None))
    assert first > 0 and None not in carried[first:]


def test_the_diff_names_only_fields_that_changed_but_as_of_and_version() -> None:
    before = {"status": "warned", "strikes": 1, "version": 1, "as_of": "a"}
    after = {"status": "warned", "strikes": 2, "version": 2, "as_of": "b", "new": []}
    assert standing_diff(before, after) == {
        "strikes": {"from": 1, "to": 2},
        "new": {"from": None, "to": []},
    }
