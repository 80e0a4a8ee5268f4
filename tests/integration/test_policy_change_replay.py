"""A policy change does not rewrite the past, on SQLite and PostgreSQL: POLICY.md, "replaying the
log gives the standing that the policy of the day produced".

One account's violation is decided under the default policy (strikes count for 90 days); the
deployment then runs a policy whose strikes count for 30. The service of the new policy answers
the standing now with its own lookback, as its next decision counts, and a past standing and the
history with the lookback each event recorded (``projections.lookback``), from the log alone;
once the new policy is recorded as begun (``enforcement.policy_activations``, as ``serve``
records it), a standing as of an instant after that with the new policy's lookback.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from test_service_support import (
    T0,
    FakeClock,
    assert_account_consistent,
    events_of,
    open_system,
    report,
    types_of,
)

from enforcement import policy_activations
from enforcement.service import Outcome

DAY = timedelta(days=1)


def decided_under_the_default_policy(
    database_url: str, clock: FakeClock, record_start: bool = False
) -> Outcome:
    """A spam violation of ``acct_1`` decided under the default policy (90 days), recorded as
    begun first when ``record_start`` (as ``serve`` does)."""
    with open_system(database_url, clock) as default:
        if record_start:
            policy_activations.record(default.engine, default.policy, clock())
        first = report(default, "acct_1", "spam")
    assert {e.metadata["strike_lookback"] for e in first.events} == {"90d"}
    return first


def short_policy(tmp_path: Path) -> Path:
    """A policy file whose strikes count for 30 days."""
    short = tmp_path / "short.toml"
    short.write_text('version = "aup-short"\nstrike_lookback = "30d"\n', encoding="utf-8")
    return short


def test_a_shorter_lookback_later_leaves_past_standings_as_the_policy_of_the_day_drew_them(
    database_url: str, tmp_path: Path
) -> None:
    clock = FakeClock()
    first = decided_under_the_default_policy(database_url, clock)
    assert types_of(first.events) == ["ViolationReported", "NoticeIssued", "RemediationRequested"]

    clock.advance(40 * DAY)
    with open_system(database_url, clock, short_policy(tmp_path)) as system:
        service = system.service
        # Now: the running policy's 30 days, by which the day-0 strike has run out...
        assert service.standing("acct_1").strikes == 0
        # ...and on day 35 as the default policy that decided drew it, whoever reads it now.
        day_35 = service.standing("acct_1", T0 + 35 * DAY)
        assert day_35.strikes == 1
        assert day_35.open_violations == (first.events[0].data["violation_id"],)
        # With no record that the new policy began (``open_system`` is not ``serve``: it records
        # none; test_policy_activations has the record) and until the new policy acts on the
        # account, a standing as of now is the one the old policy drew.
        assert service.standing("acct_1", clock()).strikes == 1

        # The new policy decides with its own lookback: no prior strike, a first-time minor.
        second = report(system, "acct_1", "spam")
        assert types_of(second.events) == types_of(first.events)
        assert {e.metadata["strike_lookback"] for e in second.events} == {"30d"}
        assert second.standing.strikes == 1
        assert service.standing("acct_1", T0 + 35 * DAY) == day_35  # the past is unchanged
        assert service.standing("acct_1", T0 + 41 * DAY).strikes == 1  # the 30-day policy's

        changes = [entry.change.get("strikes") for entry in service.history("acct_1")]
        assert changes == [{"from": 0, "to": 1}, None, None, {"from": 0, "to": 1}, None, None]
        assert [e.metadata["policy_version"] for e in events_of(system, "acct_1")] == [
            *["aup-2026-11"] * 3,
            *["aup-short"] * 3,
        ]
        assert_account_consistent(system, "acct_1", T0 + 40 * DAY)


def test_a_standing_as_of_counts_with_the_policy_begun_after_the_account_s_last_event(
    database_url: str, tmp_path: Path
) -> None:
    clock = FakeClock()
    decided_under_the_default_policy(database_url, clock, record_start=True)
    clock.advance(40 * DAY)
    with open_system(database_url, clock, short_policy(tmp_path)) as system:
        service = system.service
        # Before the 30-day policy is recorded: the lookback the log holds (90 days).
        assert service.standing("acct_1", clock()).strikes == 1
        policy_activations.record(system.engine, system.policy, clock())
        clock.advance(timedelta(seconds=1))
        # From its start on, a standing as of now is the standing now: the 30 days the next
        # decision counts with, by which the strike of day 0 has run out.
        assert service.standing("acct_1", clock()) == service.standing("acct_1")
        assert service.standing("acct_1", clock()).strikes == 0
        # Before it began, the past is as the 90-day policy drew it.
        assert service.standing("acct_1", T0 + 39 * DAY).strikes == 1

        # Once the new policy acts on the account, its event is the later word (30 days too).
        second = report(system, "acct_1", "spam")
        assert {e.metadata["strike_lookback"] for e in second.events} == {"30d"}
        assert service.standing("acct_1", clock()).strikes == 1
        assert service.standing("acct_1", clock()) == service.standing("acct_1")


def test_an_old_process_acting_after_the_new_policy_began_holds_until_a_later_start(
    database_url: str, tmp_path: Path
) -> None:
    """A rolling update that starts the new processes before it stops the old ones: an event an
    old process records after the new policy's start is the later word for its account, until
    a process of the new policy starts after it (docs/operations.md, "Changing the policy")."""
    clock = FakeClock()
    decided_under_the_default_policy(database_url, clock, record_start=True)
    clock.advance(40 * DAY)
    with (
        open_system(database_url, clock, short_policy(tmp_path)) as new,
        open_system(database_url, clock) as old,
    ):
        policy_activations.record(new.engine, new.policy, clock())  # the new one starts
        clock.advance(timedelta(minutes=1))
        # The old process, still serving, decides on the account with its 90 days: the day-0
        # strike counts, a second minor violation.
        late = report(old, "acct_1", "spam")
        assert {e.metadata["strike_lookback"] for e in late.events} == {"90d"}
        clock.advance(timedelta(minutes=1))
        # Read from a process of the new policy: now, its 30 days (one strike, the late one);
        # as of now, the lookback the account's last event recorded (both strikes).
        assert new.service.standing("acct_1").strikes == 1
        assert new.service.standing("acct_1", clock()).strikes == 2
        # The old process stops; one of the new policy starts after it: settled.
        policy_activations.record(new.engine, new.policy, clock())
        clock.advance(timedelta(seconds=1))
        assert new.service.standing("acct_1", clock()) == new.service.standing("acct_1")
        assert new.service.standing("acct_1", clock()).strikes == 1
