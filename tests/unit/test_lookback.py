"""The strike lookback each event records (``projections.lookback``): a past standing and an
account's history count strikes as the policy that decided then did, not as the running one.

POLICY.md: "replaying the log gives the standing that the policy of the day produced". Here the
events are built by hand with the metadata a decision writes; ``tests/integration/
test_policy_change_replay.py`` does the same through the service with two policy files.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from enforcement.policy_file import MAX_DURATION
from events import RecordedEvent
from projections import aup_events as ev
from projections.durations import duration_text, parse_duration_text
from projections.history import history
from projections.lookback import LookbackOfRecord, PolicyStart
from projections.standing import fold

T0 = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
DAY = timedelta(days=1)
RUNNING = timedelta(days=30)  # the running policy's lookback in every test below


def t(days: float) -> datetime:
    return T0 + days * DAY


def recorded(steps: Sequence[tuple[Any, datetime, str | None]]) -> list[RecordedEvent]:
    """Payloads recorded at the given times, each with the ``strike_lookback`` text it names in
    its metadata (``None``: an event recorded before the key existed, without it)."""
    out = []
    for version, (payload, at, lookback) in enumerate(steps, start=1):
        new = ev.CODEC.encode(payload, occurred_at=at, event_id=f"e{version}")
        metadata = {"policy_version": "p"} | (
            {} if lookback is None else {"strike_lookback": lookback}
        )
        data = json.loads(json.dumps(new.data))
        out.append(
            RecordedEvent(
                version,
                new.event_id,
                "acct_1",
                version,
                new.type,
                1,
                data,
                metadata,
                at,
                at,
                "",
                "",
            )
        )
    return out


def spam(violation_id: str) -> Any:
    return ev.ViolationReported(
        violation_id, "spam", "medium", None, None, None, "automated", None, None, None, True
    )


# --- the text ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("span", "text"),
    [
        (timedelta(days=90), "90d"),
        (timedelta(hours=36), "36h"),
        (timedelta(hours=48), "2d"),
        (timedelta(minutes=90), "90m"),
        (timedelta(seconds=90), "90s"),
        (timedelta(seconds=1), "1s"),
        (timedelta(0), "0d"),
        (MAX_DURATION, "36500d"),
    ],
)
def test_a_lookback_is_written_in_the_largest_unit_that_holds_it_whole(
    span: timedelta, text: str
) -> None:
    assert duration_text(span) == text
    assert parse_duration_text(text) == span


@given(st.integers(min_value=0, max_value=MAX_DURATION // timedelta(seconds=1)))
def test_every_whole_number_of_seconds_reads_back_as_written(seconds: int) -> None:
    span = timedelta(seconds=seconds)
    text = duration_text(span)
    assert text is not None
    assert parse_duration_text(text) == span


def test_no_text_for_what_a_policy_file_cannot_give() -> None:
    assert duration_text(timedelta(seconds=-1)) is None
    assert duration_text(timedelta(days=1, microseconds=1)) is None


@pytest.mark.parametrize(
    "text", [None, 90, "", "90", "d", "90 d", "-90d", "90w", "1.5d", "90D", "999999999999d"]
)
def test_anything_else_recorded_reads_as_no_lookback(text: object) -> None:
    assert parse_duration_text(text) is None
    assert LookbackOfRecord(RUNNING).see({"strike_lookback": text}) == RUNNING


def test_the_lookback_of_record_is_the_last_one_seen_else_the_fallback() -> None:
    of_record = LookbackOfRecord(RUNNING)
    assert of_record.value == RUNNING
    assert of_record.see({}) == RUNNING
    assert of_record.see({"strike_lookback": "90d"}) == timedelta(days=90)
    assert of_record.see({"policy_version": "p"}) == timedelta(days=90)  # kept
    assert of_record.see({"strike_lookback": "bad"}) == timedelta(days=90)
    assert of_record.see({"strike_lookback": "7d"}) == timedelta(days=7)


# --- a past standing --------------------------------------------------------------------------


def test_a_past_standing_counts_strikes_with_the_lookback_its_events_recorded() -> None:
    # Recorded under a 90-day lookback; the running policy's is 30 days.
    events = recorded([(spam("vio_1"), t(0), "90d")])
    at_35 = fold("acct_1", events, t(35), RUNNING)
    assert at_35.strikes == 1
    assert at_35.open_violations == ("vio_1",)
    assert at_35.status == "warned"
    assert fold("acct_1", events, t(91), RUNNING).strikes == 0  # 90 days on, it ran out


def test_a_later_event_s_lookback_takes_over_from_the_moment_it_was_recorded() -> None:
    events = recorded(
        [
            (spam("vio_1"), t(0), "90d"),
            (ev.AdultContentApprovalChanged(True, "contract"), t(40), "30d"),
        ]
    )
    assert fold("acct_1", events, t(39), RUNNING).strikes == 1  # only the first event: 90 days
    assert fold("acct_1", events, t(40), timedelta(days=90)).strikes == 0  # both: 30 days


def test_events_that_record_no_lookback_count_with_the_running_policy_s() -> None:
    legacy = recorded([(spam("vio_1"), t(0), None)])
    assert fold("acct_1", legacy, t(35), RUNNING).strikes == 0
    assert fold("acct_1", legacy, t(35), timedelta(days=90)).strikes == 1
    # A later event that records one sets it for what came before too: the policy of the day.
    mixed = recorded([(spam("vio_1"), t(0), None), (spam("vio_2"), t(20), "90d")])
    assert fold("acct_1", mixed, t(35), RUNNING).strikes == 2


# --- a policy begun before it acted on the account ---------------------------------------------


def begun(days: float, lookback: timedelta) -> PolicyStart:
    return PolicyStart(t(days), "aup-begun", lookback)


def test_a_policy_begun_after_the_last_event_counts_with_its_own_lookback() -> None:
    events = recorded([(spam("vio_1"), t(0), "90d")])
    start = begun(30, timedelta(days=20))
    # Before the new policy began: the lookback the event recorded (90 days).
    assert fold("acct_1", events, t(29), RUNNING, start).strikes == 1
    # From its start on, and before it acts on the account: its 20 days, by which the strike of
    # day 0 has run out; the next decision would count none.
    at_35 = fold("acct_1", events, t(35), RUNNING, start)
    assert (at_35.strikes, at_35.open_violations, at_35.status) == (0, (), "good_standing")
    # A start given without a zone is read as UTC, as every instant here is (``to_utc``).
    naive = replace(start, at=start.at.replace(tzinfo=None))
    assert fold("acct_1", events, t(35), RUNNING, naive) == at_35
    # Longer than the recorded one: a strike the event's 30 days let go counts again.
    shorter = recorded([(spam("vio_1"), t(0), "30d")])
    assert fold("acct_1", shorter, t(50), RUNNING).strikes == 0
    assert fold("acct_1", shorter, t(50), RUNNING, begun(45, timedelta(days=90))).strikes == 1


def test_an_event_after_the_policy_began_counts_with_the_lookback_it_recorded() -> None:
    events = recorded(
        [
            (spam("vio_1"), t(0), "90d"),
            (ev.AdultContentApprovalChanged(True, "contract"), t(40), "90d"),
        ]
    )
    # A policy begun on day 30, but the event of day 40 was decided with 90 days (a process of
    # the older policy, during a rolling change): that event is the later word.
    assert fold("acct_1", events, t(45), RUNNING, begun(30, timedelta(days=20))).strikes == 1
    # An event recorded at the very instant the policy began is the later word too.
    assert fold("acct_1", events, t(45), RUNNING, begun(40, timedelta(days=20))).strikes == 1
    assert fold("acct_1", events, t(45), RUNNING, begun(41, timedelta(days=20))).strikes == 0


def test_a_policy_begun_after_the_instant_read_is_not_counted() -> None:
    events = recorded([(spam("vio_1"), t(0), "90d")])
    # The caller passes the last start by ``as_of``; one after it is ignored, not trusted.
    assert fold("acct_1", events, t(35), RUNNING, begun(36, timedelta(days=20))).strikes == 1
    assert fold("acct_1", events, t(36), RUNNING, begun(36, timedelta(days=20))).strikes == 0


def test_a_policy_begun_after_events_that_record_no_lookback_counts_with_its_own() -> None:
    legacy = recorded([(spam("vio_1"), t(0), None)])  # recorded before the key existed
    running = timedelta(days=90)
    # Until a policy is recorded as begun: the running policy's, as before.
    assert fold("acct_1", legacy, t(35), running).strikes == 1
    assert fold("acct_1", legacy, t(35), running, begun(10, timedelta(days=20))).strikes == 0


# Histories of violations (some dismissed later), each event with a lookback text or none, the
# days apart they were recorded, an instant to read at and a policy start: the properties below
# hold for all of them.
LOOKBACK_TEXTS = st.sampled_from([None, "10d", "30d", "90d", "36h"])
histories = st.lists(
    st.tuples(st.booleans(), st.integers(min_value=0, max_value=40), LOOKBACK_TEXTS),
    min_size=1,
    max_size=8,
)


def history_events(steps: list[tuple[bool, int, str | None]]) -> list[RecordedEvent]:
    """A violation per step, or a dismissal of the last violation (``True``), days apart."""
    day, violations, made = 0.0, [], []
    for dismiss, gap, lookback in steps:
        day += gap
        if dismiss and violations:
            made.append((ev.ViolationDismissed(violations[-1], "mistaken"), t(day), lookback))
        else:
            violations.append(f"vio_{len(violations)}")
            made.append((spam(violations[-1]), t(day), lookback))
    return recorded(made)


@given(
    histories,
    st.integers(min_value=0, max_value=400),
    st.integers(min_value=0, max_value=400),
    st.sampled_from(["10d", "30d", "90d", "36h"]),
)
def test_a_start_after_the_last_event_counts_as_if_every_event_recorded_its_lookback(
    steps: list[tuple[bool, int, str | None]], start_day: int, read_day: int, text: str
) -> None:
    events = history_events(steps)
    lookback = parse_duration_text(text)
    assert lookback is not None
    start = PolicyStart(t(start_day), "aup-begun", lookback)
    standing = fold("acct_1", events, t(read_day), RUNNING, start)
    last = max(
        (e for e in events if e.recorded_at <= t(read_day)), default=None, key=lambda e: e.version
    )
    if start.at <= t(read_day) and (last is None or start.at > last.recorded_at):
        # Begun after the account's last event by then: as if every event had recorded the
        # new policy's lookback.
        relabelled = [replace(e, metadata={**e.metadata, "strike_lookback": text}) for e in events]
        assert standing == fold("acct_1", relabelled, t(read_day), RUNNING)
    else:
        # Begun after the instant read, or before the last event: no part in the answer.
        assert standing == fold("acct_1", events, t(read_day), RUNNING)


# --- history ----------------------------------------------------------------------------------


def test_history_draws_each_change_with_the_lookback_its_event_recorded() -> None:
    # The dismissal on day 40 took a strike away under the 90-day policy that recorded it.
    events = recorded(
        [
            (spam("vio_1"), t(0), "90d"),
            (ev.ViolationDismissed("vio_1", "mistake"), t(40), "90d"),
        ]
    )
    reported, dismissed = history("acct_1", events, RUNNING)
    assert reported.change["strikes"] == {"from": 0, "to": 1}
    assert dismissed.change["strikes"] == {"from": 1, "to": 0}
    assert dismissed.change["open_violations"] == {"from": ["vio_1"], "to": []}
    assert [entry.policy_version for entry in (reported, dismissed)] == ["p", "p"]


def test_history_draws_both_sides_of_a_change_with_the_event_s_lookback() -> None:
    # Under the 30-day policy that recorded the dismissal, the strike had already run out:
    # the change shows what the dismissal did, not what the policy change did.
    events = recorded(
        [
            (spam("vio_1"), t(0), "90d"),
            (ev.ViolationDismissed("vio_1", "mistake"), t(40), "30d"),
        ]
    )
    _, dismissed = history("acct_1", events, timedelta(days=90))
    assert "strikes" not in dismissed.change
    assert "open_violations" not in dismissed.change
