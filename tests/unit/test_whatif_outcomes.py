"""``whatif.outcome_of``: the harshest restriction decided on one violation (pure)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from enforcement.whatif import (
    AccountWhatIf,
    Difference,
    Outcome,
    WhatIfSummary,
    change,
    outcome_of,
)

AT = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


@dataclass
class Decision:
    type: str
    data: dict[str, Any] = field(default_factory=dict)
    occurred_at: datetime = AT


def test_a_held_suspension_restricts_nothing_and_an_ordinary_one_does() -> None:
    """A suspension held behind a longer one (``held_by``) is no restriction when decided, so
    a log recorded before such suspensions existed (it has none) compares equal."""
    until = "2026-12-24T10:00:00.000000Z"
    held = Decision("AccountSuspended", {"until": until, "held_by": "sus_1"})
    ordinary = Decision("AccountSuspended", {"until": until, "held_by": None})
    before_held_by = Decision("AccountSuspended", {"until": until})

    assert outcome_of([held]) == outcome_of([]) == Outcome()
    assert outcome_of([ordinary]).kind == "suspension"
    assert outcome_of([before_held_by]) == outcome_of([ordinary])


WEEK = timedelta(days=7)
# From mildest to harshest: kind, then a lower throttle factor, then a longer span (an
# indefinite one longest), then a referral.
LADDER = [
    Outcome(),
    Outcome("warning"),
    Outcome("throttle", WEEK, 0.5),
    Outcome("throttle", WEEK, 0.25),
    Outcome("throttle", 2 * WEEK, 0.25),
    Outcome("throttle", None, 0.25),
    Outcome("suspension", WEEK),
    Outcome("suspension"),
    Outcome("termination"),
    Outcome("termination", referral=True),
]


def test_each_outcome_is_harsher_than_those_before_it_on_the_ladder() -> None:
    for index, milder in enumerate(LADDER):
        assert change(milder, milder) is None
        for harsher in LADDER[index + 1 :]:
            assert change(milder, harsher) == ("more" if milder.kind == "none" else "harsher")
            assert change(harsher, milder) == ("fewer" if milder.kind == "none" else "milder")


def test_outcomes_describe_themselves_in_json() -> None:
    texts = [outcome.describe() for outcome in LADDER]
    throttle = Outcome("throttle", timedelta(hours=36), 0.1)

    assert texts == [
        "none",
        "warning",
        "throttle to 50% for 7 days",
        "throttle to 25% for 7 days",
        "throttle to 25% for 14 days",
        "throttle to 25% for ever",
        "suspension for 7 days",
        "suspension indefinitely",
        "termination",
        "termination and referral",
    ]
    assert Outcome("suspension", timedelta(days=1)).describe() == "suspension for 1 day"
    assert throttle.to_json() == {
        "kind": "throttle",
        "seconds": 129_600,
        "factor": 0.1,
        "referral": False,
        "text": "throttle to 10% for 36 h",
    }
    assert Outcome("suspension").to_json()["seconds"] is None


def test_the_harshest_decision_on_a_violation_is_its_outcome() -> None:
    """Spans run from the decision's ``occurred_at``; an authority referral goes with a
    termination."""
    decisions = [
        Decision("RemediationRequested"),
        Decision("ThrottleApplied", {"factor": 0.5, "expires_at": "2026-12-01T10:00:00Z"}),
        Decision("ThrottleApplied", {"factor": 0.25, "expires_at": "2026-11-25T10:00:00Z"}),
        Decision("AccountSuspended", {"until": "2026-11-26T10:00:00Z"}),
    ]

    assert outcome_of(decisions[:1]) == Outcome("warning")
    assert outcome_of(decisions[:2]) == Outcome("throttle", WEEK, 0.5)
    assert outcome_of(decisions[:3]) == Outcome("throttle", timedelta(days=1), 0.25)
    assert outcome_of(decisions) == Outcome("suspension", timedelta(days=2))
    assert outcome_of([Decision("AccountSuspended", {"until": None})]) == Outcome("suspension")
    referred = [Decision("AuthorityReferralOpened"), Decision("AccountTerminated")]
    assert outcome_of(referred) == Outcome("termination", referral=True)
    assert outcome_of(referred[1:]) == Outcome("termination")


def test_differences_and_their_totals_in_json() -> None:
    """An account's differences, its totals per change (every change named, those it lacks at
    0), and the summary's totals over every account, keeping the accounts that differ."""
    warning, week = Outcome("warning"), Outcome("suspension", WEEK)
    harsher = Difference("acct_1", "vio_1", "spam", AT, warning, week, "harsher")
    fewer = Difference("acct_1", "vio_2", "fraud", AT + WEEK, week, Outcome(), "fewer")
    differs = AccountWhatIf("acct_1", violations=3, differences=[harsher, fewer, harsher])
    summary = WhatIfSummary("strict", AT)

    summary.add(differs)
    summary.add(AccountWhatIf("acct_2", violations=2))
    summary.add(AccountWhatIf("acct_3", violations=1, differences=[fewer]), keep=False)
    summary.recorded_policies.update(["default-1"] * 6)

    assert harsher.to_json() == {
        "account_id": "acct_1",
        "violation_id": "vio_1",
        "category": "spam",
        "recorded_at": "2026-11-24T10:00:00.000000Z",
        "recorded": warning.to_json(),
        "simulated": week.to_json(),
        "change": "harsher",
    }
    assert differs.to_json() == {
        "account_id": "acct_1",
        "violations": 3,
        "totals": {"more": 0, "fewer": 1, "harsher": 2, "milder": 0},
        "differences": [harsher.to_json(), fewer.to_json(), harsher.to_json()],
    }
    assert summary.to_json() == {
        "policy_version": "strict",
        "since": "2026-11-24T10:00:00.000000Z",
        "accounts": 3,
        "violations": 6,
        "recorded_policy_versions": {"default-1": 6},
        "totals": {"more": 0, "fewer": 2, "harsher": 2, "milder": 0},
        "differing_violations": 4,
        "accounts_with_differences": [differs.to_json()],
    }
    assert WhatIfSummary("strict", None).to_json()["since"] is None
