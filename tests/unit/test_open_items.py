"""``projections.open_items``: the records a state keeps as those that may be open, carried from
state to state, give the same views as looking at every record, and stay few on a long history."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_standing import LOOKBACK, SOR, T0, applied_in_steps, histories, records, violation

from events import RecordedEvent
from events.timefmt import format_time
from projections import aup_events as ev
from projections import open_items
from projections.standing import (
    StandingState,
    active_strikes,
    active_throttles,
    apply_all,
    view,
)

OTHER_LOOKBACK = timedelta(days=7)


@contextmanager
def every_record() -> Iterator[None]:
    """The views as before ``open_items``: every record of every table looked at."""
    with mock.patch(
        "projections.standing_view.open_records", lambda _state, table, *_args: table.values()
    ):
        yield


@contextmanager
def carrying() -> Iterator[list[Any]]:
    """What each ``open_items._carried`` call gave (None: the table was looked at whole)."""
    carried: list[Any] = []
    real = open_items._carried

    def spy(*args: Any) -> Any:
        carried.append(real(*args))
        return carried[-1]

    with mock.patch.object(open_items, "_carried", spy):
        yield carried


def answers(state: StandingState, as_of: datetime) -> tuple[Any, ...]:
    return (
        view(state, as_of, LOOKBACK),
        view(state, as_of, OTHER_LOOKBACK),
        active_strikes(state, as_of, LOOKBACK),
        active_throttles(state, as_of),
    )


@settings(deadline=None, max_examples=300)
@given(histories(), st.data())
def test_views_of_states_made_one_from_another_equal_looking_at_every_record(
    events: list[RecordedEvent], data: st.DataObject
) -> None:
    for _, state, cut in applied_in_steps(events, data):
        last = events[cut - 1].recorded_at if cut else T0
        # Mostly later than the last event, as requests are; sometimes before it (a clock set
        # back), which the state's items are not sure of.
        for hours in data.draw(st.lists(st.integers(-30 * 24, 120 * 24), min_size=1, max_size=3)):
            as_of = last + timedelta(hours=hours)
            with every_record():
                expected = answers(state, as_of)
            assert answers(state, as_of) == expected


def test_a_long_history_keeps_only_what_may_be_open_and_carries_it_to_the_next_state() -> None:
    steps: list[tuple[Any, datetime]] = []
    for i in range(300):
        at = T0 + timedelta(hours=i)
        due = format_time(at + timedelta(days=7))
        steps.append((violation(f"vio_{i}"), at))
        steps.append((ev.ViolationDismissed(f"vio_{i}", "false positive"), at))
        steps.append((ev.RemediationRequested(f"rem_{i}", [f"vio_{i}"], due, SOR), at))
        steps.append((ev.RemediationCompleted(f"rem_{i}", "done"), at))
    history = records(steps)
    end = history[-1].recorded_at
    state = apply_all(StandingState.empty("acct_1"), history)
    assert view(state, end, LOOKBACK).status == "good_standing"
    assert state.open_items is not None
    assert state.open_items.tables[("violations", LOOKBACK)] == ()
    assert state.open_items.tables["remediations"] == ()

    later = end + timedelta(hours=1)
    after = apply_all(state, records([(violation("vio_new"), later)], start=state.version))
    with carrying() as carried:
        standing = view(after, later, LOOKBACK)
    assert standing.open_violations == ("vio_new",)
    assert after.open_items is not None
    assert after.open_items.tables[("violations", LOOKBACK)] == (after.violations["vio_new"],)
    # Every table the view asked for was carried over from the state before, none found by
    # looking at its 300 records again.
    assert len(carried) == 5
    assert None not in carried


def test_a_record_changed_in_place_that_may_be_open_again_is_found() -> None:
    """A violation reported again under a dismissed one's id keeps its place in the table."""
    state = apply_all(
        StandingState.empty("acct_1"),
        records(
            [
                (violation("vio_a"), T0),
                (violation("vio_b"), T0),
                (ev.ViolationDismissed("vio_a", "false positive"), T0),
            ]
        ),
    )
    assert view(state, T0, LOOKBACK).open_violations == ("vio_b",)
    again = apply_all(state, records([(violation("vio_a"), T0)], start=state.version))
    assert view(again, T0, LOOKBACK).open_violations == ("vio_a", "vio_b")


def test_records_changed_in_place_open_or_closed_do_not_stop_the_carrying() -> None:
    """A decision on an open violation and on one past the lookback changes both in place: the
    state after still carries its tables over (at the same instant too), the changed record in
    its place, and keeps the closed one out."""
    later = T0 + LOOKBACK + timedelta(days=1)
    state = apply_all(
        StandingState.empty("acct_1"),
        records([(violation("vio_old"), T0), (violation("vio_new"), later)]),
    )
    assert view(state, later, LOOKBACK).open_violations == ("vio_new",)
    throttle = ev.ThrottleApplied("thr_1", None, 0.25, None, "r", SOR, ["vio_old", "vio_new"])
    after = apply_all(state, records([(throttle, later)], start=state.version))
    with carrying() as carried:
        assert view(after, later, LOOKBACK).open_violations == ("vio_new",)
    assert None not in carried
    assert after.open_items is not None
    assert after.open_items.tables[("violations", LOOKBACK)] == (after.violations["vio_new"],)
    assert after.violations["vio_new"].decision_event_ids == ("e3",)


def test_records_added_and_closed_by_the_same_events_are_not_kept() -> None:
    """A throttle applied and lifted, a violation reported and dismissed, in one batch after
    the state before was asked: neither is among what the state after keeps."""
    state = apply_all(StandingState.empty("acct_1"), records([(violation("vio_a"), T0)]))
    answers(state, T0)
    steps = [
        (ev.ThrottleApplied("thr_1", None, 0.5, None, "r", SOR, []), T0),
        (ev.ThrottleLifted("thr_1", "r"), T0),
        (violation("vio_b"), T0),
        (ev.ViolationDismissed("vio_b", "false positive"), T0),
    ]
    after = apply_all(state, records(steps, start=state.version))
    with every_record():
        expected = answers(after, T0)
    with carrying() as carried:
        assert answers(after, T0) == expected
    assert None not in carried
    assert after.open_items is not None
    assert after.open_items.tables["throttles"] == ()
    assert after.open_items.tables[("violations", LOOKBACK)] == (after.violations["vio_a"],)


def test_a_throttle_lifted_and_applied_again_is_listed_once_at_the_end() -> None:
    def applied(throttle_id: str) -> Any:
        return ev.ThrottleApplied(throttle_id, None, 0.5, None, "r", SOR, [])

    state = apply_all(
        StandingState.empty("acct_1"), records([(applied("thr_a"), T0), (applied("thr_b"), T0)])
    )
    assert [t.throttle_id for t in active_throttles(state, T0)] == ["thr_a", "thr_b"]
    again = apply_all(
        state,
        records([(ev.ThrottleLifted("thr_a", "r"), T0), (applied("thr_a"), T0)], start=2),
    )
    assert [t.throttle_id for t in active_throttles(again, T0)] == ["thr_b", "thr_a"]
    # Applied, lifted and applied again in one batch: after one applied between.
    steps = [applied("thr_c"), applied("thr_d"), ev.ThrottleLifted("thr_c", "r"), applied("thr_c")]
    last = apply_all(again, records([(step, T0) for step in steps], start=4))
    assert [t.throttle_id for t in active_throttles(last, T0)] == [
        "thr_b",
        "thr_a",
        "thr_d",
        "thr_c",
    ]


def test_instants_before_the_year_1000_whose_texts_do_not_sort_give_the_same_views() -> None:
    """``format_time`` writes those years unpadded ("999-…"), which sort after "2026-…"."""
    far = format_time(T0 + timedelta(days=365 * 900))
    steps = [
        (violation("vio_a"), T0),
        (ev.ThrottleApplied("thr_a", None, 0.5, far, "r", SOR, []), T0),
    ]
    instants = [
        datetime(999, 6, 1, tzinfo=UTC),
        datetime(1000, 1, 10, tzinfo=UTC),  # its strike cutoff is in the year 999
        datetime(1, 1, 1, tzinfo=UTC),
        T0 + timedelta(days=1),
    ]
    for order in (instants, instants[::-1]):
        state = apply_all(StandingState.empty("acct_1"), records(steps))
        for as_of in order:
            with every_record():
                expected = answers(state, as_of)
            assert answers(state, as_of) == expected


def test_a_negative_lookback_whose_cutoff_runs_past_the_year_9999_gives_the_same_views() -> None:
    """Only a ``Policy`` built in code can have one (the policy file refuses it)."""
    lookback = timedelta(days=-1)
    state = apply_all(StandingState.empty("acct_1"), records([(violation("vio_1"), T0)]))
    for as_of in (datetime(9999, 12, 30, 12, tzinfo=UTC), datetime(9999, 12, 31, 12, tzinfo=UTC)):
        with every_record():
            expected = view(state, as_of, lookback)
        assert view(state, as_of, lookback) == expected


def test_a_copied_table_refuses_changes_it_would_not_note() -> None:
    state = apply_all(StandingState.empty("acct_1"), records([(violation("vio_1"), T0)]))
    table = state.violations
    for change in (
        lambda: table.__delitem__("vio_1"),
        lambda: table.update({}),
        lambda: table.setdefault("vio_2", None),
        lambda: table.popitem(),
        lambda: table.clear(),
    ):
        with pytest.raises(TypeError, match="setting and popping"):
            change()
    assert list(table) == ["vio_1"]


def test_a_state_asked_about_an_earlier_instant_keeps_records_from_that_instant_on() -> None:
    steps = [
        (violation("vio_a"), T0),
        (
            ev.ThrottleApplied(
                "thr_a", None, 0.5, format_time(T0 + timedelta(days=2)), "r", SOR, []
            ),
            T0,
        ),
    ]
    state = apply_all(StandingState.empty("acct_1"), records(steps))
    for days in (10, 1, 3, 1.5):
        as_of = T0 + timedelta(days=days)
        with every_record():
            expected = answers(state, as_of)
        assert answers(state, as_of) == expected
    assert state.open_items is not None
    assert state.open_items.since == format_time(T0 + timedelta(days=1))
    assert [t.throttle_id for t in state.open_items.tables["throttles"]] == ["thr_a"]
