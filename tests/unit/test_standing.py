"""The standing fold: semantics of each event, the view at an instant, and properties."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from events import RecordedEvent
from events.timefmt import format_time
from projections import aup_events as ev
from projections.standing import (
    TABLES,
    Standing,
    StandingState,
    advance_all,
    apply,
    apply_all,
    fold,
    fold_new,
    remediation_is_open,
    state_at,
    view,
)

T0 = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
LOOKBACK = timedelta(days=90)
SOR = {"ground": "AUP §2"}
CONTRACT_KEYS = [
    "account_id",
    "status",
    "strikes",
    "open_violations",
    "open_remediations",
    "active_throttles",
    "suspension",
    "terminated",
    "adult_content_approved",
    "open_abuse_reports",
    "open_appeals",
    "version",
    "as_of",
]


def t(days: float = 0) -> datetime:
    return T0 + timedelta(days=days)


def ts(days: float) -> str:
    return format_time(t(days))


def records(
    steps: Sequence[tuple[Any, datetime]], account_id: str = "acct_1", start: int = 0
) -> list[RecordedEvent]:
    """Payloads recorded at the given times, versions from ``start + 1``, event ids ``e<v>``."""
    out = []
    for offset, (payload, at) in enumerate(steps, start=start + 1):
        new = ev.CODEC.encode(payload, occurred_at=at, event_id=f"e{offset}")
        data = json.loads(json.dumps(new.data))
        out.append(
            RecordedEvent(
                offset, new.event_id, account_id, offset, new.type, 1, data, {}, at, at, "", ""
            )
        )
    return out


def standing_of(steps: Sequence[tuple[Any, datetime]], as_of: datetime) -> Standing:
    return fold("acct_1", records(steps), as_of, LOOKBACK)


def violation(
    vid: str, category: str = "spam", severity: str = "medium", strike: bool = True
) -> Any:
    return ev.ViolationReported(
        vid, category, severity, None, None, None, "automated", None, None, None, strike
    )


# --- the contract shape -----------------------------------------------------------------------


def test_an_account_without_events_is_in_good_standing_at_version_0() -> None:
    standing = fold("acct_9", [], t(), LOOKBACK)
    assert standing.to_json() == {
        "account_id": "acct_9",
        "status": "good_standing",
        "strikes": 0,
        "open_violations": [],
        "open_remediations": [],
        "active_throttles": [],
        "suspension": None,
        "terminated": False,
        "adult_content_approved": False,
        "open_abuse_reports": 0,
        "open_appeals": 0,
        "version": 0,
        "as_of": "2026-11-24T10:00:00.000000Z",
    }


def test_to_json_has_exactly_the_contract_keys_and_nested_shapes() -> None:
    standing = standing_of(
        [
            (violation("vio_1"), t()),
            (ev.RemediationRequested("rem_1", ["vio_1"], ts(7), SOR), t()),
            (ev.ThrottleApplied("thr_1", "key_1", 0.5, ts(1), "r", SOR), t()),
            (ev.AccountSuspended("sus_1", ts(3), "r", SOR), t()),
        ],
        t(0.5),
    )
    body = standing.to_json()
    assert list(body) == CONTRACT_KEYS
    assert body["open_remediations"] == [
        {"remediation_id": "rem_1", "due_at": ts(7), "violation_ids": ["vio_1"]}
    ]
    assert body["active_throttles"] == [
        {"throttle_id": "thr_1", "key_id": "key_1", "factor": 0.5, "expires_at": ts(1)}
    ]
    assert body["suspension"] == {
        "suspension_id": "sus_1",
        "since": ts(0),
        "until": ts(3),
        "reason": "r",
    }
    assert body["version"] == 4
    assert body["as_of"] == ts(0.5)
    assert Standing.from_json(body) == standing


# --- strikes --------------------------------------------------------------------------------


def test_a_strike_counts_for_the_lookback_from_when_it_occurred() -> None:
    steps = [(violation("vio_1"), t())]
    assert standing_of(steps, t(89.9)).status == "warned"
    assert standing_of(steps, t(89.9)).strikes == 1
    ended = standing_of(steps, t(90))
    assert (ended.status, ended.strikes, ended.open_violations) == ("good_standing", 0, ())


def test_sustained_abuse_is_a_violation_but_no_strike() -> None:
    standing = standing_of([(violation("vio_1", "sustained_abuse", "low", False), t())], t())
    assert standing.strikes == 0
    assert standing.open_violations == ("vio_1",)
    assert standing.status == "good_standing"


def test_a_dismissed_violation_gives_no_strike_and_is_not_open() -> None:
    steps = [(violation("vio_1"), t()), (ev.ViolationDismissed("vio_1", "mistake"), t(1))]
    standing = standing_of(steps, t(1))
    assert (standing.strikes, standing.open_violations, standing.status) == (0, (), "good_standing")


# --- time-bound states ----------------------------------------------------------------------


def test_a_suspension_ends_by_itself_at_until() -> None:
    steps = [(ev.AccountSuspended("sus_1", ts(7), "r", SOR), t())]
    assert standing_of(steps, t(6.99)).status == "suspended"
    after = standing_of(steps, t(7))
    assert (after.status, after.suspension) == ("good_standing", None)


def test_an_indefinite_suspension_lasts_until_ended_or_reinstated() -> None:
    suspended = (ev.AccountSuspended("sus_1", None, "r", SOR), t())
    assert standing_of([suspended], t(1000)).status == "suspended"
    other = (ev.SuspensionEnded("sus_0", "not this one"), t(1))
    assert standing_of([suspended, other], t(2)).status == "suspended"
    ended = (ev.SuspensionEnded("sus_1", "served"), t(1))
    assert standing_of([suspended, ended], t(2)).status == "good_standing"
    reinstated = (ev.AccountReinstated("operator"), t(1))
    assert standing_of([suspended, reinstated], t(2)).status == "good_standing"


def test_a_later_suspension_replaces_the_earlier() -> None:
    steps = [
        (ev.AccountSuspended("sus_1", ts(7), "r", SOR), t()),
        (ev.AccountSuspended("sus_2", ts(30), "r", SOR), t(1)),
    ]
    standing = standing_of(steps, t(8))
    assert standing.suspension is not None
    assert standing.suspension.suspension_id == "sus_2"


def test_a_throttle_ends_at_expiry_or_when_lifted() -> None:
    applied = (ev.ThrottleApplied("thr_1", None, 0.25, ts(7), "r", SOR), t())
    assert standing_of([applied], t(6)).status == "throttled"
    assert standing_of([applied], t(7)).active_throttles == ()
    lifted = (ev.ThrottleLifted("thr_1", "appeal"), t(1))
    assert standing_of([applied, lifted], t(2)).status == "good_standing"
    forever = (ev.ThrottleApplied("thr_2", "key_1", 0.5, None, "r", SOR), t())
    assert standing_of([forever], t(999)).active_throttles[0].key_id == "key_1"


def closing_events() -> list[Any]:
    """The three ways a remediation closes (of ``rem_1``, for ``vio_1``)."""
    return [
        ev.RemediationCompleted("rem_1", "done"),
        ev.RemediationExpired("rem_1", SOR),
        ev.ViolationDismissed("vio_1", "mistake"),
    ]


def test_a_remediation_is_open_until_completed_expired_or_dismissed() -> None:
    base = [
        (violation("vio_1"), t()),
        (ev.RemediationRequested("rem_1", ["vio_1"], ts(7), SOR), t()),
    ]
    assert standing_of(base, t(1)).status == "remediation_due"
    overdue = standing_of(base, t(8))
    assert overdue.status == "remediation_due"
    assert [r.remediation_id for r in overdue.overdue_remediations] == ["rem_1"]
    assert standing_of(base, t(1)).overdue_remediations == ()
    # Overdue from its due time on, when the policy expires it and refuses its completion.
    assert len(standing_of(base, t(7)).overdue_remediations) == 1
    assert standing_of(base, t(7) - timedelta(microseconds=1)).overdue_remediations == ()
    for closing in closing_events():
        standing = standing_of([*base, (closing, t(2))], t(3))
        assert standing.open_remediations == ()
        assert standing.status in ("warned", "good_standing")
    # The view (over the records open_items keeps) and ``remediation_is_open`` (over every record)
    # agree on every status.
    for steps in ([*base], *([*base, (c, t(2))] for c in closing_events())):
        state = state_at("acct_1", records(steps), t(3))
        by_rule = [
            r.remediation_id for r in state.remediations.values() if remediation_is_open(state, r)
        ]
        in_view = [r.remediation_id for r in view(state, t(3), LOOKBACK).open_remediations]
        assert by_rule == in_view


def test_a_remediation_is_dismissed_when_every_violation_it_names_is() -> None:
    both = [
        (violation("vio_1"), t()),
        (violation("vio_2"), t()),
        (ev.RemediationRequested("rem_1", ["vio_1", "vio_2"], ts(7), SOR), t()),
        (ev.ViolationDismissed("vio_1", "mistake"), t(1)),
    ]
    one_left = apply_all(StandingState.empty("acct_1"), records(both))
    assert one_left.remediations["rem_1"].status == "open"

    rest = records([(ev.ViolationDismissed("vio_2", "mistake"), t(2))], start=len(both))
    none_left = apply_all(one_left, rest)
    assert none_left.remediations["rem_1"].status == "dismissed"
    assert view(none_left, t(3), LOOKBACK).open_remediations == ()

    # Asked for after its only violation was dismissed: never owed.
    late = [
        (violation("vio_3"), t()),
        (ev.ViolationDismissed("vio_3", "mistake"), t(1)),
        (ev.RemediationRequested("rem_2", ["vio_3"], ts(7), SOR), t(2)),
    ]
    assert (
        apply_all(StandingState.empty("acct_1"), records(late)).remediations["rem_2"].status
        == "dismissed"
    )


def test_termination_and_reinstatement() -> None:
    terminated = [(ev.AccountTerminated("critical_violation", SOR), t())]
    assert standing_of(terminated, t(1)).status == "terminated"
    assert standing_of(terminated, t(1)).terminated is True
    reinstated = [*terminated, (ev.AccountReinstated("appeal apl_1 overturned"), t(1))]
    assert standing_of(reinstated, t(2)).terminated is False
    state = state_at("acct_1", records(reinstated), t(2))
    assert (state.terminated, state.termination_event_id) == (False, None)


@pytest.mark.parametrize(
    "ending",
    [ev.AccountReinstated("operator", SOR, "suspension"), ev.SuspensionEnded("sus_ind", "served")],
)
def test_a_reinstatement_or_an_end_ends_the_suspensions_the_current_one_replaced(
    ending: Any,
) -> None:
    steps = [
        (ev.AccountSuspended("sus_7d", ts(7), "r", SOR), t()),
        (ev.AccountSuspended("sus_ind", None, "r", SOR), t(1)),
    ]
    assert len(state_at("acct_1", records(steps), t(2)).replaced_suspensions) == 1
    state = state_at("acct_1", records([*steps, (ending, t(2))]), t(2))
    assert (state.suspension, state.replaced_suspensions) == (None, ())


def test_a_standing_as_of_an_instant_is_a_prefix_of_the_stream() -> None:
    """Processes with clocks apart may record version 3 at an earlier time than version 2 (each
    takes its time before the append). As of an instant between the two, the standing is the
    stream up to the first event recorded after it: never the reinstatement without the
    suspension it ends."""
    steps = [
        (violation("vio_1"), t(0)),
        (ev.AccountSuspended("sus_1", None, "r", SOR), t(2)),
        (ev.AccountReinstated("operator"), t(1)),  # its process's clock was a day behind
    ]
    between = standing_of(steps, t(1.5))
    assert (between.version, between.status) == (1, "warned")
    assert standing_of(steps, t(3)).version == 3


def _suspension(steps: Sequence[tuple[Any, datetime]], as_of: datetime) -> str | None:
    s = standing_of(steps, as_of).suspension
    return None if s is None else s.suspension_id


def test_an_overturned_suspension_gives_back_the_one_it_replaced_while_it_runs() -> None:
    short = (ev.AccountSuspended("sus_7d", ts(7), "high_severity_first", SOR), t())
    long = (ev.AccountSuspended("sus_ind", None, "high_severity_repeat", SOR), t(1))
    overturned = (ev.SuspensionEnded("sus_ind", "overturned"), t(2))
    assert _suspension([short, long], t(3)) == "sus_ind"
    assert _suspension([short, long, overturned], t(3)) == "sus_7d"
    assert standing_of([short, long, overturned], t(3)).status == "suspended"
    assert _suspension([short, long, overturned], t(7)) is None  # ran out by its own until
    state = apply_all(StandingState.empty("acct_1"), records([short, long, overturned]))
    assert state.replaced_suspensions == ()
    # One that had already run out when it was replaced is not kept.
    late = (ev.AccountSuspended("sus_ind", None, "high_severity_repeat", SOR), t(8))
    state = apply_all(StandingState.empty("acct_1"), records([short, late]))
    assert state.replaced_suspensions == ()


def test_overturns_give_back_the_replaced_suspensions_one_after_another() -> None:
    steps = [
        (ev.AccountSuspended("sus_7d", ts(7), "r", SOR), t()),
        (ev.AccountSuspended("sus_30d", ts(30), "r", SOR), t(1)),
        (ev.AccountSuspended("sus_ind", None, "r", SOR), t(2)),
        (ev.SuspensionEnded("sus_ind", "overturned"), t(3)),
    ]
    assert _suspension(steps, t(3)) == "sus_30d"
    steps.append((ev.SuspensionEnded("sus_30d", "overturned"), t(4)))
    assert _suspension(steps, t(4)) == "sus_7d"


def test_a_suspension_ending_as_another_replaces_the_current_one_is_not_kept() -> None:
    steps = [
        (ev.AccountSuspended("sus_7d", ts(7), "r", SOR), t()),
        (ev.AccountSuspended("sus_ind", None, "r", SOR), t(1)),
        (ev.AccountSuspended("sus_ind2", None, "r", SOR), t(7)),
    ]
    state = state_at("acct_1", records(steps), t(7))
    assert [r.suspension_id for r in state.replaced_suspensions] == ["sus_ind"]


def test_an_overturned_replaced_suspension_never_comes_back() -> None:
    short = (ev.AccountSuspended("sus_7d", ts(7), "r", SOR), t())
    long = (ev.AccountSuspended("sus_ind", None, "r", SOR), t(1))
    steps = [short, long, (ev.SuspensionEnded("sus_7d", "overturned"), t(2))]
    assert _suspension(steps, t(3)) == "sus_ind"
    assert _suspension([*steps, (ev.SuspensionEnded("sus_ind", "overturned"), t(3))], t(3)) is None


@pytest.mark.parametrize(
    "ending",
    [
        ev.SuspensionEnded("sus_1d", "expired"),
        ev.AccountReinstated("operator", SOR, "suspension"),
        ev.AccountReinstated("operator", SOR, "all"),
    ],
)
def test_a_suspension_that_runs_out_or_a_reinstatement_ends_every_suspension(ending: Any) -> None:
    """As before replaced suspensions were kept: an operator's shorter suspension that replaced
    a longer one frees the account when it ends, so older logs keep their meaning."""
    steps = [
        (ev.AccountSuspended("sus_30d", ts(30), "minor_third_strike", SOR), t()),
        (ev.AccountSuspended("sus_1d", ts(2), "operator", SOR), t(1)),
        (ending, t(2)),
    ]
    assert _suspension(steps, t(3)) is None
    assert apply_all(StandingState.empty("acct_1"), records(steps)).replaced_suspensions == ()


@pytest.mark.parametrize(
    ("present", "status"),
    [
        ({"terminated", "suspended", "throttled", "remediation", "strike"}, "terminated"),
        ({"suspended", "throttled", "remediation", "strike"}, "suspended"),
        ({"throttled", "remediation", "strike"}, "throttled"),
        ({"remediation", "strike"}, "remediation_due"),
        ({"strike"}, "warned"),
        (set(), "good_standing"),
    ],
)
def test_status_is_the_most_severe_that_holds(present: set[str], status: str) -> None:
    builders = {
        "strike": violation("vio_1"),
        "remediation": ev.RemediationRequested("rem_1", [], ts(7), SOR),
        "throttled": ev.ThrottleApplied("thr_1", None, 0.25, ts(7), "r", SOR),
        "suspended": ev.AccountSuspended("sus_1", None, "r", SOR),
        "terminated": ev.AccountTerminated("r", SOR),
    }
    steps = [(builders[name], t()) for name in builders if name in present]
    assert standing_of(steps, t(1)).status == status


def test_abuse_reports_appeals_approval_and_limits_are_kept() -> None:
    steps = [
        (ev.AbuseReportReceived("rep_1", "spam", "d", None, None), t()),
        (ev.AbuseReportReceived("rep_2", "spam", "d", None, None), t()),
        (ev.AbuseReportTriaged("rep_2", "rejected", None, None), t()),
        (ev.AccountTerminated("r", SOR), t()),
        (ev.AppealFiled("apl_1", "e4", "please"), t()),
        (ev.AdultContentApprovalChanged(True, "verified"), t()),
        (ev.RateLimitsConfigured("key_1", 60, 1000), t()),
        (ev.RateLimitsConfigured(None, 100, 5000), t()),
    ]
    state = state_at("acct_1", records(steps), t())
    standing = view(state, t(), LOOKBACK)
    assert (standing.open_abuse_reports, standing.open_appeals) == (1, 1)
    assert standing.adult_content_approved is True
    assert state.decisions["e4"].open_appeal_id == "apl_1"
    assert state.key_rate_limits["key_1"].requests_per_minute == 60
    assert state.account_rate_limit is not None and state.account_rate_limit.tokens_per_day == 5000
    decided = apply_all(
        state, records([(ev.AppealDecided("apl_1", "e4", "overturned", "r", SOR), t())], start=8)
    )
    assert decided.decisions["e4"].overturned is True
    assert decided.decisions["e4"].open_appeal_id is None
    assert view(decided, t(), LOOKBACK).open_appeals == 0


def test_decisions_link_their_violations() -> None:
    steps = [
        (violation("vio_1"), t()),
        (ev.ThrottleApplied("thr_1", None, 0.25, ts(7), "r", SOR, ["vio_1"]), t(1)),
    ]
    state = state_at("acct_1", records(steps), t(1))
    decision = state.decisions["e2"]
    assert (decision.type, decision.target_id, decision.violation_ids) == (
        "ThrottleApplied",
        "thr_1",
        ("vio_1",),
    )
    assert decision.recorded_at == ts(1)
    assert state.violations["vio_1"].decision_event_ids == ("e2",)


def test_a_held_suspension_is_a_decision_on_its_violations() -> None:
    steps = [
        (ev.AccountSuspended("sus_ind", None, "r", SOR), t()),
        (violation("vio_1", severity="high"), t(1)),
        (ev.AccountSuspended("sus_7d", ts(8), "r", SOR, ["vio_1"], held_by="sus_ind"), t(1)),
    ]
    state = state_at("acct_1", records(steps), t(1))
    assert state.suspension is not None and state.suspension.suspension_id == "sus_ind"
    assert [r.suspension_id for r in state.replaced_suspensions] == ["sus_7d"]
    decision = state.decisions["e3"]
    assert (decision.type, decision.target_id, decision.violation_ids) == (
        "AccountSuspended",
        "sus_7d",
        ("vio_1",),
    )
    assert state.violations["vio_1"].decision_event_ids == ("e3",)


def test_held_suspensions_are_kept_in_order_of_their_end_the_indefinite_last() -> None:
    def held(sid: str, until: str | None) -> tuple[Any, datetime]:
        return (ev.AccountSuspended(sid, until, "r", SOR, held_by="sus_a"), t(1))

    steps = [
        (ev.AccountSuspended("sus_a", None, "r", SOR), t()),
        held("sus_30d", ts(30)),
        held("sus_ind", None),
        held("sus_10d", ts(10)),
    ]
    state = state_at("acct_1", records(steps), t(1))
    assert [r.suspension_id for r in state.replaced_suspensions] == [
        "sus_10d",
        "sus_30d",
        "sus_ind",
    ]
    # An overturn of the current one gives back the longest.
    assert (
        _suspension([*steps, (ev.SuspensionEnded("sus_a", "overturned"), t(2))], t(3)) == "sus_ind"
    )


# --- apply ----------------------------------------------------------------------------------


def test_apply_leaves_its_argument_alone_and_ignores_redelivery() -> None:
    first, second = records([(violation("vio_1"), t()), (violation("vio_2"), t())])
    state = apply(StandingState.empty("acct_1"), first)
    before = state.to_json()
    after = apply(state, second)
    assert state.to_json() == before
    assert after.version == 2
    assert apply(after, second) is after
    assert apply(after, first) is after


def test_advance_notes_the_keys_each_step_changed_as_apply_does() -> None:
    """``advance`` changes the state it is given, but its tables note, as ``apply``'s copy's do,
    only what the step changed (``changes_since``: what ``projections.open_items`` carries)."""
    steps = [records([(violation(f"vio_{i}"), t(i))], start=i) for i in range(3)]
    copied = [apply_all(StandingState.empty("acct_1"), steps[0])]
    for step in steps[1:]:
        copied.append(apply_all(copied[-1], step))
    advanced = StandingState.from_json(copied[0].to_json())  # plain tables, as from storage
    for i, step in enumerate(steps[1:], start=1):
        advanced = advance_all(advanced, step)
        assert advanced == copied[i]
        for name in TABLES:
            changes = advanced.changes_since(copied[i - 1], name)
            expected = copied[i].changes_since(copied[i - 1], name)
            assert changes is not None and expected is not None
            assert (changes.touched, changes.popped, changes.appended) == (
                expected.touched,
                expected.popped,
                expected.appended,
            )
        assert list(advanced.violations.touched) == [f"vio_{i}"]


def test_apply_refuses_another_accounts_event() -> None:
    (event,) = records([(violation("vio_1"), t())], account_id="acct_2")
    with pytest.raises(ValueError, match="acct_2"):
        apply(StandingState.empty("acct_1"), event)
    # Also at or below the state's version, where the event itself changes nothing.
    later = apply_all(StandingState.empty("acct_1"), records([(violation("vio_1"), t())] * 2))
    with pytest.raises(ValueError, match="acct_2"):
        apply(later, event)
    with pytest.raises(ValueError, match="acct_2"):
        apply_all(later, [event])


def test_an_event_type_the_fold_does_not_know_only_advances_the_version() -> None:
    unknown = RecordedEvent(1, "e1", "acct_1", 1, "ContactChanged", 1, {}, {}, t(), t(), "", "")
    state = apply(StandingState.empty("acct_1"), unknown)
    assert state.version == 1
    assert view(state, t(), LOOKBACK).status == "good_standing"


def test_fold_ignores_events_recorded_after_as_of() -> None:
    steps = [(violation("vio_1"), t()), (ev.AccountTerminated("r", SOR), t(2))]
    standing = standing_of(steps, t(1))
    assert (standing.version, standing.status) == (1, "warned")


def test_what_a_state_found_open_is_not_part_of_its_value() -> None:
    first = records([(violation("vio_1"), t())])
    second = records([(violation("vio_2"), t(1))], start=1)
    seen = apply_all(StandingState.empty("acct_1"), first)
    view(seen, t(), LOOKBACK)
    later = apply_all(seen, second)
    view(later, t(1), LOOKBACK)
    assert seen.open_items is not None and later.open_base is seen.open_items
    assert seen == fold_new("acct_1", first)
    assert later == fold_new("acct_1", first + second)


def test_from_json_leaves_the_json_it_reads_alone() -> None:
    steps = [
        (violation("vio_1"), t()),
        (ev.RemediationRequested("rem_1", ["vio_1"], ts(7), SOR), t()),
    ]
    data = apply_all(StandingState.empty("acct_1"), records(steps)).to_json()
    kept = json.loads(json.dumps(data))
    StandingState.from_json(data)
    assert data == kept  # lists stay lists (the records hold tuples)


@pytest.mark.parametrize("schema", [4, 99])
def test_state_json_from_another_schema_is_refused(schema: int) -> None:
    """4: the schema before the replaced suspensions kept one ending as its successor began."""
    data = StandingState.empty("a").to_json() | {"schema": schema}
    with pytest.raises(ValueError, match="schema"):
        StandingState.from_json(data)


# --- properties -----------------------------------------------------------------------------

_CATEGORIES = ["spam", "phishing", "sustained_abuse", "csam"]


def _pool(prefix: str) -> st.SearchStrategy[str]:
    return st.sampled_from([f"{prefix}_{i}" for i in range(4)])


def _times() -> st.SearchStrategy[str]:
    return st.integers(0, 200 * 24).map(lambda h: format_time(T0 + timedelta(hours=h)))


_maybe_time = st.none() | _times()
_vio_ids = st.lists(_pool("vio"), max_size=2)
_sor = st.just(SOR)
_text = st.sampled_from(["r", "mistake", "€ ok"])
_sev = st.sampled_from(ev.SEVERITIES)
_event_refs = st.sampled_from([f"e{i}" for i in range(1, 25)])

PAYLOADS = st.one_of(
    st.builds(
        ev.ViolationReported,
        _pool("vio"),
        st.sampled_from(_CATEGORIES),
        _sev,
        st.none() | _sev,
        st.none() | _pool("key"),
        st.none(),
        st.sampled_from(ev.DETECTIONS),
        st.none(),
        st.none() | _text,
        st.none() | _pool("rep"),
        st.booleans(),
    ),
    st.builds(ev.ViolationDismissed, _pool("vio"), _text, st.none() | _sor),
    st.builds(ev.AbuseReportReceived, _pool("rep"), st.just("spam"), _text, st.none(), st.none()),
    st.builds(
        ev.AbuseReportTriaged,
        _pool("rep"),
        st.sampled_from(ev.TRIAGE_OUTCOMES),
        st.none() | _sev,
        st.none() | _pool("vio"),
    ),
    st.builds(
        ev.NoticeIssued,
        _pool("ntc"),
        st.sampled_from(ev.NOTICE_KINDS),
        _event_refs,
        _vio_ids,
        _sor,
        _maybe_time,
    ),
    st.builds(ev.RemediationRequested, _pool("rem"), _vio_ids, _times(), _sor),
    st.builds(ev.RemediationCompleted, _pool("rem"), _text),
    st.builds(ev.RemediationExpired, _pool("rem"), _sor),
    st.builds(
        ev.ThrottleApplied,
        _pool("thr"),
        st.none() | _pool("key"),
        st.sampled_from([0.1, 0.25, 0.5, 1.0]),
        _maybe_time,
        _text,
        _sor,
        _vio_ids,
    ),
    st.builds(ev.ThrottleLifted, _pool("thr"), _text),
    st.builds(ev.AccountSuspended, _pool("sus"), _maybe_time, _text, _sor, _vio_ids),
    st.builds(ev.SuspensionEnded, _pool("sus"), st.sampled_from(["expired", "overturned"]) | _text),
    st.builds(ev.AccountReinstated, _text, st.none() | _sor),
    st.builds(ev.AccountTerminated, _text, _sor, _vio_ids),
    st.builds(ev.AuthorityReferralOpened, _pool("ref"), _vio_ids, st.just("csam"), _sor),
    st.builds(ev.AppealFiled, _pool("apl"), _event_refs, _text),
    st.builds(
        ev.AppealDecided,
        _pool("apl"),
        _event_refs,
        st.sampled_from(ev.APPEAL_OUTCOMES),
        _text,
        _sor,
    ),
    st.builds(ev.AdultContentApprovalChanged, st.booleans(), _text),
    st.builds(
        ev.RateLimitsConfigured,
        st.none() | _pool("key"),
        st.integers(1, 10_000),
        st.integers(1, 10**9),
    ),
)


@st.composite
def histories(draw: st.DrawFn) -> list[RecordedEvent]:
    """Random event sequences with times that only move forward, from T0 on."""
    payloads = draw(st.lists(PAYLOADS, max_size=30))
    gaps = draw(st.lists(st.integers(0, 20 * 24), min_size=len(payloads), max_size=len(payloads)))
    steps, hours = [], 0
    for payload, gap in zip(payloads, gaps, strict=True):
        hours += gap
        steps.append((payload, T0 + timedelta(hours=hours)))
    return records(steps)


def applied_in_steps(
    events: list[RecordedEvent], data: st.DataObject
) -> Iterator[tuple[StandingState, StandingState, int]]:
    """``apply_all`` of ``events`` cut at up to six places that ``data`` draws: for each step,
    the state before it, the state after it, and how many of the events that one holds."""
    cuts = sorted(data.draw(st.lists(st.integers(0, len(events)), max_size=6)))
    state, start = StandingState.empty("acct_1"), 0
    for cut in [*cuts, len(events)]:
        new = apply_all(state, events[start:cut])
        yield state, new, cut
        state, start = new, cut


def _as_of(events: list[RecordedEvent], extra_hours: int) -> datetime:
    last = events[-1].recorded_at if events else T0
    return last + timedelta(hours=extra_hours)


@settings(deadline=None)
@given(histories(), st.integers(0, 150 * 24))
def test_fold_is_deterministic_and_equals_applying_one_event_at_a_time(
    events: list[RecordedEvent], extra_hours: int
) -> None:
    as_of = _as_of(events, extra_hours)
    first = fold("acct_1", events, as_of, LOOKBACK)
    assert fold("acct_1", list(events), as_of, LOOKBACK) == first
    state = StandingState.empty("acct_1")
    for event in events:
        state = apply(state, event)
    assert view(state, as_of, LOOKBACK).to_json() == first.to_json()
    assert Standing.from_json(first.to_json()) == first


@settings(deadline=None)
@given(histories())
def test_state_survives_json_exactly(events: list[RecordedEvent]) -> None:
    state = apply_all(StandingState.empty("acct_1"), events)
    text = json.dumps(state.to_json())
    restored = StandingState.from_json(json.loads(text))
    assert restored == state
    assert json.dumps(restored.to_json()) == text


@settings(deadline=None)
@given(histories(), st.integers(1, 1000))
def test_as_of_before_the_first_event_is_good_standing_at_version_0(
    events: list[RecordedEvent], hours_before: int
) -> None:
    as_of = T0 - timedelta(hours=hours_before)
    standing = fold("acct_1", events, as_of, LOOKBACK)
    assert standing.to_json() == fold("acct_1", [], as_of, LOOKBACK).to_json()
    assert (standing.status, standing.version) == ("good_standing", 0)


@settings(deadline=None)
@given(histories(), st.integers(0, 100 * 24))
def test_dismissing_every_violation_leaves_no_strike(
    events: list[RecordedEvent], extra_hours: int
) -> None:
    state = apply_all(StandingState.empty("acct_1"), events)
    at = _as_of(events, 0)
    dismissals = [(ev.ViolationDismissed(vid, "all"), at) for vid in state.violations]
    dismissed = apply_all(state, records(dismissals, start=state.version))
    standing = view(dismissed, at + timedelta(hours=extra_hours), LOOKBACK)
    assert (standing.strikes, standing.open_violations) == (0, ())
    assert standing.status != "warned"


@settings(deadline=None)
@given(histories(), st.data())
def test_resuming_from_a_saved_state_equals_folding_from_scratch(
    events: list[RecordedEvent], data: st.DataObject
) -> None:
    split = data.draw(st.integers(0, len(events)))
    saved = json.dumps(apply_all(StandingState.empty("acct_1"), events[:split]).to_json())
    resumed = StandingState.from_json(json.loads(saved))
    for event in events[split:]:
        resumed = apply(resumed, event)
    scratch = apply_all(StandingState.empty("acct_1"), events)
    assert resumed == scratch
    as_of = _as_of(events, 1)
    assert view(resumed, as_of, LOOKBACK) == fold("acct_1", events, as_of, LOOKBACK)


@settings(deadline=None)
@given(histories())
def test_apply_never_changes_the_state_it_is_given(events: list[RecordedEvent]) -> None:
    state = StandingState.empty("acct_1")
    for event in events:
        before = state.to_json()
        after = apply(state, event)
        assert state.to_json() == before
        state = after


@settings(deadline=None)
@given(histories())
def test_fold_new_equals_apply_all_from_empty_and_stores_the_same_json(
    events: list[RecordedEvent],
) -> None:
    reference = apply_all(StandingState.empty("acct_1"), events)
    rebuilt = fold_new("acct_1", events)
    assert rebuilt == reference
    assert json.dumps(rebuilt.to_json()) == json.dumps(reference.to_json())
    assert rebuilt.changes_since(StandingState.empty("acct_1"), "violations") is None


def test_the_fast_init_of_records_and_payloads_is_the_dataclass_init() -> None:
    """``frozen.fast_init``: same defaults, factories, validation, immutability and equality."""
    import dataclasses

    from projections.standing import RemediationRecord, ViolationRecord

    record = ViolationRecord("v", "e", "spam", "low", "t", "automated", None, None, True)
    assert (record.dismissed, record.decision_event_ids) == (False, ())
    assert record == ViolationRecord(
        violation_id="v", event_id="e", category="spam", severity="low", occurred_at="t",
        detection="automated", description=None, key_id=None, strike=True,
    )  # fmt: skip
    assert dataclasses.replace(record, dismissed=True).dismissed
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.category = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        RemediationRecord("r", "e")  # type: ignore[call-arg]
    first, second = (
        ev.ThrottleApplied("t1", None, 0.5, None, "r", SOR),
        ev.ThrottleApplied("t2", None, 0.5, None, "r", SOR),
    )
    assert first.violation_ids == [] and first.violation_ids is not second.violation_ids
    with pytest.raises(ValueError, match="factor"):
        ev.ThrottleApplied("t", None, 2.0, None, "r", SOR)
    with pytest.raises(ValueError, match="severity"):
        ev.ViolationReported("v", "spam", "huge", None, None, None, "automated", None, None, None)


@settings(deadline=None)
@given(st.datetimes(timezones=st.just(UTC)))
def test_the_replays_time_texts_are_format_time(moment: datetime) -> None:
    """A rebuild reads times as text (SQLite's stored text, PostgreSQL's ``to_char``) and must
    get ``format_time``'s text, also for years before 1000."""
    from events.timefmt import canonical_time, sqlite_time_text, stamp_of_sqlite_time
    from projections.runner import _postgres_stamp

    expected = format_time(moment)
    assert stamp_of_sqlite_time(sqlite_time_text(moment)) == expected
    if moment.year >= 1000:  # parse_time cannot read format_time's years before 1000
        assert canonical_time(expected) == expected
    assert canonical_time(moment.isoformat()) == expected
    to_char = f"{moment.year:04d}" + moment.strftime("-%m-%dT%H:%M:%S.%fZ")
    assert _postgres_stamp(to_char) == expected


def test_canonical_time_still_refuses_what_parse_time_refuses() -> None:
    from events.timefmt import canonical_time

    for text in ("2026-13-01T00:00:00.000000Z", "2026-11-24T10:00:00.000000", "nonsense"):
        with pytest.raises(ValueError):
            canonical_time(text)


def test_apply_all_ignores_redelivery_and_keeps_the_last_events_time() -> None:
    remediation = ev.RemediationRequested("rem_1", ["vio_1"], ts(7), SOR)
    events = records([(violation("vio_1"), t()), (remediation, t(1))])
    state = apply_all(StandingState.empty("acct_1"), events)
    assert state.last_recorded_at == ts(1)
    # Both at or below its version (applied again, the decision would be linked twice).
    assert apply_all(state, events) == apply_all(state, events[1:]) == state
    assert apply_all(state, events[:1]) == state  # an older event redelivered alone
