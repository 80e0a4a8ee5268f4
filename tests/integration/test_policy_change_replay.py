"""A policy change does not rewrite the past, on SQLite and PostgreSQL: POLICY.md, "replaying the
log gives the standing that the policy of the day produced".

One account's violation is decided under the default policy (strikes count for 90 days); the
deployment then runs a policy whose strikes count for 30. The service of the new policy answers
the standing now with its own lookback, as its next decision counts, and a past standing and the
history with the lookback each event recorded (``projections.lookback``), from the log alone.
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

DAY = timedelta(days=1)


def test_a_shorter_lookback_later_leaves_past_standings_as_the_policy_of_the_day_drew_them(
    database_url: str, tmp_path: Path
) -> None:
    clock = FakeClock()
    with open_system(database_url, clock) as default:
        first = report(default, "acct_1", "spam")
    assert types_of(first.events) == ["ViolationReported", "NoticeIssued", "RemediationRequested"]
    assert {e.metadata["strike_lookback"] for e in first.events} == {"90d"}

    short = tmp_path / "short.toml"
    short.write_text('version = "aup-short"\nstrike_lookback = "30d"\n', encoding="utf-8")
    clock.advance(40 * DAY)
    with open_system(database_url, clock, short) as system:
        service = system.service
        # Now: the running policy's 30 days, by which the day-0 strike has run out...
        assert service.standing("acct_1").strikes == 0
        # ...and on day 35 as the default policy that decided drew it, whoever reads it now.
        day_35 = service.standing("acct_1", T0 + 35 * DAY)
        assert day_35.strikes == 1
        assert day_35.open_violations == (first.events[0].data["violation_id"],)
        # Until the new policy acts on the account, the log holds only what the old one drew:
        # a standing read as of now from the log is that one (README, "A policy change").
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
