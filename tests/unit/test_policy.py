"""The policy's decisions: POLICY.md's ladder row by row, missed remediations, appeals, triage."""

from __future__ import annotations

import itertools
import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enforcement import operator_decisions as ops
from enforcement.decider import with_decided
from enforcement.errors import Conflict, InvalidTransition, NotFound, ValidationFailed
from enforcement.policy import (
    CATEGORIES,
    DEFAULT_POLICY,
    Context,
    Policy,
    ViolationReport,
    decide_abuse_report,
    decide_appeal,
    decide_appeal_filing,
    decide_gate_abuse_report,
    decide_gate_sustained_abuse,
    decide_held,
    decide_remediation_expired,
    decide_triage,
    decide_violation,
    effective_severity,
    random_id,
    sustained_abuse_due,
    sustained_abuse_throttle_end,
)
from events import NewEvent, RecordedEvent
from events.timefmt import format_time, parse_time
from projections import aup_events as ev
from projections.reasons import NOTHING_TO_APPEAL_REDRESS
from projections.standing import (
    DECISION_TYPES,
    StandingState,
    active_suspension,
    apply_all,
    view,
)

P = DEFAULT_POLICY
T0 = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
SOR = {"ground": "AUP §2"}
METADATA_KEYS = {
    "policy_version",
    "strike_lookback",
    "actor",
    "causation_id",
    "correlation_id",
    "source",
}

# POLICY.md's category table: AUP sections, default severity, floor.
POLICY_TABLE = {
    "csam": ((2, 6), "critical", "critical"),
    "weapons_development": ((6,), "critical", "critical"),
    "violence_facilitation": ((2,), "high", "high"),
    "illegal_content": ((2,), "high", "medium"),
    "ip_infringement": ((2,), "medium", "low"),
    "spam": ((2,), "medium", "low"),
    "phishing": ((2,), "high", "medium"),
    "cyberweapons": ((2,), "high", "high"),
    "disinformation": ((2,), "medium", "low"),
    "safety_circumvention": ((2,), "high", "medium"),
    "personal_data_harvesting": ((2,), "high", "medium"),
    "impersonation": ((2,), "medium", "low"),
    "surveillance": ((2,), "high", "high"),
    "rate_limit_circumvention": ((3,), "medium", "low"),
    "sustained_abuse": ((3,), "low", "low"),
    "unapproved_adult_content": ((4,), "low", "low"),
    "missing_content_filtering": ((4,), "low", "low"),
    "safety_probing": ((5,), "medium", "low"),
    "model_extraction": ((5,), "high", "medium"),
    "training_data_extraction": ((5,), "high", "medium"),
}


@dataclass
class Account:
    """An in-memory stream: decisions are recorded and folded as the store would."""

    account_id: str = "acct_1"
    state: StandingState = field(default_factory=lambda: StandingState.empty("acct_1"))
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def new_id(self, prefix: str) -> str:
        return f"{prefix}_{next(self.ids)}"

    def ctx(self, now: datetime, actor: str = "reporter") -> Context:
        return Context(now=now, actor=actor, correlation_id="req_1", new_id=self.new_id)

    def record(self, new_events: Sequence[NewEvent], at: datetime) -> list[RecordedEvent]:
        recorded: list[RecordedEvent] = []
        for new in new_events:
            version = self.state.version + len(recorded) + 1
            data = json.loads(json.dumps(new.data))
            recorded.append(
                RecordedEvent(
                    version,
                    new.event_id,
                    self.account_id,
                    version,
                    new.type,
                    new.schema_version,
                    data,
                    new.metadata,
                    new.occurred_at,
                    at,
                    "",
                    "",
                )
            )
        self.state = apply_all(self.state, recorded)
        return recorded

    def given(self, payload: Any, at: datetime) -> str:
        """Record one fact directly (not through the policy); returns its event id."""
        new = ev.CODEC.encode(payload, occurred_at=at, event_id=str(uuid.uuid4()))
        self.record([new], at)
        return new.event_id

    def report(self, category: str, at: datetime, severity: str | None = None) -> list[NewEvent]:
        decided = decide_violation(
            P, self.state, ViolationReport(category, at, severity, description="d"), self.ctx(at)
        )
        self.record(decided, at)
        return decided

    def strike(self, vid: str, at: datetime, category: str = "spam", strike: bool = True) -> None:
        self.given(
            ev.ViolationReported(
                vid, category, "medium", None, None, None, "automated", None, None, None, strike
            ),
            at,
        )


def t(days: float = 0) -> datetime:
    return T0 + timedelta(days=days)


def types(events: Sequence[NewEvent]) -> list[str]:
    return [e.type for e in events]


def of_type(events: Sequence[NewEvent], name: str) -> NewEvent:
    (found,) = [e for e in events if e.type == name]
    return found


# --- severity -------------------------------------------------------------------------------


def test_the_category_table_is_policy_md() -> None:
    assert set(CATEGORIES) == set(POLICY_TABLE)
    for name, (sections, default, floor) in POLICY_TABLE.items():
        rule = CATEGORIES[name]
        assert (rule.sections, rule.default_severity, rule.floor) == (sections, default, floor)
        assert rule.refer_to_authorities == (name in ("csam", "weapons_development"))


@pytest.mark.parametrize("category", sorted(POLICY_TABLE))
def test_every_category_has_its_default_and_its_floor(category: str) -> None:
    _, default, floor = POLICY_TABLE[category]
    assert effective_severity(P, category, None) == default
    assert effective_severity(P, category, "low") == floor
    assert effective_severity(P, category, "critical") == "critical"


def test_a_reported_severity_between_floor_and_default_is_kept() -> None:
    assert effective_severity(P, "phishing", "medium") == "medium"
    assert effective_severity(P, "spam", "high") == "high"


def test_unknown_category_or_severity_is_a_validation_failure() -> None:
    with pytest.raises(ValidationFailed) as caught:
        effective_severity(P, "jaywalking", None)
    assert caught.value.code == "unknown_category"
    assert "spam" in caught.value.details[0]["allowed"]
    with pytest.raises(ValidationFailed):
        effective_severity(P, "spam", "apocalyptic")
    with pytest.raises(ValidationFailed):
        decide_violation(
            P,
            StandingState.empty("a"),
            ViolationReport("spam", T0, detection="rumour"),
            Context(T0, "r", "c"),
        )


def test_production_event_ids_are_time_ordered_and_injected_ones_deterministic() -> None:
    """``random_id`` (production) gives the store's version 7 ids, later ones sorting later, so
    the log's event id index grows at its right edge; an injected factory gives the same ids
    for the same calls."""
    report = ViolationReport("spam", T0, description="bulk mail")
    before = time.time_ns() // 1_000_000
    made = []
    for _ in range(3):
        made += [
            e.event_id
            for e in decide_violation(P, StandingState.empty("a"), report, Context(T0, "r", "c"))
        ]
        time.sleep(0.002)
    after = time.time_ns() // 1_000_000
    assert len(made) == 9 and len(set(made)) == 9
    assert all(uuid.UUID(i).version == 7 for i in made)
    stamps = [uuid.UUID(i).int >> 80 for i in made]  # Unix milliseconds of making
    assert all(before <= stamp <= after for stamp in stamps)
    # Later decisions sort later (2 ms apart). Within one decision the list is not the order
    # of making: a notice is listed before the remediation it announces, made after it.
    decisions = [stamps[i : i + 3] for i in range(0, 9, 3)]
    assert all(max(a) < min(b) for a, b in itertools.pairwise(decisions))

    def decided() -> list[str]:
        counter = itertools.count(1)
        ctx = Context(T0, "r", "c", new_id=lambda prefix: f"{prefix}_{next(counter)}")
        return [e.event_id for e in decide_violation(P, StandingState.empty("a"), report, ctx)]

    first = decided()
    assert first == decided()
    assert all(uuid.UUID(i).version == 5 for i in first)
    assert Context(T0, "r", "c").new_id is random_id


# --- the ladder, row by row -----------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """Given prior facts, when a violation is reported, then these events in this order."""

    category: str
    severity: str | None = None
    priors: tuple[tuple[str, float], ...] = ()  # (category, days before now)
    given: tuple[str, ...] = ()  # approved | terminated | suspended_indefinitely | suspended_<d>d
    expect: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()  # notice kinds, in order


NOW = t(100)
LADDER = {
    "critical terminates and refers csam": Row(
        "csam",
        expect=(
            "ViolationReported",
            "AccountTerminated",
            "AuthorityReferralOpened",
            "NoticeIssued",
        ),
        kinds=("termination",),
    ),
    "critical terminates and refers weapons_development": Row(
        "weapons_development",
        expect=(
            "ViolationReported",
            "AccountTerminated",
            "AuthorityReferralOpened",
            "NoticeIssued",
        ),
        kinds=("termination",),
    ),
    "critical by reported severity terminates without referral": Row(
        "phishing",
        "critical",
        expect=("ViolationReported", "AccountTerminated", "NoticeIssued"),
        kinds=("termination",),
    ),
    "high with no prior strikes suspends for 7 days": Row(
        "phishing",
        expect=("ViolationReported", "AccountSuspended", "NoticeIssued"),
        kinds=("suspension",),
    ),
    "high with a prior strike suspends indefinitely": Row(
        "phishing",
        priors=(("spam", 10),),
        expect=("ViolationReported", "AccountSuspended", "NoticeIssued"),
        kinds=("suspension",),
    ),
    "first minor warns and requests remediation": Row(
        "spam",
        expect=("ViolationReported", "NoticeIssued", "RemediationRequested"),
        kinds=("warning",),
    ),
    "minor with 1 prior strike throttles and requests remediation": Row(
        "spam",
        priors=(("spam", 10),),
        expect=("ViolationReported", "ThrottleApplied", "NoticeIssued", "RemediationRequested"),
        kinds=("throttle",),
    ),
    "minor with 2 prior strikes suspends for 30 days": Row(
        "spam",
        priors=(("spam", 10), ("impersonation", 5)),
        expect=("ViolationReported", "AccountSuspended", "NoticeIssued"),
        kinds=("suspension",),
    ),
    "any with 3 prior strikes terminates": Row(
        "spam",
        priors=(("spam", 30), ("spam", 20), ("spam", 10)),
        expect=("ViolationReported", "AccountTerminated", "NoticeIssued"),
        kinds=("termination",),
    ),
    "high with 3 prior strikes terminates": Row(
        "phishing",
        priors=(("spam", 30), ("spam", 20), ("spam", 10)),
        expect=("ViolationReported", "AccountTerminated", "NoticeIssued"),
        kinds=("termination",),
    ),
    "strikes older than the lookback do not count": Row(
        "spam",
        priors=(("spam", 90), ("spam", 95)),
        expect=("ViolationReported", "NoticeIssued", "RemediationRequested"),
        kinds=("warning",),
    ),
    "sustained abuse gives no prior strike": Row(
        "spam",
        priors=(("sustained_abuse", 1),),
        expect=("ViolationReported", "NoticeIssued", "RemediationRequested"),
        kinds=("warning",),
    ),
    "adult content on an approved account is dismissed without notice": Row(
        "unapproved_adult_content",
        given=("approved",),
        expect=("ViolationReported", "ViolationDismissed"),
    ),
    "adult content on an unapproved account is a minor violation": Row(
        "unapproved_adult_content",
        expect=("ViolationReported", "NoticeIssued", "RemediationRequested"),
        kinds=("warning",),
    ),
    "sustained abuse throttles at 0.5 for 24 hours": Row(
        "sustained_abuse",
        expect=("ViolationReported", "ThrottleApplied", "NoticeIssued"),
        kinds=("throttle",),
    ),
    "sustained abuse throttles even with prior strikes": Row(
        "sustained_abuse",
        priors=(("spam", 30), ("spam", 20), ("spam", 10)),
        expect=("ViolationReported", "ThrottleApplied", "NoticeIssued"),
        kinds=("throttle",),
    ),
    "sustained abuse reported as critical is still its throttle": Row(
        "sustained_abuse",
        severity="critical",
        expect=("ViolationReported", "ThrottleApplied", "NoticeIssued"),
        kinds=("throttle",),
    ),
    "a terminated account gets the violation recorded and nothing else": Row(
        "csam", given=("terminated",), expect=("ViolationReported",)
    ),
    "suspended: a shorter suspension is recorded held behind the longer one": Row(
        "phishing",
        given=("suspended_30d",),
        expect=("ViolationReported", "AccountSuspended", "NoticeIssued"),
        kinds=("suspension",),
    ),
    "suspended indefinitely: a timed suspension is recorded held behind it": Row(
        "spam",
        priors=(("spam", 10), ("spam", 5)),
        given=("suspended_indefinitely",),
        expect=("ViolationReported", "AccountSuspended", "NoticeIssued"),
        kinds=("suspension",),
    ),
    "suspended: a longer suspension replaces a shorter one": Row(
        "phishing",
        given=("suspended_3d",),
        expect=("ViolationReported", "AccountSuspended", "NoticeIssued"),
        kinds=("suspension",),
    ),
    "suspended: an indefinite suspension replaces a timed one": Row(
        "phishing",
        priors=(("spam", 10),),
        given=("suspended_30d",),
        expect=("ViolationReported", "AccountSuspended", "NoticeIssued"),
        kinds=("suspension",),
    ),
    "suspended: critical still terminates": Row(
        "csam",
        given=("suspended_indefinitely",),
        expect=(
            "ViolationReported",
            "AccountTerminated",
            "AuthorityReferralOpened",
            "NoticeIssued",
        ),
        kinds=("termination",),
    ),
    "suspended: minor strikes are counted and throttle as usual": Row(
        "spam",
        priors=(("spam", 10),),
        given=("suspended_indefinitely",),
        expect=("ViolationReported", "ThrottleApplied", "NoticeIssued", "RemediationRequested"),
        kinds=("throttle",),
    ),
    "an expired suspension does not block a new one": Row(
        "phishing",
        given=("suspended_-1d",),
        expect=("ViolationReported", "AccountSuspended", "NoticeIssued"),
        kinds=("suspension",),
    ),
}


def _given(account: Account, row: Row) -> None:
    for n, (category, days_ago) in enumerate(row.priors):
        account.strike(
            f"vio_prior_{n}",
            NOW - timedelta(days=days_ago),
            category,
            category != "sustained_abuse",
        )
    for fact in row.given:
        if fact == "approved":
            account.given(ev.AdultContentApprovalChanged(True, "verified"), t(1))
        elif fact == "terminated":
            account.given(ev.AccountTerminated("operator", SOR), t(1))
        elif fact == "suspended_indefinitely":
            account.given(ev.AccountSuspended("sus_0", None, "operator", SOR), t(1))
        else:
            days = int(fact.removeprefix("suspended_").removesuffix("d"))
            until = format_time(NOW + timedelta(days=days))
            account.given(ev.AccountSuspended("sus_0", until, "operator", SOR), t(1))


@pytest.mark.parametrize("row", LADDER.values(), ids=list(LADDER))
def test_the_ladder(row: Row) -> None:
    account = Account()
    _given(account, row)
    decided = account.report(row.category, NOW, row.severity)
    assert types(decided) == list(row.expect)
    notices = [e for e in decided if e.type == "NoticeIssued"]
    assert [n.data["kind"] for n in notices] == list(row.kinds)
    assert_appeal_offered_only_where_possible(decided)


def assert_appeal_offered_only_where_possible(decided: Sequence[NewEvent]) -> None:
    """POLICY.md: ``redress`` says how to appeal. A statement offers an appeal (and gives its
    deadline) exactly when an appeal may target its event (``DECISION_TYPES``); a notice
    carries its decision's statement."""
    by_id = {e.event_id: e for e in decided}
    for event in decided:
        sor = event.data.get("statement_of_reasons")
        if sor is None:
            continue
        target = (
            by_id.get(event.data["decision_event_id"]) if event.type == "NoticeIssued" else event
        )
        if target is None:
            continue  # a notice of a decision recorded earlier
        offers = sor["redress"].startswith("You may appeal this decision")
        assert offers == (sor["appeal_deadline"] is not None), (event.type, sor)
        assert offers == (target.type in DECISION_TYPES), (event.type, sor["redress"])


def test_critical_termination_details() -> None:
    account = Account()
    decided = account.report("csam", NOW)
    reported, terminated, referral, notice = decided
    assert terminated.data["reason"] == "critical_violation"
    assert terminated.data["violation_ids"] == [reported.data["violation_id"]]
    assert referral.data["category"] == "csam"
    assert referral.data["referral_id"].startswith("ref_")
    assert notice.data["decision_event_id"] == terminated.event_id
    assert terminated.data["statement_of_reasons"]["ground"] == "AUP §2, §6 (csam)"
    assert account.state.terminated


def test_a_referred_category_terminating_by_the_strike_count_is_not_referred() -> None:
    """Only a severe violation "may be reported to relevant authorities" (AUP §6; POLICY.md's
    critical row): a policy file that makes a lesser category referred refers its critical
    violations, not one that terminates because of the strikes before it."""
    rule = replace(CATEGORIES["model_extraction"], refer_to_authorities=True)
    policy = replace(
        P, termination_after_strikes=1, categories={**CATEGORIES, "model_extraction": rule}
    )
    account = Account()
    for day, severity in [(0, "high"), (1, "high")]:
        report = ViolationReport("model_extraction", t(day), severity, description="d")
        decided = decide_violation(policy, account.state, report, account.ctx(t(day)))
        account.record(decided, t(day))
    assert of_type(decided, "AccountTerminated").data["reason"] == "strike_limit_reached"
    assert "AuthorityReferralOpened" not in types(decided)

    account = Account()
    report = ViolationReport("model_extraction", NOW, "critical", description="d")
    decided = decide_violation(policy, account.state, report, account.ctx(NOW))
    assert of_type(decided, "AuthorityReferralOpened").data["category"] == "model_extraction"


def test_first_high_suspension_lasts_7_days_and_repeat_is_indefinite() -> None:
    account = Account()
    first = of_type(account.report("phishing", NOW), "AccountSuspended")
    assert first.data["until"] == format_time(NOW + timedelta(days=7))
    assert first.data["reason"] == "high_severity_first"
    later = NOW + timedelta(days=8)
    second = of_type(account.report("phishing", later), "AccountSuspended")
    assert second.data["until"] is None
    assert view(account.state, later, P.strike_lookback).status == "suspended"


def test_minor_rungs_carry_the_policy_numbers() -> None:
    account = Account()
    first = account.report("spam", NOW)
    remediation = of_type(first, "RemediationRequested")
    warning = of_type(first, "NoticeIssued")
    due = format_time(NOW + timedelta(days=7))
    assert remediation.data["due_at"] == due
    assert warning.data["deadline"] == due
    assert warning.data["decision_event_id"] == remediation.event_id
    second = account.report("spam", NOW + timedelta(days=1))
    throttle = of_type(second, "ThrottleApplied")
    assert (throttle.data["key_id"], throttle.data["factor"]) == (None, 0.25)
    assert throttle.data["expires_at"] == format_time(NOW + timedelta(days=8))
    third = account.report("spam", NOW + timedelta(days=2))
    suspension = of_type(third, "AccountSuspended")
    assert suspension.data["until"] == format_time(NOW + timedelta(days=32))
    assert suspension.data["reason"] == "minor_third_strike"
    fourth = account.report("spam", NOW + timedelta(days=3))
    assert of_type(fourth, "AccountTerminated").data["reason"] == "strike_limit_reached"


def test_sustained_abuse_throttle_and_no_strike() -> None:
    account = Account()
    decided = account.report("sustained_abuse", NOW)
    assert decided[0].data["strike"] is False
    throttle = of_type(decided, "ThrottleApplied")
    assert (throttle.data["factor"], throttle.data["key_id"]) == (0.5, None)
    assert throttle.data["expires_at"] == format_time(NOW + timedelta(hours=24))
    standing = view(account.state, NOW, P.strike_lookback)
    assert (standing.strikes, standing.status) == (0, "throttled")


def test_adult_content_dismissal_reason() -> None:
    account = Account()
    account.given(ev.AdultContentApprovalChanged(True, "verified"), t(1))
    decided = account.report("unapproved_adult_content", NOW)
    assert decided[1].data["reason"] == "adult_content_approved"
    assert decided[1].data["violation_id"] == decided[0].data["violation_id"]
    assert view(account.state, NOW, P.strike_lookback).strikes == 0
    # POLICY.md: "every decision the system records must carry that citation".
    sor = decided[1].data["statement_of_reasons"]
    assert sor["ground"] == "AUP §4 (unapproved_adult_content)"
    assert sor["automated_decision"] is True
    assert sor["redress"] == NOTHING_TO_APPEAL_REDRESS
    assert sor["decision"].endswith(
        "approved for adult content when it was recorded, so it is no strike."
    )


def test_adult_content_on_an_approved_terminated_account_is_no_strike() -> None:
    """POLICY.md: adult content on an approved account gives no strike. On a terminated account
    nothing is decided on it, but it must not count either: once an appeal overturns the
    termination, such reports would otherwise terminate the account at its next violation."""
    account = Account()
    account.given(ev.AdultContentApprovalChanged(True, "verified"), t(0))
    termination = of_type(account.report("csam", t(1)), "AccountTerminated")
    for day in (2, 3, 4):
        decided = account.report("unapproved_adult_content", t(day))
        assert types(decided) == ["ViolationReported"]
        assert decided[0].data["strike"] is False
    assert view(account.state, t(4), P.strike_lookback).strikes == 1
    account.record(
        decide_appeal_filing(P, account.state, termination.event_id, "s", account.ctx(t(5))), t(5)
    )
    [appeal_id] = account.state.appeals
    account.record(
        decide_appeal(P, account.state, appeal_id, "overturned", "r", account.ctx(t(5))), t(5)
    )
    assert view(account.state, t(5), P.strike_lookback).strikes == 0
    assert "AccountTerminated" not in types(account.report("spam", t(6)))


def test_a_suspension_held_behind_a_longer_one_says_so() -> None:
    account = Account()
    until = format_time(NOW + timedelta(days=30))
    account.given(ev.AccountSuspended("sus_0", until, "operator", SOR), t(1))
    suspended = of_type(account.report("phishing", NOW), "AccountSuspended")  # 7 days
    assert suspended.data["held_by"] == "sus_0"
    assert suspended.data["statement_of_reasons"]["decision"] == (
        f"The account is already suspended until {until} (suspension sus_0). These violations "
        f"call for a suspension until {format_time(NOW + timedelta(days=7))}, which takes "
        "effect only if that suspension is overturned on appeal."
    )


def test_the_context_keeps_its_time_in_utc() -> None:
    """Any zone, or none (taken as UTC): decisions compare it with the log's UTC times."""
    for now in (NOW.astimezone(timezone(timedelta(hours=2))), NOW.replace(tzinfo=None)):
        ctx = Context(now=now, actor="a", correlation_id="c")
        assert (ctx.now, ctx.now.tzinfo) == (NOW, UTC)


def test_a_rung_chosen_by_prior_strikes_lists_them_among_the_facts() -> None:
    """POLICY.md: a statement's facts are the violations that led to the decision. Where the
    prior strikes chose the rung, they are among them, marked; what an overturn dismisses
    (``violation_ids``) stays the new violation."""
    account = Account()
    account.strike("vio_a", t(-3))
    decided = account.report("spam", t(0))
    new = decided[0].data["violation_id"]
    for decision in decided[1:]:
        facts = decision.data["statement_of_reasons"]["facts"]
        assert [f["violation_id"] for f in facts] == [new, "vio_a"]
        assert [f.get("prior_strike") for f in facts] == [None, True]
        assert facts[1]["category"] == "spam" and facts[1]["occurred_at"] == format_time(t(-3))
    assert of_type(decided, "ThrottleApplied").data["violation_ids"] == [new]
    redress = of_type(decided, "ThrottleApplied").data["statement_of_reasons"]["redress"]
    assert redress.endswith(
        "overturned it is reversed and the violation it was taken on no longer counts as a "
        "strike (the prior strikes listed count as before)."
    )

    for vid, day in (("vio_b", -2), ("vio_c", -1)):
        account.strike(vid, t(day))
    terminated = of_type(account.report("spam", t(1)), "AccountTerminated")
    facts = terminated.data["statement_of_reasons"]["facts"]
    assert [f.get("prior_strike") for f in facts] == [None, True, True, True, True]
    assert {f["violation_id"] for f in facts[1:]} == {"vio_a", "vio_b", "vio_c", new}


@pytest.mark.parametrize(
    ("category", "strikes"), [("spam", 0), ("phishing", 0), ("csam", 2), ("sustained_abuse", 2)]
)
def test_a_rung_prior_strikes_did_not_choose_lists_only_the_violation(
    category: str, strikes: int
) -> None:
    account = Account()
    for n in range(strikes):
        account.strike(f"vio_{n}", t(-1 - n))
    decided = account.report(category, t(0))
    for decision in decided[1:]:
        facts = decision.data["statement_of_reasons"]["facts"]
        assert [f["violation_id"] for f in facts] == [decided[0].data["violation_id"]]


def test_the_violation_records_reported_and_effective_severity() -> None:
    account = Account()
    reported = account.report("phishing", NOW, "low")[0]
    assert (reported.data["reported_severity"], reported.data["severity"]) == ("low", "medium")
    assert reported.occurred_at == NOW


# --- metadata, causation, statements of reasons ---------------------------------------------


def test_every_event_records_the_strike_lookback_of_the_policy_that_decided_it() -> None:
    # Not the default's "90d": a past standing counts strikes with what this records.
    account = Account()
    policy = replace(P, strike_lookback=timedelta(hours=36))
    report = ViolationReport("spam", NOW, description="d")
    decided = decide_violation(policy, account.state, report, account.ctx(NOW))
    assert {event.metadata["strike_lookback"] for event in decided} == {"36h"}


def test_every_event_carries_metadata_and_causation_chains() -> None:
    account = Account()
    account.strike("vio_prior", NOW - timedelta(days=3))
    decided = account.report("spam", NOW)
    reported, throttle, notice, remediation = decided
    for event in decided:
        assert set(event.metadata) == METADATA_KEYS
        assert event.metadata["policy_version"] == "aup-2026-11"
        assert event.metadata["strike_lookback"] == "90d"
        assert event.metadata["correlation_id"] == "req_1"
        uuid.UUID(event.event_id)
    assert reported.metadata["actor"] == "reporter"
    assert reported.metadata["causation_id"] is None
    assert throttle.metadata["actor"] == "policy"
    assert throttle.metadata["causation_id"] == reported.event_id
    assert remediation.metadata["causation_id"] == reported.event_id
    assert notice.metadata["causation_id"] == notice.data["decision_event_id"] == throttle.event_id
    for decision in (throttle, notice, remediation):
        sor = decision.data["statement_of_reasons"]
        assert sor["policy_version"] == "aup-2026-11"
        assert sor["automated_decision"] is True
        assert sor["automated_detection"] is True
        assert sor["ground"] == "AUP §2 (spam)"
        assert sor["facts"][0]["violation_id"] == reported.data["violation_id"]
        assert "20 days" in sor["redress"]


def test_ids_have_their_prefixes_and_decisions_are_deterministic() -> None:
    def run() -> list[NewEvent]:
        account = Account()
        account.strike("vio_prior", NOW - timedelta(days=3))
        return account.report("spam", NOW)

    first, second = run(), run()
    assert first == second
    assert first[0].data["violation_id"].startswith("vio_")
    assert of_type(first, "ThrottleApplied").data["throttle_id"].startswith("thr_")
    assert of_type(first, "RemediationRequested").data["remediation_id"].startswith("rem_")
    assert of_type(first, "NoticeIssued").data["notice_id"].startswith("ntc_")
    assert random_id("sus").startswith("sus_") and random_id("sus") != random_id("sus")


# --- missed remediation ---------------------------------------------------------------------


def _with_remediation() -> tuple[Account, str, datetime]:
    account = Account()
    decided = account.report("spam", NOW)
    remediation = of_type(decided, "RemediationRequested")
    return account, remediation.data["remediation_id"], NOW + timedelta(days=7)


def test_a_missed_remediation_expires_and_suspends_for_7_days() -> None:
    account, rem_id, due = _with_remediation()
    decided = decide_remediation_expired(P, account.state, rem_id, account.ctx(due, "scheduler"))
    assert types(decided) == ["RemediationExpired", "AccountSuspended", "NoticeIssued"]
    expired, suspended, notice = decided
    vio_id = account.state.remediations[rem_id].violation_ids[0]
    for decision in (expired, suspended):
        # The policy decides (automated), on the violation the remediation was asked for: an
        # overturn of the suspension dismisses it, and the statement names it with its ground.
        assert decision.metadata["actor"] == "policy"
        sor = decision.data["statement_of_reasons"]
        assert (sor["automated_decision"], sor["ground"]) == (True, "AUP §2 (spam)")
        assert vio_id in [f.get("violation_id") for f in sor["facts"]]
    assert suspended.data["violation_ids"] == [vio_id]
    redress = suspended.data["statement_of_reasons"]["redress"]
    assert redress.endswith("reversed and the violations behind it no longer count as strikes.")
    assert suspended.data["until"] == format_time(due + timedelta(days=7))
    assert suspended.data["reason"] == "remediation_missed"
    assert suspended.metadata["causation_id"] == expired.event_id
    assert notice.data["kind"] == "suspension"
    facts = expired.data["statement_of_reasons"]["facts"]
    assert any(f.get("remediation_id") == rem_id for f in facts)
    until = suspended.data["until"]
    assert expired.data["statement_of_reasons"]["decision"].endswith(f"suspended until {until}.")
    assert (
        "the suspension recorded with it can be" in expired.data["statement_of_reasons"]["redress"]
    )
    assert_appeal_offered_only_where_possible(decided)
    account.record(decided, due)
    standing = view(account.state, due, P.strike_lookback)
    assert (standing.status, standing.open_remediations) == ("suspended", ())


@pytest.mark.parametrize(
    "closing",
    [
        lambda rem, vio: ev.RemediationCompleted(rem, "fixed"),
        lambda rem, vio: ev.RemediationExpired(rem, SOR),
        lambda rem, vio: ev.ViolationDismissed(vio, "mistake"),
    ],
    ids=["completed", "expired", "dismissed"],
)
def test_a_closed_remediation_expires_to_nothing(closing: Any) -> None:
    account, rem_id, due = _with_remediation()
    vio_id = account.state.remediations[rem_id].violation_ids[0]
    account.given(closing(rem_id, vio_id), NOW + timedelta(days=1))
    assert decide_remediation_expired(P, account.state, rem_id, account.ctx(due)) == []


def test_a_remediation_not_yet_due_expires_to_nothing() -> None:
    account, rem_id, due = _with_remediation()
    early = due - timedelta(microseconds=1)
    assert decide_remediation_expired(P, account.state, rem_id, account.ctx(early)) == []


def test_a_missed_remediation_on_a_terminated_or_longer_suspended_account() -> None:
    """Under a longer suspension the missed remediation's suspension is recorded held behind
    it, and the expiry says so; on a terminated account only the expiry is recorded, and its
    statement says why no suspension comes with it."""
    account, rem_id, due = _with_remediation()
    account.given(ev.AccountSuspended("sus_long", None, "operator", SOR), NOW)
    decided = decide_remediation_expired(P, account.state, rem_id, account.ctx(due))
    assert types(decided) == ["RemediationExpired", "AccountSuspended", "NoticeIssued"]
    assert decided[1].data["held_by"] == "sus_long"
    sor = decided[0].data["statement_of_reasons"]
    assert "already suspended indefinitely" in sor["decision"]
    assert "takes effect only if that suspension is overturned" in sor["decision"]
    assert_appeal_offered_only_where_possible(decided)

    account.given(ev.AccountTerminated("operator", SOR), NOW)
    decided = decide_remediation_expired(P, account.state, rem_id, account.ctx(due))
    assert types(decided) == ["RemediationExpired"]
    sor = decided[0].data["statement_of_reasons"]
    assert "terminated, so no suspension is imposed" in sor["decision"]
    assert "suspended until" not in sor["decision"]
    assert_appeal_offered_only_where_possible(decided)


@pytest.mark.parametrize(("days", "replaced"), [(6, True), (7, False), (30, False)])
def test_a_missed_remediation_on_a_suspended_account_suspends_only_for_longer(
    days: int, replaced: bool
) -> None:
    """A suspension in force until at least the missed remediation's would end stays in
    force, with the missed remediation's held behind it, and the expiry says so with that
    suspension's end; a shorter one is replaced."""
    account, rem_id, due = _with_remediation()
    until = due + timedelta(days=days)
    account.given(ev.AccountSuspended("sus_op", format_time(until), "operator", SOR), NOW)
    decided = decide_remediation_expired(P, account.state, rem_id, account.ctx(due))
    text = decided[0].data["statement_of_reasons"]["decision"]
    assert types(decided) == ["RemediationExpired", "AccountSuspended", "NoticeIssued"]
    assert decided[1].data["until"] == format_time(due + timedelta(days=7))
    if replaced:
        assert decided[1].data["held_by"] is None
        assert text.endswith(f"suspended until {format_time(due + timedelta(days=7))}.")
    else:
        assert decided[1].data["held_by"] == "sus_op"
        assert f"already suspended until {format_time(until)}" in text
    account.record(decided, due)
    current = account.state.suspension
    assert current is not None
    assert current.suspension_id == ("sus_op" if not replaced else decided[1].data["suspension_id"])
    assert_appeal_offered_only_where_possible(decided)


def test_an_unknown_remediation_is_not_found() -> None:
    with pytest.raises(NotFound):
        decide_remediation_expired(P, StandingState.empty("a"), "rem_x", Context(T0, "s", "c"))


# --- appeals --------------------------------------------------------------------------------


def _decided(category: str, **kwargs: Any) -> tuple[Account, NewEvent]:
    account = Account()
    for n, days in enumerate(kwargs.get("priors", ())):
        account.strike(f"vio_prior_{n}", NOW - timedelta(days=days))
    decided = account.report(category, NOW)
    decision_type = kwargs.get("decision", "AccountSuspended")
    return account, of_type(decided, decision_type)


def _file(account: Account, decision: NewEvent | str, at: datetime) -> str:
    """File an appeal of ``decision`` (the event, or its id) at ``at``."""
    event_id = decision if isinstance(decision, str) else decision.event_id
    filed = decide_appeal_filing(P, account.state, event_id, "not me", account.ctx(at))
    assert types(filed) == ["AppealFiled"]
    assert filed[0].metadata["causation_id"] == event_id
    assert filed[0].metadata["actor"] == "reporter"  # the account's, not the policy's
    account.record(filed, at)
    return str(filed[0].data["appeal_id"])


def test_an_appeal_may_be_filed_until_the_window_closes() -> None:
    account, decision = _decided("phishing")
    last = NOW + timedelta(days=20)
    _file(account, decision, last)
    assert view(account.state, last, P.strike_lookback).open_appeals == 1
    late, decision = _decided("phishing")
    with pytest.raises(InvalidTransition) as caught:
        _file(late, decision, last + timedelta(microseconds=1))
    assert caught.value.code == "appeal_window_closed"


def test_a_changed_window_never_cuts_the_deadline_stated_to_the_account() -> None:
    account, decision = _decided("phishing")
    stated = decision.data["statement_of_reasons"]["appeal_deadline"]
    assert stated == format_time(NOW + P.appeal_window)
    shorter = replace(P, appeal_window=timedelta(days=5))
    longer = replace(P, appeal_window=timedelta(days=40))

    def file(policy: Policy, at: datetime) -> list[NewEvent]:
        return decide_appeal_filing(policy, account.state, decision.event_id, "x", account.ctx(at))

    # Shortened since: the stated deadline holds, to the microsecond.
    assert types(file(shorter, NOW + P.appeal_window)) == ["AppealFiled"]
    with pytest.raises(InvalidTransition) as caught:
        file(shorter, NOW + P.appeal_window + timedelta(microseconds=1))
    assert caught.value.details == {"deadline": stated}
    # Lengthened since: the earlier decision gets the longer window too.
    recorded = parse_time(account.state.decisions[decision.event_id].recorded_at)
    assert types(file(longer, recorded + timedelta(days=40))) == ["AppealFiled"]
    with pytest.raises(InvalidTransition):
        file(longer, recorded + timedelta(days=40, microseconds=1))


def test_a_decision_that_stated_no_deadline_is_appealable_for_the_window() -> None:
    account, decision = _decided("phishing")
    record = account.state.decisions[decision.event_id]
    account.state.decisions[decision.event_id] = replace(record, appeal_deadline=None)
    shorter = replace(P, appeal_window=timedelta(days=5))
    recorded = parse_time(record.recorded_at)

    decide_appeal_filing(
        shorter, account.state, decision.event_id, "x", account.ctx(recorded + timedelta(days=5))
    )
    with pytest.raises(InvalidTransition):
        decide_appeal_filing(
            shorter,
            account.state,
            decision.event_id,
            "x",
            account.ctx(recorded + timedelta(days=5, microseconds=1)),
        )


def test_one_open_appeal_per_decision() -> None:
    account, decision = _decided("phishing")
    _file(account, decision, NOW)
    with pytest.raises(Conflict) as caught:
        _file(account, decision, NOW)
    assert caught.value.code == "appeal_already_open"


def test_only_decision_events_may_be_appealed() -> None:
    account, decision = _decided("phishing")
    violation_event_id = account.state.violations[decision.data["violation_ids"][0]].event_id
    notice_event_id = "not-a-decision"
    for target in (notice_event_id, violation_event_id):
        with pytest.raises(NotFound) as caught:
            decide_appeal_filing(P, account.state, target, "s", account.ctx(NOW))
        assert caught.value.code == "decision_not_found"


def test_an_upheld_appeal_changes_nothing_but_is_notified() -> None:
    account, decision = _decided("phishing")
    appeal_id = _file(account, decision, NOW)
    before = view(account.state, NOW, P.strike_lookback)
    ctx = account.ctx(NOW, "operator_1")
    decided = decide_appeal(P, account.state, appeal_id, "upheld", "evidence is clear", ctx)
    assert types(decided) == ["AppealDecided", "NoticeIssued"]
    appeal_decided, notice = decided
    text = appeal_decided.data["statement_of_reasons"]["decision"]
    assert (
        text
        == f"The appeal is rejected: the decision {decision.event_id} (AccountSuspended) stands."
    )
    assert appeal_decided.metadata["actor"] == "operator_1"
    assert appeal_decided.data["statement_of_reasons"]["automated_decision"] is False
    assert notice.data["kind"] == "appeal_outcome"
    assert notice.data["decision_event_id"] == appeal_decided.event_id
    account.record(decided, NOW)
    after = view(account.state, NOW, P.strike_lookback)
    assert (after.status, after.strikes, after.open_appeals) == (before.status, before.strikes, 0)
    with pytest.raises(InvalidTransition):
        decide_appeal(P, account.state, appeal_id, "overturned", "again", ctx)
    _file(account, decision, NOW)


def test_an_upheld_outcome_says_until_when_the_decision_may_be_appealed_again() -> None:
    """POLICY.md allows one open appeal per decision, so an upheld decision may be appealed
    again while its time to appeal runs: the outcome's redress says so and until when (it said
    the outcome was final, which the next filing contradicted); once that time has passed, it
    is final. The outcome itself can never be appealed."""
    deadline = format_time(NOW + P.appeal_window)
    again = f"may be appealed again until {deadline}"
    final = (
        "final within the service: the time to appeal the decision you appealed ended at "
        + deadline
    )
    for decided_at, says in [
        (NOW + timedelta(days=1), again),
        (NOW + P.appeal_window + timedelta(seconds=1), final),
    ]:
        account, decision = _decided("phishing")
        appeal_id = _file(account, decision, NOW)
        ctx = account.ctx(decided_at)
        outcome, notice = decide_appeal(P, account.state, appeal_id, "upheld", "it holds", ctx)
        reasons = outcome.data["statement_of_reasons"]
        assert says in reasons["redress"], reasons["redress"]
        assert reasons["appeal_deadline"] is None  # the outcome itself is not appealable
        assert notice.data["statement_of_reasons"]["redress"] == reasons["redress"]

    # A window lengthened since the decision: the outcome states the deadline the decision
    # gave, which no later policy cuts (the longer window may be shortened again).
    longer = replace(P, appeal_window=P.appeal_window + timedelta(days=10))
    account, decision = _decided("phishing")
    appeal_id = _file(account, decision, NOW)
    ctx = account.ctx(NOW + timedelta(days=1))
    [outcome, _] = decide_appeal(longer, account.state, appeal_id, "upheld", "it holds", ctx)
    assert again in outcome.data["statement_of_reasons"]["redress"]
    # Decided at the stated deadline: that deadline still holds, as the account was told.
    ctx = account.ctx(NOW + P.appeal_window)
    [outcome, _] = decide_appeal(longer, account.state, appeal_id, "upheld", "it holds", ctx)
    assert again in outcome.data["statement_of_reasons"]["redress"]
    # Decided after the stated deadline but within the longer window: appealable until its end.
    ctx = account.ctx(NOW + P.appeal_window + timedelta(days=1))
    [outcome, _] = decide_appeal(longer, account.state, appeal_id, "upheld", "it holds", ctx)
    until = format_time(NOW + longer.appeal_window)
    assert f"may be appealed again until {until}" in outcome.data["statement_of_reasons"]["redress"]


@pytest.mark.parametrize(
    ("category", "decision_type", "priors", "reversal"),
    [
        ("phishing", "AccountSuspended", (), ["AccountReinstated"]),
        ("csam", "AccountTerminated", (), ["AccountReinstated"]),
        ("spam", "ThrottleApplied", (3,), ["ThrottleLifted"]),
        ("spam", "RemediationRequested", (), []),
    ],
)
def test_an_overturned_appeal_reverses_the_decision_and_its_strikes(
    category: str, decision_type: str, priors: tuple[int, ...], reversal: list[str]
) -> None:
    account, decision = _decided(category, decision=decision_type, priors=priors)
    appeal_id = _file(account, decision, NOW)
    later = NOW + timedelta(hours=1)
    decided = decide_appeal(
        P, account.state, appeal_id, "overturned", "wrong account", account.ctx(later, "op")
    )
    assert types(decided) == ["AppealDecided", *reversal, "ViolationDismissed", "NoticeIssued"]
    assert decided[0].data["statement_of_reasons"]["decision"] == (
        f"The appeal is granted: the decision {decision.event_id} ({decision_type}) is reversed "
        "and its violations are dismissed."
    )
    assert_appeal_offered_only_where_possible(decided)  # the outcome is final
    for event in decided[1:-1]:
        assert event.metadata["causation_id"] == decided[0].event_id
    account.record(decided, later)
    standing = view(account.state, later, P.strike_lookback)
    assert standing.strikes == len(priors)
    assert standing.status in ("good_standing", "warned")
    assert standing.open_remediations == ()
    with pytest.raises(InvalidTransition) as caught:
        _file(account, decision, later)
    assert caught.value.code == "already_overturned"


def test_overturning_a_throttle_that_ran_out_lifts_nothing() -> None:
    account, throttle = _decided("spam", decision="ThrottleApplied", priors=(3,))
    appeal_id = _file(account, throttle, NOW)
    later = NOW + P.second_minor_throttle.duration  # it expired then
    decided = decide_appeal(P, account.state, appeal_id, "overturned", "r", account.ctx(later))
    assert types(decided) == ["AppealDecided", "ViolationDismissed", "NoticeIssued"]


def test_overturning_a_superseded_suspension_does_not_reinstate() -> None:
    account, first = _decided("phishing")
    later = NOW + timedelta(days=1)
    account.given(ev.AccountSuspended("sus_operator", None, "operator", SOR), later)
    appeal_id = _file(account, first, later)
    decided = decide_appeal(P, account.state, appeal_id, "overturned", "r", account.ctx(later))
    # Not a reinstatement: the superseded suspension ends, so that it never comes back.
    assert types(decided) == [
        "AppealDecided",
        "SuspensionEnded",
        "ViolationDismissed",
        "NoticeIssued",
    ]
    assert decided[1].data["reason"] == "overturned"


# --- overturned suspensions and the ones they replaced (POLICY.md: "a longer suspension
# replaces a shorter one"; overturned "reverses the decision") ----------------------------------

DAY = timedelta(days=1)


def _in_force(account: Account, at: datetime) -> str | None:
    s = active_suspension(account.state, at)
    return None if s is None else s.suspension_id


def _overturn(account: Account, decision: NewEvent | str, at: datetime) -> list[NewEvent]:
    appeal_id = _file(account, decision, at)
    decided = decide_appeal(P, account.state, appeal_id, "overturned", "r", account.ctx(at, "op"))
    account.record(decided, at)
    return decided


def _operator_suspends(account: Account, until: datetime | None, at: datetime) -> NewEvent:
    decided = ops.decide(P, account.state, ops.Suspend("op", until=until), account.ctx(at, "op"))
    account.record(decided, at)
    return of_type(decided, "AccountSuspended")


def _sid(decision: NewEvent) -> str:
    return str(decision.data["suspension_id"])


def _replaced_by_a_longer() -> tuple[Account, NewEvent, NewEvent]:
    """High twice: a 7-day suspension, then an indefinite one replacing it a day later."""
    account = Account()
    first = of_type(account.report("phishing", NOW), "AccountSuspended")
    second = of_type(account.report("phishing", NOW + DAY), "AccountSuspended")
    return account, first, second


def test_an_appeal_recorded_before_replaced_suspensions_were_kept_still_counts() -> None:
    """A log from before: overturning a replaced suspension recorded no ``SuspensionEnded``.
    Overturning the one that replaced it must not bring it back."""
    account, first, second = _replaced_by_a_longer()
    appeal_id = _file(account, first, NOW + 2 * DAY)
    decided = decide_appeal(
        P, account.state, appeal_id, "overturned", "r", account.ctx(NOW + 2 * DAY)
    )
    account.record([e for e in decided if e.type != "SuspensionEnded"], NOW + 2 * DAY)

    assert types(_overturn(account, second, NOW + 3 * DAY))[:2] == [
        "AppealDecided",
        "AccountReinstated",
    ]
    assert _in_force(account, NOW + 3 * DAY) is None


def test_a_suspension_overturned_on_a_terminated_account_stays_reversed() -> None:
    account, first, second = _replaced_by_a_longer()
    termination = of_type(account.report("csam", NOW + 2 * DAY), "AccountTerminated")
    assert "SuspensionEnded" in types(_overturn(account, second, NOW + 3 * DAY))
    assert "SuspensionEnded" in types(_overturn(account, first, NOW + 3 * DAY))
    _overturn(account, termination, NOW + 4 * DAY)
    # Neither suspension survives its own reversal, whatever happened in between.
    assert _in_force(account, NOW + 4 * DAY) is None


def test_a_suspension_overturned_before_it_was_replaced_never_comes_back() -> None:
    """A log from before: overturning the current suspension of a terminated account recorded
    nothing but ``AppealDecided``, and that suspension stayed current after the termination's
    reversal. A later one that replaces it must not keep it to give back."""
    account = Account()
    for n in range(2):
        account.strike(f"vio_prior_{n}", NOW - DAY)
    thirty = of_type(account.report("spam", NOW), "AccountSuspended")  # third minor: 30 days
    termination = of_type(account.report("csam", NOW + DAY), "AccountTerminated")
    appeal_id = _file(account, thirty, NOW + 2 * DAY)
    decided = decide_appeal(
        P, account.state, appeal_id, "overturned", "r", account.ctx(NOW + 2 * DAY)
    )
    account.record([e for e in decided if e.type != "SuspensionEnded"], NOW + 2 * DAY)
    _overturn(account, termination, NOW + 3 * DAY)
    later = of_type(account.report("phishing", NOW + 4 * DAY), "AccountSuspended")

    assert account.state.replaced_suspensions == ()
    assert "AccountReinstated" in types(_overturn(account, later, NOW + 5 * DAY))
    assert _in_force(account, NOW + 5 * DAY) is None


def test_overturning_a_replaced_suspension_that_ran_out_records_no_end() -> None:
    """It ended already (the standing is the same either way): nothing to reverse, whether or
    not the sweep recorded the end of the one that replaced it."""
    account = Account()
    week = of_type(account.report("phishing", NOW), "AccountSuspended")  # 7 days
    _operator_suspends(account, NOW + 60 * DAY, NOW + DAY)  # outlasts it: keeps it
    assert [r.suspension_id for r in account.state.replaced_suspensions] == [_sid(week)]
    decided = _overturn(account, week, NOW + 8 * DAY)
    assert types(decided) == ["AppealDecided", "ViolationDismissed", "NoticeIssued"]
    assert _in_force(account, NOW + 8 * DAY) is not None  # the operator's


def test_overturning_a_suspension_that_ran_out_records_no_end() -> None:
    account, week = _decided("phishing")  # 7 days, replacing none
    decided = _overturn(account, week, NOW + 8 * DAY)
    assert types(decided) == ["AppealDecided", "ViolationDismissed", "NoticeIssued"]


def test_overturning_a_suspension_gives_back_the_longest_of_those_it_replaced() -> None:
    account = Account()
    ten = _operator_suspends(account, NOW + 10 * DAY, NOW)
    twenty = _operator_suspends(account, NOW + 20 * DAY, NOW)  # replaces ten, keeps it
    last = _operator_suspends(account, None, NOW)  # replaces both, keeps them
    assert [r.suspension_id for r in account.state.replaced_suspensions] == [
        _sid(ten),
        _sid(twenty),
    ]
    decided = _overturn(account, last, NOW + DAY)
    assert (
        f"Suspension {_sid(twenty)}, which it had replaced, still holds"
        in (decided[0].data["statement_of_reasons"]["decision"])
    )
    assert _in_force(account, NOW + DAY) == _sid(twenty)


def test_overturning_a_suspension_on_a_terminated_account_gives_back_the_one_it_replaced() -> None:
    account, first, second = _replaced_by_a_longer()
    termination = of_type(account.report("csam", NOW + 2 * DAY), "AccountTerminated")
    decided = _overturn(account, second, NOW + 3 * DAY)
    assert "stays suspended" not in decided[0].data["statement_of_reasons"]["decision"]
    _overturn(account, termination, NOW + 4 * DAY)
    assert _in_force(account, NOW + 4 * DAY) == _sid(first)
    assert _in_force(account, NOW + 7 * DAY) is None


def test_winning_an_appeal_never_lengthens_a_suspension() -> None:
    """An operator's shorter suspension replaced a longer one: left alone it frees the account
    when it ends, so overturning it must not bring the longer one back."""
    account = Account()
    for n in range(2):
        account.strike(f"vio_prior_{n}", NOW - DAY)
    thirty = of_type(account.report("spam", NOW), "AccountSuspended")  # third minor: 30 days
    assert thirty.data["until"] is not None
    shorter = _operator_suspends(account, NOW + 2 * DAY, NOW + DAY)
    decided = _overturn(account, shorter, NOW + DAY + DAY / 2)
    assert "AccountReinstated" in types(decided)
    assert _in_force(account, NOW + 3 * DAY) is None


@pytest.mark.parametrize("days", [30, None], ids=["timed", "indefinite"])
def test_overturning_a_suspension_as_long_as_the_one_it_replaced_gives_that_one_back(
    days: int | None,
) -> None:
    """An operator's suspension to the same end as the one in force is not a shorter one: the
    overturn reverses it alone, and the account stays suspended under the first, which was
    never appealed (found by the policy oracle: a timed one was dropped, an indefinite kept)."""
    account = Account()
    until = None if days is None else NOW + days * DAY
    first = _operator_suspends(account, until, NOW)
    second = _operator_suspends(account, until, NOW + DAY)
    decided = _overturn(account, second, NOW + 2 * DAY)
    assert "AccountReinstated" not in types(decided)
    assert _in_force(account, NOW + 2 * DAY) == _sid(first)
    lasting = "indefinitely" if until is None else f"until {format_time(until)}"
    assert (
        decided[0]
        .data["statement_of_reasons"]["decision"]
        .endswith(
            f" Suspension {_sid(first)}, which it had replaced, still holds: the account stays "
            f"suspended {lasting}."
        )
    )


@pytest.mark.parametrize("swept", [True, False])
def test_a_suspension_that_ran_out_ended_those_it_replaced_swept_or_not(swept: bool) -> None:
    account = Account()
    account.strike("vio_prior", NOW - DAY)
    account.report("phishing", NOW)  # high with a prior strike: indefinitely
    one_day = _operator_suspends(account, NOW + 2 * DAY, NOW + DAY)
    later = NOW + 3 * DAY  # the operator's suspension ran out at day 2: the account is free
    assert _in_force(account, later) is None
    if swept:
        ended = ops.decide_suspension_ended(P, account.state, _sid(one_day), account.ctx(later))
        account.record(ended, later)
    week = _operator_suspends(account, later + 7 * DAY, later)
    assert "AccountReinstated" in types(_overturn(account, week, later + DAY))
    assert _in_force(account, later + DAY) is None


def test_deciding_an_unknown_appeal_or_with_an_unknown_outcome() -> None:
    account, decision = _decided("phishing")
    with pytest.raises(NotFound):
        decide_appeal(P, account.state, "apl_x", "upheld", "r", account.ctx(NOW))
    appeal_id = _file(account, decision, NOW)
    with pytest.raises(ValidationFailed):
        decide_appeal(P, account.state, appeal_id, "maybe", "r", account.ctx(NOW))


# --- abuse reports --------------------------------------------------------------------------


def _reported(category: str = "phishing") -> tuple[Account, str]:
    account = Account()
    received = decide_abuse_report(
        P, category, "phishing mails", "a@b.example", None, account.ctx(NOW)
    )
    assert types(received) == ["AbuseReportReceived"]
    assert received[0].metadata["actor"] == "reporter"  # who filed it, not the policy
    account.record(received, NOW)
    assert view(account.state, NOW, P.strike_lookback).open_abuse_reports == 1
    return account, str(received[0].data["report_id"])


def test_a_rejected_report_is_closed_without_strike() -> None:
    account, report_id = _reported()
    decided = decide_triage(P, account.state, report_id, "rejected", None, account.ctx(NOW, "op"))
    assert types(decided) == ["AbuseReportTriaged"]
    assert decided[0].metadata["actor"] == "op"  # the operator triages, not the policy
    account.record(decided, NOW)
    standing = view(account.state, NOW, P.strike_lookback)
    assert (standing.open_abuse_reports, standing.strikes) == (0, 0)
    with pytest.raises(InvalidTransition):
        decide_triage(P, account.state, report_id, "confirmed", None, account.ctx(NOW))


def test_a_confirmed_report_becomes_a_violation_and_climbs_the_ladder() -> None:
    account, report_id = _reported()
    later = NOW + timedelta(days=1)
    decided = decide_triage(P, account.state, report_id, "confirmed", None, account.ctx(later))
    assert types(decided) == [
        "AbuseReportTriaged",
        "ViolationReported",
        "AccountSuspended",
        "NoticeIssued",
    ]
    triaged, reported = decided[0], decided[1]
    assert triaged.data["violation_id"] == reported.data["violation_id"]
    assert triaged.data["severity"] == "high"
    assert reported.data["abuse_report_id"] == report_id
    assert (reported.data["detection"], reported.data["source"]) == ("user_report", "abuse_report")
    assert reported.occurred_at == NOW
    account.record(decided, later)
    assert view(account.state, later, P.strike_lookback).open_abuse_reports == 0


def test_triage_of_an_unknown_report_or_category() -> None:
    with pytest.raises(NotFound):
        decide_triage(P, StandingState.empty("a"), "rep_x", "rejected", None, Context(T0, "o", "c"))
    account, report_id = _reported()
    with pytest.raises(ValidationFailed):  # refused as such, not by the event's own check
        decide_triage(P, account.state, report_id, "maybe", None, account.ctx(NOW, "op"))
    with pytest.raises(ValidationFailed):
        decide_abuse_report(P, "jaywalking", "d", None, None, Context(T0, "o", "c"))


# --- sustained abuse from gate denials ------------------------------------------------------


def test_sustained_abuse_is_due_at_the_denial_count_unless_already_throttled_for_it() -> None:
    account = Account()
    assert not sustained_abuse_due(P, account.state, 99, NOW)
    assert sustained_abuse_due(P, account.state, 100, NOW)
    account.report("sustained_abuse", NOW)
    assert not sustained_abuse_due(P, account.state, 500, NOW + timedelta(hours=23))
    assert sustained_abuse_due(P, account.state, 100, NOW + timedelta(hours=24))


def test_a_bouts_throttle_ends_when_the_last_sustained_abuse_throttle_in_force_runs_out() -> None:
    """Until when the gate may leave a throttled account's denials unread: the end of its
    sustained-abuse throttles, the latest of them; never, while one runs until lifted."""
    account = Account()
    assert sustained_abuse_throttle_end(account.state, NOW) is None
    account.report("sustained_abuse", NOW)
    account.report("spam", NOW)
    account.report("spam", NOW + timedelta(hours=1))  # a throttle of another reason, for 7 days
    assert sustained_abuse_throttle_end(account.state, NOW) == NOW + timedelta(hours=24)
    account.report("sustained_abuse", NOW + timedelta(hours=2))
    later = NOW + timedelta(hours=26)
    assert sustained_abuse_throttle_end(account.state, NOW + timedelta(hours=3)) == later
    assert sustained_abuse_throttle_end(account.state, later) is None
    at = NOW + timedelta(hours=4)
    until_lifted = ops.ApplyThrottle(0.5, "sustained_abuse")
    account.record(ops.decide(P, account.state, until_lifted, account.ctx(at, "op")), at)
    assert sustained_abuse_throttle_end(account.state, at) is None


def test_the_gates_sustained_abuse_is_decided_only_while_due_on_the_state_it_is_decided_on() -> (
    None
):
    account = Account()
    report = ViolationReport("sustained_abuse", NOW, source="gate", detection="automated")
    assert decide_gate_sustained_abuse(P, account.state, report, 99, account.ctx(NOW)) == []
    decided = decide_gate_sustained_abuse(P, account.state, report, 100, account.ctx(NOW))
    assert types(decided) == ["ViolationReported", "ThrottleApplied", "NoticeIssued"]
    account.record(decided, NOW)
    later = NOW + timedelta(minutes=10)
    assert decide_gate_sustained_abuse(P, account.state, report, 100, account.ctx(later)) == []


def test_the_gate_files_a_category_only_while_none_of_it_is_open() -> None:
    account = Account()
    filed = decide_gate_abuse_report(
        P, account.state, "rate_limit_circumvention", "3 keys", account.ctx(NOW)
    )
    assert types(filed) == ["AbuseReportReceived"]
    assert filed[0].data["source"] == ev.GATE_SOURCE
    account.record(filed, NOW)
    later = NOW + timedelta(minutes=10)
    again = decide_gate_abuse_report(
        P, account.state, "rate_limit_circumvention", "4 keys", account.ctx(later)
    )
    assert again == []
    report_id = str(filed[0].data["report_id"])
    account.record(
        decide_triage(P, account.state, report_id, "rejected", None, account.ctx(later, "op")),
        later,
    )
    assert types(
        decide_gate_abuse_report(
            P, account.state, "rate_limit_circumvention", "4 keys", account.ctx(later)
        )
    ) == ["AbuseReportReceived"]


# --- properties -----------------------------------------------------------------------------

REPORTS = st.lists(
    st.tuples(
        st.sampled_from(sorted(CATEGORIES)),
        st.none() | st.sampled_from(ev.SEVERITIES),
        st.integers(0, 60 * 24),
    ),
    max_size=12,
)


@settings(max_examples=100, deadline=None)
@given(REPORTS)
def test_any_sequence_of_reports_gives_well_formed_decisions(
    reports: list[tuple[str, str | None, int]],
) -> None:
    account = Account()
    now = NOW
    for category, severity, gap_hours in reports:
        now += timedelta(hours=gap_hours)
        was_terminated = account.state.terminated
        decided = account.report(category, now, severity)
        assert decided[0].type == "ViolationReported"
        if was_terminated:
            assert len(decided) == 1
        ids = {e.event_id for e in decided}
        for event in decided:
            assert set(event.metadata) == METADATA_KEYS
            if event.type == "NoticeIssued":
                assert event.data["decision_event_id"] in ids
                assert event.metadata["causation_id"] == event.data["decision_event_id"]
            elif event.type != "ViolationReported":
                assert event.metadata["causation_id"] == decided[0].event_id
            if event.type in ("ThrottleApplied", "AccountSuspended", "AccountTerminated"):
                assert event.data["statement_of_reasons"]["policy_version"] == P.version
        standing = view(account.state, now, P.strike_lookback)
        critical = decided[0].data["severity"] == "critical" and category != "sustained_abuse"
        if critical and not was_terminated:
            assert standing.status == "terminated"
        assert standing.version == account.state.version


OPERATIONS = st.lists(
    st.one_of(
        st.tuples(
            st.just("report"),
            st.sampled_from(["spam", "phishing", "csam", "sustained_abuse", "impersonation"]),
            st.none() | st.sampled_from(ev.SEVERITIES),
        ),
        st.tuples(st.just("expire"), st.none(), st.none()),
        st.tuples(st.just("appeal"), st.integers(0, 20), st.none()),
        st.tuples(st.just("decide"), st.sampled_from(ev.APPEAL_OUTCOMES), st.none()),
    ).flatmap(lambda op: st.tuples(st.just(op), st.integers(0, 10 * 24))),
    max_size=15,
)


def _run(
    operations: list[tuple[tuple[str, Any, Any], int]],
) -> tuple[Account, list[NewEvent], datetime]:
    """Drive an account through reports, deadline sweeps and appeals, as the service would."""
    account, log, now = Account(), [], NOW
    for (name, a, b), gap_hours in operations:
        now += timedelta(hours=gap_hours)
        ctx = account.ctx(now, "op")
        state = account.state
        decided: list[NewEvent] = []
        try:
            if name == "report":
                decided = decide_violation(P, state, ViolationReport(a, now, b), ctx)
            elif name == "expire":
                for rem_id in list(state.remediations):
                    expired = decide_remediation_expired(P, account.state, rem_id, ctx)
                    account.record(expired, now)
                    log += expired
            elif name == "appeal" and state.decisions:
                target = list(state.decisions)[a % len(state.decisions)]
                decided = decide_appeal_filing(P, state, target, "s", ctx)
            elif name == "decide":
                open_ids = [i for i, ap in state.appeals.items() if ap.status == "open"]
                if open_ids:
                    decided = decide_appeal(P, state, open_ids[0], a, "r", ctx)
        except (NotFound, Conflict, InvalidTransition):
            decided = []
        account.record(decided, now)
        log += decided
    return account, log, now


@settings(max_examples=100, deadline=None)
@given(OPERATIONS)
def test_reports_deadlines_and_appeals_keep_the_account_consistent(
    operations: list[tuple[tuple[str, Any, Any], int]],
) -> None:
    account, log, now = _run(operations)
    assert _run(operations)[1] == log
    by_id = {e.event_id: e for e in log}
    for event in log:
        assert set(event.metadata) == METADATA_KEYS
        if event.type == "NoticeIssued":
            assert event.data["decision_event_id"] in by_id
    state = account.state
    for decision in state.decisions.values():
        if decision.overturned:
            for vid in decision.violation_ids:
                assert state.violations[vid].dismissed
    standing = view(state, now, P.strike_lookback)
    assert (standing.status == "terminated") == state.terminated
    assert standing.open_appeals == sum(1 for d in state.decisions.values() if d.open_appeal_id)


# --- POLICY.md's ladder as an independent model ----------------------------------------------

# Reports (category, severity, how many hours before "now" it occurred), operator dismissals,
# adult-content approvals and appeals, at gaps that hit the lookback's edge to the microsecond.
MODEL_STEPS = st.lists(
    st.tuples(
        st.one_of(
            st.tuples(
                st.just("report"),
                st.sampled_from(
                    ["spam", "phishing", "csam", "sustained_abuse", "unapproved_adult_content"]
                ),
                st.none() | st.sampled_from(ev.SEVERITIES),
                st.sampled_from([0, 1, 24 * 89, 24 * 90]),
            ),
            st.tuples(st.just("dismiss"), st.integers(0, 30), st.none(), st.none()),
            st.tuples(st.just("approve"), st.booleans(), st.none(), st.none()),
            st.tuples(
                st.just("appeal"),
                st.integers(0, 30),
                st.sampled_from(ev.APPEAL_OUTCOMES),
                st.none(),
            ),
        ),
        st.sampled_from([0, 1, 24, 24 * 30, 24 * 90]),  # hours since the step before
        st.sampled_from([0, 0, 1, -1]),  # and microseconds
    ),
    max_size=20,
)
MODEL_POLICIES = st.sampled_from(
    [P, replace(P, termination_after_strikes=1), replace(P, termination_after_strikes=5)]
)


def _modelled_rung(
    policy: Policy, category: str, severity: str, prior: int, terminated: bool, approved: bool
) -> list[str]:
    """The events POLICY.md's table records for a violation, read row by row."""
    if terminated:
        return ["ViolationReported"]
    if category == "unapproved_adult_content" and approved:
        return ["ViolationReported", "ViolationDismissed"]
    if category == "sustained_abuse":
        return ["ViolationReported", "ThrottleApplied", "NoticeIssued"]
    if severity == "critical" or prior >= policy.termination_after_strikes:
        refer = ["AuthorityReferralOpened"] if severity == "critical" and category == "csam" else []
        return ["ViolationReported", "AccountTerminated", *refer, "NoticeIssued"]
    if severity == "high" or prior >= 2:
        return ["ViolationReported", "AccountSuspended", "NoticeIssued"]
    if prior == 1:
        return ["ViolationReported", "ThrottleApplied", "NoticeIssued", "RemediationRequested"]
    return ["ViolationReported", "NoticeIssued", "RemediationRequested"]


@settings(max_examples=500, deadline=None)
@given(MODEL_STEPS, MODEL_POLICIES)
def test_every_rung_is_the_one_policy_md_gives_for_the_strikes_a_model_counts(
    steps: list[tuple[tuple[str, Any, Any, Any], int, int]], policy: Policy
) -> None:
    """A model of POLICY.md kept apart from the fold: a strike is a violation not dismissed
    (by an operator, or by an overturned appeal) and not sustained_abuse nor approved adult
    content, counted for ``strike_lookback`` from when it occurred; "prior strikes" are those
    counting when the new one is decided. Each report gets the events of its row, and a
    suspension lasts as long as its row says. A violation recorded on a terminated account
    is decided by its row once an appeal reverses that termination, after the strikes
    recorded before it."""
    account, now = Account(), NOW
    strikes: dict[str, datetime] = {}  # violation id -> occurred, for every strike not dismissed
    violations: list[str] = []
    # Reported while terminated: id, category, severity, whether approved for adult content then.
    held: list[tuple[str, str, str, bool]] = []
    terminated = approved = False
    for (name, a, b, c), hours, micros in steps:
        now += timedelta(hours=hours, microseconds=micros)
        ctx, state = account.ctx(now, "op"), account.state
        decided: list[NewEvent] = []
        try:
            if name == "report":
                severity = effective_severity(policy, a, b)
                occurred = now - timedelta(hours=c)
                prior = sum(1 for at in strikes.values() if at > now - policy.strike_lookback)
                report = ViolationReport(a, occurred, b)
                decided = decide_violation(policy, state, report, ctx)
                assert types(decided) == _modelled_rung(
                    policy, a, severity, prior, terminated, approved
                ), prior
                for event in decided:
                    if event.type == "AccountSuspended":
                        span = {
                            "high_severity_first": policy.first_high_suspension,
                            "minor_third_strike": policy.third_minor_suspension,
                        }.get(event.data["reason"])
                        want = None if span is None else format_time(now + span)
                        assert (severity == "high" and prior > 0) == (span is None)
                        assert event.data["until"] == want
                violation_id = decided[0].data["violation_id"]
                violations.append(violation_id)
                if a != "sustained_abuse" and not (a == "unapproved_adult_content" and approved):
                    strikes[violation_id] = occurred
                if terminated:
                    held.append((violation_id, a, severity, approved))
                terminated = terminated or "AccountTerminated" in types(decided)
            elif name == "dismiss" and violations:
                violation_id = violations[a % len(violations)]
                decided = ops.decide(policy, state, ops.DismissViolation(violation_id, "r"), ctx)
                strikes.pop(violation_id, None)
                held = [h for h in held if h[0] != violation_id]
            elif name == "approve":
                decided = ops.decide(policy, state, ops.SetAdultContentApproval(a, "r"), ctx)
                approved = a
            elif name == "appeal" and state.decisions:
                target = list(state.decisions)[a % len(state.decisions)]
                filed = decide_appeal_filing(policy, state, target, "s", ctx)
                account.record(filed, now)
                appeal_id = filed[0].data["appeal_id"]
                decided = decide_appeal(policy, account.state, appeal_id, b, "r", ctx)
                if b == "overturned":  # the violations behind it no longer count
                    for violation_id in state.decisions[target].violation_ids:
                        strikes.pop(violation_id, None)
                    if terminated and target == state.termination_event_id:
                        terminated, rungs = False, []
                        while held and not terminated:
                            violation_id, category, severity, then = held.pop(0)
                            before = violations[: violations.index(violation_id)]
                            prior = sum(
                                1
                                for v in before
                                if v in strikes and strikes[v] > now - policy.strike_lookback
                            )
                            rung = _modelled_rung(policy, category, severity, prior, False, then)
                            rungs += rung[1:]
                            if "ViolationDismissed" in rung:
                                strikes.pop(violation_id, None)
                            terminated = "AccountTerminated" in rung
                        assert types(decided)[len(types(decided)) - len(rungs) :] == rungs
                        assert types(decided)[-len(rungs) - 1] == "NoticeIssued"
        except (NotFound, Conflict, InvalidTransition):
            decided = []
        account.record(decided, now)
        assert account.state.terminated == terminated


def test_an_operator_dismissal_names_the_violation_and_offers_no_appeal() -> None:
    """POLICY.md: ``facts`` are the violation ids and their descriptions, ``ground`` the AUP
    sections and the category. A dismissal or a reinstatement restricts nothing, and an appeal
    cannot target either: their statements offer none."""
    account = Account()
    reported = account.report("phishing", NOW)[0]
    vid = reported.data["violation_id"]
    later = NOW + timedelta(hours=1)
    dismissed = ops.decide(
        P, account.state, ops.DismissViolation(vid, "false positive"), account.ctx(later, "op")
    )
    account.record(dismissed, later)
    sor = dismissed[0].data["statement_of_reasons"]
    assert [f.get("violation_id") for f in sor["facts"]] == [vid, None]
    assert sor["facts"][1] == {"description": "false positive", "actor": "op"}
    assert sor["decision"] == f"Violation {vid} is dismissed and no longer counts as a strike."
    assert (sor["ground"], sor["categories"]) == ("AUP §2, §6 (phishing)", ["phishing"])
    assert_appeal_offered_only_where_possible(dismissed)

    reinstated = ops.decide(P, account.state, ops.Reinstate("cleared"), account.ctx(later, "op"))
    assert types(reinstated) == ["AccountReinstated", "NoticeIssued"]
    assert (
        reinstated[0]
        .data["statement_of_reasons"]["redress"]
        .startswith("This decision restricts nothing")
    )
    assert_appeal_offered_only_where_possible(reinstated)


@pytest.mark.parametrize(
    ("factor", "shown"),
    [
        (0.25, "25%"),
        (0.00001, "0.001%"),
        (0.9999999, "99.99999%"),
        (0.9999999999999999, "99.99999999999999%"),  # the largest factor below 1
        (1e-300, "1E-298%"),
        (1e-8, "0.000001%"),  # a millionth of a percent: still written out
        (1e-9, "1E-7%"),  # below it: scientific notation
    ],
)
def test_a_throttle_statement_gives_its_factor_without_rounding_it_away(
    factor: float, shown: str
) -> None:
    account = Account()
    command = ops.ApplyThrottle(factor, "bursts")
    [throttle, _notice] = ops.decide(P, account.state, command, account.ctx(NOW, "op"))
    decision = throttle.data["statement_of_reasons"]["decision"]
    assert f"throttled to {shown} of its limits" in decision


def test_a_referral_points_to_the_termination_for_an_appeal() -> None:
    decided = Account().report("csam", NOW)
    referral = of_type(decided, "AuthorityReferralOpened")
    assert referral.data["statement_of_reasons"]["redress"].startswith(
        "This record cannot be appealed on its own: the termination recorded with it can be"
    )
    assert_appeal_offered_only_where_possible(decided)


@pytest.mark.parametrize(
    ("command", "sections"),
    [
        (ops.Suspend("under review"), ["§6"]),
        (ops.Terminate("fraud ring"), ["§6"]),
        (ops.ApplyThrottle(0.5, "bursts"), ["§3"]),
    ],
    ids=["suspension", "termination", "throttle"],
)
def test_an_appeal_of_an_operator_decision_cites_what_the_decision_cited(
    command: Any, sections: list[str]
) -> None:
    """POLICY.md: every decision carries its AUP citation. An operator's decision has no
    violations behind it; the appeal's outcome cites the section the decision itself cited."""
    account = Account()
    operated = ops.decide(P, account.state, command, account.ctx(NOW, "operator_1"))
    account.record(operated, NOW)
    decision = operated[0]
    assert decision.data["statement_of_reasons"]["aup_sections"] == sections
    # A person decided, on no detection at all.
    automated = decision.data["statement_of_reasons"]["automated_detection"]
    assert (automated, decision.data["statement_of_reasons"]["automated_decision"]) == (
        False,
        False,
    )
    appeal_id = _file(account, decision, NOW)
    for outcome in ("upheld", "overturned"):
        decided = decide_appeal(P, account.state, appeal_id, outcome, "why", account.ctx(NOW))
        reasons = decided[0].data["statement_of_reasons"]
        assert reasons["aup_sections"] == sections
        assert reasons["ground"] == "AUP " + ", ".join(sections)


def test_an_appeal_of_a_policy_decision_cites_its_violations_sections() -> None:
    account, decision = _decided("phishing")
    appeal_id = _file(account, decision, NOW)
    decided = decide_appeal(P, account.state, appeal_id, "upheld", "why", account.ctx(NOW))
    cited = decision.data["statement_of_reasons"]["aup_sections"]
    assert cited and decided[0].data["statement_of_reasons"]["aup_sections"] == cited


# --- operator decisions -----------------------------------------------------------------------


def test_an_operators_restriction_must_end_in_the_future() -> None:
    account = Account()
    ctx = account.ctx(NOW, "op")
    past = (
        (ops.Suspend("r", until=NOW), "until"),
        (ops.ApplyThrottle(0.5, "r", expires_at=NOW), "expires_at"),
    )
    for command, field_name in past:
        with pytest.raises(ValidationFailed) as caught:
            ops.decide(P, account.state, command, ctx)
        assert str(caught.value) == f"The {field_name} time must be in the future"
        assert caught.value.details == [{"field": field_name, "message": "must be in the future"}]
    soon = NOW + timedelta(microseconds=1)
    for command in (ops.Suspend("r", until=soon), ops.ApplyThrottle(0.5, "r", expires_at=soon)):
        assert ops.decide(P, account.state, command, ctx)


def test_the_sweep_ends_the_current_suspension_once_its_until_has_passed() -> None:
    account = Account()
    week = _sid(_operator_suspends(account, NOW + 7 * DAY, NOW))

    def ended(suspension_id: str, at: datetime) -> list[str]:
        decided = ops.decide_suspension_ended(P, account.state, suspension_id, account.ctx(at))
        assert all(e.metadata["actor"] == "policy" for e in decided)  # not the sweep's caller
        return [f"{e.type} {e.data['suspension_id']} {e.data['reason']}" for e in decided]

    assert ended(week, NOW + 7 * DAY - timedelta(microseconds=1)) == []
    assert ended("sus_other", NOW + 7 * DAY) == []
    assert ended(week, NOW + 7 * DAY) == [f"SuspensionEnded {week} expired"]
    indefinite = _sid(_operator_suspends(account, None, NOW + DAY))
    assert ended(week, NOW + 8 * DAY) == []  # replaced: not the current one
    assert ended(indefinite, NOW + 1000 * DAY) == []


def test_a_terminated_account_is_not_reinstated_by_an_operator() -> None:
    """POLICY.md: only an appeal decided ``overturned`` reverses a termination, also on an
    account that was suspended before it was terminated."""
    account = Account()
    _operator_suspends(account, None, NOW)
    account.record(ops.decide(P, account.state, ops.Terminate("r"), account.ctx(NOW, "op")), NOW)
    with pytest.raises(InvalidTransition) as caught:
        ops.decide(P, account.state, ops.Reinstate("r"), account.ctx(NOW, "op"))
    assert caught.value.code == "account_terminated"
    assert str(caught.value) == (
        "the account is terminated; it cannot be reinstated "
        "(only an overturned appeal reverses a termination)"
    )


@pytest.mark.parametrize(
    ("command", "what"),
    [
        (ops.Suspend("r"), "suspended"),
        (ops.Terminate("r"), "terminated again"),
        (ops.ApplyThrottle(0.5, "r"), "throttled"),
    ],
    ids=["suspend", "terminate", "throttle"],
)
def test_a_terminated_account_is_restricted_no_further(command: ops.Command, what: str) -> None:
    account = Account()
    account.record(ops.decide(P, account.state, ops.Terminate("r"), account.ctx(NOW, "op")), NOW)
    with pytest.raises(InvalidTransition) as caught:
        ops.decide(P, account.state, command, account.ctx(NOW, "op"))
    assert caught.value.code == "account_terminated"
    assert str(caught.value) == f"the account is terminated; it cannot be {what}"


def test_an_operator_reinstates_only_a_suspended_account() -> None:
    account = Account()
    with pytest.raises(InvalidTransition) as caught:
        ops.decide(P, account.state, ops.Reinstate("r"), account.ctx(NOW, "op"))
    assert (caught.value.code, str(caught.value)) == (
        "not_suspended",
        "the account is not suspended",
    )
    _operator_suspends(account, None, NOW)
    [reinstated, _notice] = ops.decide(P, account.state, ops.Reinstate("r"), account.ctx(NOW, "op"))
    assert reinstated.data["statement_of_reasons"]["decision"] == "The account is reinstated."


def test_an_operator_completes_a_remediation_and_configures_limits() -> None:
    account = Account()
    rem = of_type(account.report("spam", NOW), "RemediationRequested").data["remediation_id"]
    complete = ops.CompleteRemediation(rem, "fixed")
    [completed] = ops.decide(P, account.state, complete, account.ctx(NOW, "op"))
    assert (completed.type, completed.data) == (
        "RemediationCompleted",
        {"remediation_id": rem, "note": "fixed"},
    )
    limits = ops.ConfigureLimits(60, 10_000, key_id="key_1")
    [configured] = ops.decide(P, account.state, limits, account.ctx(NOW, "op"))
    assert (configured.type, configured.data) == (
        "RateLimitsConfigured",
        {"key_id": "key_1", "requests_per_minute": 60, "tokens_per_day": 10_000},
    )


def test_an_operator_s_statement_gives_the_reason_else_that_an_operator_decided() -> None:
    account = Account()
    for reason, description in (("card testing", "card testing"), ("", "operator decision")):
        command = ops.Suspend(reason)
        [suspended, _notice] = ops.decide(P, account.state, command, account.ctx(NOW, "op"))
        assert str(suspended.data["suspension_id"]).startswith("sus_")
        facts = suspended.data["statement_of_reasons"]["facts"]
        assert facts == [{"description": description, "actor": "op"}]


@pytest.mark.parametrize("factor", [0, -0.5, 1.5])
def test_a_throttle_factor_outside_0_to_1_is_refused(factor: float) -> None:
    account = Account()
    with pytest.raises(ValidationFailed) as caught:
        ops.decide(P, account.state, ops.ApplyThrottle(factor, "r"), account.ctx(NOW, "op"))
    assert str(caught.value) == "The factor must be in (0, 1]"
    assert caught.value.details == [{"field": "factor", "message": "must be in (0, 1]"}]
    [throttle, _] = ops.decide(P, account.state, ops.ApplyThrottle(1, "r"), account.ctx(NOW, "op"))
    assert throttle.data["factor"] == 1


def test_operator_commands_on_what_is_missing_or_closed_are_refused_with_their_codes() -> None:
    account = Account()
    decided = account.report("spam", NOW)  # first minor: a remediation
    vio = decided[0].data["violation_id"]
    rem = of_type(decided, "RemediationRequested").data["remediation_id"]
    thr = ops.decide(P, account.state, ops.ApplyThrottle(0.5, "r"), account.ctx(NOW, "op"))
    account.record(thr, NOW)
    lifted = str(thr[0].data["throttle_id"])
    assert lifted.startswith("thr_")
    [lift] = ops.decide(P, account.state, ops.LiftThrottle(lifted), account.ctx(NOW))
    assert lift.data["reason"] == "lifted by an operator"
    account.record([lift], NOW)
    timed = ops.ApplyThrottle(0.5, "r", expires_at=NOW + DAY)
    ran_out = ops.decide(P, account.state, timed, account.ctx(NOW, "op"))
    account.record(ran_out, NOW)

    def refused(command: ops.Command, at: datetime = NOW) -> tuple[str, str]:
        with pytest.raises((NotFound, InvalidTransition)) as caught:
            ops.decide(P, account.state, command, account.ctx(at, "op"))
        return type(caught.value).__name__, str(caught.value.code)

    assert refused(ops.LiftThrottle("thr_x")) == ("NotFound", "throttle_not_found")
    assert refused(ops.LiftThrottle(lifted)) == ("InvalidTransition", "throttle_not_active")
    expired = str(ran_out[0].data["throttle_id"])
    assert refused(ops.LiftThrottle(expired), NOW + DAY) == (
        "InvalidTransition",
        "throttle_not_active",
    )
    assert refused(ops.DismissViolation("vio_x", "r")) == ("NotFound", "violation_not_found")
    assert refused(ops.CompleteRemediation("rem_x", "n")) == ("NotFound", "remediation_not_found")
    assert refused(ops.CompleteRemediation(rem, "n"), NOW + 7 * DAY) == (
        "InvalidTransition",
        "remediation_overdue",
    )
    account.record(
        ops.decide(P, account.state, ops.DismissViolation(vio, "r"), account.ctx(NOW)), NOW
    )
    assert refused(ops.DismissViolation(vio, "r")) == ("InvalidTransition", "already_dismissed")
    assert refused(ops.CompleteRemediation(rem, "n")) == (
        "InvalidTransition",
        "remediation_not_open",
    )


@pytest.mark.parametrize(
    ("command", "text"),
    [
        (ops.Suspend("r"), "The account is suspended indefinitely, pending review."),
        (
            ops.Suspend("r", until=NOW + DAY),
            f"The account is suspended until {format_time(NOW + DAY)}.",
        ),
        (
            ops.ApplyThrottle(0.5, "r"),
            "Requests of every API key of the account are throttled to 50% of its limits "
            "until lifted.",
        ),
        (
            ops.ApplyThrottle(0.25, "r", key_id="key_1", expires_at=NOW + DAY),
            f"Requests of API key key_1 are throttled to 25% of its limits until "
            f"{format_time(NOW + DAY)}.",
        ),
        (ops.Terminate("r"), "The account is terminated."),
    ],
    ids=["indefinite", "timed", "account-wide", "one key, timed", "termination"],
)
def test_an_operators_restriction_states_its_scope_and_end(command: ops.Command, text: str) -> None:
    account = Account()
    [decision, notice] = ops.decide(P, account.state, command, account.ctx(NOW, "op"))
    assert decision.data["statement_of_reasons"]["decision"] == text
    assert notice.data["statement_of_reasons"]["decision"] == text


def _first_violation(account: Account) -> list[RecordedEvent]:
    """A first minor violation's events (with its warning notice), recorded on ``account``."""
    report = ViolationReport("spam", t(), None, description="d")
    return account.record(decide_violation(P, account.state, report, account.ctx(t())), t())


def test_an_operator_sends_a_notice_again_as_a_copy_that_changes_nothing_else() -> None:
    """``ResendNotice``: one ``NoticeIssued`` under a new id, caused by the notice it copies,
    with that notice's kind, decision, violations, statement and deadline, and ``resend_of``
    naming it (a copy of a copy names the first); the standing does not change."""
    account = Account()
    [first] = [e for e in _first_violation(account) if e.type == "NoticeIssued"]
    before = account.state
    at = t(2)
    [copy_] = ops.decide(P, before, ops.ResendNotice(first, "bounced"), account.ctx(at, "op"))
    assert copy_.type == "NoticeIssued" and copy_.schema_version == 2
    assert copy_.metadata["causation_id"] == first.event_id
    assert copy_.metadata["actor"] == "op"
    assert copy_.data["notice_id"] not in (first.data["notice_id"], None)
    assert copy_.data["notice_id"].startswith("ntc_")
    kept = ("kind", "decision_event_id", "violation_ids", "statement_of_reasons", "deadline")
    assert {k: copy_.data[k] for k in kept} == {k: first.data[k] for k in kept}
    named = {
        "notice_id": first.data["notice_id"],
        "notice_event_id": first.event_id,
        "issued_at": format_time(first.recorded_at),
    }
    assert copy_.data["resend_of"] == {**named, "reason": "bounced", "channels": None}
    [recorded] = account.record([copy_], at)
    assert account.state.to_json() == {
        **before.to_json(),
        "version": recorded.version,
        "last_recorded_at": format_time(at),
    }
    only = ops.ResendNotice(recorded, "", ("webhook",))
    [again] = ops.decide(P, account.state, only, account.ctx(at, "op"))
    assert again.data["resend_of"] == {**named, "reason": "", "channels": ["webhook"]}
    assert again.metadata["causation_id"] == recorded.event_id


def test_only_a_notice_of_the_account_is_sent_again() -> None:
    account = Account()
    recorded = _first_violation(account)
    [notice] = [e for e in recorded if e.type == "NoticeIssued"]
    [decision] = [e for e in recorded if e.type == "RemediationRequested"]
    elsewhere = replace(notice, account_id="acct_2")
    for wrong in (decision, elsewhere):
        with pytest.raises(NotFound) as caught:
            ops.decide(P, account.state, ops.ResendNotice(wrong, "r"), account.ctx(t(1), "op"))
        assert caught.value.code == "notice_not_found"
        assert str(caught.value) == f"no notice {wrong.data.get('notice_id')!r} on this account"


@pytest.mark.parametrize("outcome", ["upheld", "overturned"])
def test_a_notice_of_a_decision_overturned_on_appeal_is_not_sent_again(outcome: str) -> None:
    """It would tell the account of a suspension the appeal lifted; an upheld one's notice,
    and the appeal outcome's own, may be sent again."""
    account = Account()
    report = ViolationReport("phishing", t(), "high", description="d")
    decided = account.record(decide_violation(P, account.state, report, account.ctx(t())), t())
    [suspension] = [e for e in decided if e.type == "AccountSuspended"]
    [notice] = [e for e in decided if e.type == "NoticeIssued"]
    ctx = account.ctx(t(1))
    filed = account.record(
        decide_appeal_filing(P, account.state, suspension.event_id, "not me", ctx), t(1)
    )
    appeal_id = filed[0].data["appeal_id"]
    ruled = decide_appeal(P, account.state, appeal_id, outcome, "checked", account.ctx(t(2)))
    [outcome_notice] = [e for e in account.record(ruled, t(2)) if e.type == "NoticeIssued"]

    resend = ops.ResendNotice(notice, "r")
    if outcome == "overturned":
        with pytest.raises(InvalidTransition) as caught:
            ops.decide(P, account.state, resend, account.ctx(t(3), "op"))
        assert caught.value.code == "decision_overturned"
        assert str(caught.value) == (
            f"the decision of notice {notice.data['notice_id']} was overturned on appeal"
        )
    else:
        assert types(ops.decide(P, account.state, resend, account.ctx(t(3), "op"))) == [
            "NoticeIssued"
        ]
    again = ops.decide(P, account.state, ops.ResendNotice(outcome_notice, "r"), account.ctx(t(3)))
    assert again[0].data["kind"] == "appeal_outcome"


# --- violations a reversed termination had held -----------------------------------------------


def _terminated_by_an_operator(account: Account) -> NewEvent:
    decided = ops.decide(P, account.state, ops.Terminate("chargeback fraud"), account.ctx(t(0)))
    account.record(decided, t(0))
    return of_type(decided, "AccountTerminated")


def test_a_critical_violation_held_by_a_termination_terminates_once_that_one_is_overturned() -> (
    None
):
    account = Account()
    termination = _terminated_by_an_operator(account)
    held = account.report("csam", t(1))
    assert types(held) == ["ViolationReported"]  # POLICY.md: recorded, nothing else decided
    decided = _overturn(account, termination, t(2))

    assert types(decided) == [
        "AppealDecided",
        "AccountReinstated",
        "NoticeIssued",
        "AccountTerminated",
        "AuthorityReferralOpened",
        "NoticeIssued",
    ]
    assert decided[2].data["kind"] == "appeal_outcome"
    again = decided[3]
    assert again.data["reason"] == "critical_violation"
    assert again.data["violation_ids"] == [held[0].data["violation_id"]]
    assert again.metadata["causation_id"] == held[0].event_id
    assert again.metadata["actor"] == "policy"
    facts = again.data["statement_of_reasons"]["facts"]
    assert facts[-1]["appeal_id"] == decided[0].data["appeal_id"]
    assert "while the account was terminated" in facts[-1]["description"]
    assert decided[5].data["kind"] == "termination"
    assert decided[5].data["decision_event_id"] == again.event_id
    standing = view(account.state, t(2), P.strike_lookback)
    assert standing.terminated
    assert account.state.termination_event_id == again.event_id


def test_held_violations_are_decided_in_the_order_recorded_each_after_the_ones_before() -> None:
    account = Account()
    termination = _terminated_by_an_operator(account)
    first = account.report("spam", t(1))[0].data["violation_id"]
    second = account.report("disinformation", t(1.5))[0].data["violation_id"]
    decided = _overturn(account, termination, t(2))

    assert types(decided)[3:] == [
        "NoticeIssued",
        "RemediationRequested",  # the first: no prior strike, a warning
        "ThrottleApplied",  # the second: one prior strike (the first), not two
        "NoticeIssued",
        "RemediationRequested",
    ]
    assert [e.data.get("kind") for e in decided[3:] if e.type == "NoticeIssued"] == [
        "warning",
        "throttle",
    ]
    assert [e.data["violation_ids"] for e in decided[4:] if e.type != "NoticeIssued"] == [
        [first],
        [second],
        [second],
    ]
    throttle = of_type(decided, "ThrottleApplied")
    assert throttle.data["expires_at"] == format_time(t(2) + P.second_minor_throttle.duration)
    standing = view(account.state, t(2), P.strike_lookback)
    assert (standing.status, standing.strikes, len(standing.open_remediations)) == (
        "throttled",
        2,
        2,
    )


def test_a_held_violation_stays_undecided_while_a_termination_holds() -> None:
    account = Account()
    termination = _terminated_by_an_operator(account)
    account.report("csam", t(1))
    minor = account.report("spam", t(1.5))[0].data["violation_id"]
    upheld_id = _file(account, termination, t(2))
    upheld = decide_appeal(P, account.state, upheld_id, "upheld", "r", account.ctx(t(2), "op"))
    assert types(upheld) == ["AppealDecided", "NoticeIssued"]
    account.record(upheld, t(2))

    decided = _overturn(account, termination, t(3))
    # The held csam terminates again; the spam after it is held by that termination in turn.
    assert types(decided)[3:] == ["AccountTerminated", "AuthorityReferralOpened", "NoticeIssued"]
    again = of_type(decided, "AccountTerminated")
    decided = _overturn(account, again, t(4))
    assert types(decided) == [
        "AppealDecided",
        "AccountReinstated",
        "ViolationDismissed",  # the csam, behind the termination overturned
        "NoticeIssued",
        "NoticeIssued",  # the spam's warning: its one prior strike was just dismissed
        "RemediationRequested",
    ]
    assert of_type(decided, "RemediationRequested").data["violation_ids"] == [minor]


def test_the_state_a_held_violation_is_decided_on_is_the_one_recording_the_decisions_gives() -> (
    None
):
    """``with_decided``: what ``_decide_held`` folds each decision into before the next."""
    account = Account()
    account.report("spam", t(0))
    before = account.state
    report = ViolationReport("spam", t(1), None, description="d")
    decided = decide_violation(P, before, report, account.ctx(t(1)))
    assert len(decided) > 1
    account.record(decided, t(1))
    assert with_decided(before, decided, t(1)) == account.state


# --- a reversed remediation request takes its missed-remediation suspension with it ------------


def _missed(account: Account, rem_id: str, due: datetime) -> NewEvent:
    decided = decide_remediation_expired(P, account.state, rem_id, account.ctx(due, "scheduler"))
    account.record(decided, due)
    return of_type(decided, "AccountSuspended")


def _request_of(account: Account, rem_id: str) -> str:
    return account.state.remediations[rem_id].event_id


def _overturn_request(account: Account, rem_id: str, at: datetime) -> list[NewEvent]:
    """Appeal remediation ``rem_id``'s request and overturn it at ``at`` (not yet recorded)."""
    appeal_id = _file(account, _request_of(account, rem_id), at)
    return decide_appeal(P, account.state, appeal_id, "overturned", "r", account.ctx(at, "op"))


def test_overturning_a_missed_remediation_request_ends_the_suspension_for_missing_it() -> None:
    account, rem_id, due = _with_remediation()
    suspended = _missed(account, rem_id, due)
    later = due + DAY
    decided = _overturn_request(account, rem_id, later)

    assert types(decided) == [
        "AppealDecided",
        "AccountReinstated",
        "ViolationDismissed",
        "NoticeIssued",
    ]
    assert decided[1].data["ends"] == "suspension"
    sid = suspended.data["suspension_id"]
    assert (
        decided[0]
        .data["statement_of_reasons"]["decision"]
        .endswith(
            f"is reversed and its violations are dismissed. Suspension {sid}, imposed because the "
            "remediation was not completed, ends with it."
        )
    )
    account.record(decided, later)
    standing = view(account.state, later, P.strike_lookback)
    assert (standing.status, standing.strikes, standing.suspension) == ("good_standing", 0, None)


def test_a_missed_remediation_suspension_that_ran_out_is_not_ended_again() -> None:
    account, rem_id, due = _with_remediation()
    suspended = _missed(account, rem_id, due)
    over = parse_time(suspended.data["until"])
    decided = _overturn_request(account, rem_id, over)
    assert types(decided) == ["AppealDecided", "ViolationDismissed", "NoticeIssued"]
    assert "imposed because" not in decided[0].data["statement_of_reasons"]["decision"]


def test_a_missed_remediation_suspension_held_behind_a_longer_one_ends_never_to_return() -> None:
    account, rem_id, due = _with_remediation()
    account.given(
        ev.AccountSuspended("sus_long", format_time(due + 30 * DAY), "operator", SOR), NOW
    )
    held = _missed(account, rem_id, due)
    assert held.data["held_by"] == "sus_long"
    later = due + DAY
    decided = _overturn_request(account, rem_id, later)
    assert types(decided) == [
        "AppealDecided",
        "SuspensionEnded",
        "ViolationDismissed",
        "NoticeIssued",
    ]
    assert decided[1].data == {
        "suspension_id": held.data["suspension_id"],
        "reason": ev.SUSPENSION_OVERTURNED,
    }
    account.record(decided, later)
    assert _in_force(account, later) == "sus_long"
    # Overturning the longer one now leaves the account unsuspended: the held one is gone.
    (long_decision,) = [d for d in account.state.decisions.values() if d.target_id == "sus_long"]
    _overturn(account, long_decision.event_id, later)
    assert _in_force(account, later) is None


def test_overturning_one_missed_remediation_request_leaves_the_suspension_for_another() -> None:
    account = Account()
    first = of_type(account.report("spam", t(0)), "RemediationRequested").data["remediation_id"]
    second = of_type(account.report("spam", t(1)), "RemediationRequested").data["remediation_id"]
    for_first = _missed(account, first, t(7))
    for_second = _missed(account, second, t(8))  # longer: in force, the first's behind it
    assert _in_force(account, t(8)) == for_second.data["suspension_id"]
    decided = _overturn(account, _request_of(account, first), t(9))
    assert types(decided)[:2] == ["AppealDecided", "SuspensionEnded"]
    assert decided[1].data["suspension_id"] == for_first.data["suspension_id"]
    assert _in_force(account, t(9)) == for_second.data["suspension_id"]


def test_held_adult_content_is_judged_by_the_approval_when_it_was_recorded() -> None:
    account = Account()
    approve = ops.SetAdultContentApproval(True, "verified")
    account.record(ops.decide(P, account.state, approve, account.ctx(t(0))), t(0))
    termination = _terminated_by_an_operator(account)
    tolerated = account.report("unapproved_adult_content", t(1))[0].data["violation_id"]
    revoke = ops.SetAdultContentApproval(False, "revoked")
    account.record(ops.decide(P, account.state, revoke, account.ctx(t(1.5))), t(1.5))
    unapproved = account.report("unapproved_adult_content", t(1.7))[0].data["violation_id"]
    account.record(ops.decide(P, account.state, approve, account.ctx(t(1.8))), t(1.8))
    decided = _overturn(account, termination, t(2))
    # The first was no strike when recorded: dismissed, whatever the approval now. The second
    # was a §4 violation when recorded: a warning, though the account is approved again now.
    assert types(decided)[3:] == ["ViolationDismissed", "NoticeIssued", "RemediationRequested"]
    assert decided[3].data["violation_id"] == tolerated
    assert decided[5].data["violation_ids"] == [unapproved]


def test_a_violation_an_earlier_reversal_left_undecided_stays_so_at_another_ones() -> None:
    """A log from before 2026-12-07: a reversed termination decided nothing on the violation
    it had held. Reversing a later termination decides only what that one holds."""
    account = Account()
    first = _terminated_by_an_operator(account)
    old = account.report("spam", t(1))[0].data["violation_id"]
    appeal_id = _file(account, first, t(2))
    decided = decide_appeal(P, account.state, appeal_id, "overturned", "r", account.ctx(t(2)))
    assert types(decided)[3:] == ["NoticeIssued", "RemediationRequested"]
    account.record(decided[:3], t(2))  # as the release before recorded it
    second = ops.decide(P, account.state, ops.Terminate("again"), account.ctx(t(200)))
    account.record(second, t(200))
    held = account.report("spam", t(201))[0].data["violation_id"]
    decided = _overturn(account, of_type(second, "AccountTerminated"), t(202))
    assert [e.data["violation_ids"] for e in decided if e.type == "RemediationRequested"] == [
        [held]
    ]
    assert old not in str([e.data for e in decided])


def test_each_termination_a_reversal_decides_holds_what_its_predecessor_still_held() -> None:
    """Three reversals in a row: the violations each re-termination leaves held, whichever
    termination they were recorded under, are decided at the next reversal, in the order
    recorded, each after the strikes recorded before it only."""
    account = Account()
    first = _terminated_by_an_operator(account)
    a = account.report("csam", t(1))[0].data["violation_id"]
    b = account.report("csam", t(1.5))[0].data["violation_id"]
    early = account.report("spam", t(1.7))[0].data["violation_id"]
    second = of_type(_overturn(account, first, t(2)), "AccountTerminated")
    assert second.data["violation_ids"] == [a]
    late = account.report("spam", t(3))[0].data["violation_id"]  # under the second
    third = of_type(_overturn(account, second, t(4)), "AccountTerminated")
    assert third.data["violation_ids"] == [b]
    assert {account.state.violations[v].held_by for v in (early, late)} == {third.event_id}
    decided = _overturn(account, third, t(5))
    # a and b are dismissed, each behind a termination reversed. The spam held since the first
    # termination has no prior strike (the later spam, still undecided, is not prior to it):
    # a warning; the later one has one, the earlier spam: a throttle.
    on = {
        v: [e.type for e in decided if v in (e.data.get("violation_ids") or ())]
        for v in (early, late)
    }
    assert on == {
        early: ["NoticeIssued", "RemediationRequested"],
        late: ["ThrottleApplied", "NoticeIssued", "RemediationRequested"],
    }
    assert not account.state.terminated


def test_a_reversal_decides_no_violation_that_termination_did_not_hold() -> None:
    """A violation recorded with no decision while the account was not terminated (as
    ``Account.strike`` records one) was held by no termination: neither the reversal of a
    termination whose violations it sits beside, nor ``decide_held`` on an account not
    terminated, decides it."""
    account = Account()
    account.strike("vio_undecided", t(0))
    assert decide_held(P, account.state, [], "apl_1", account.ctx(t(0))) == []
    for day in (1, 2, 3):
        decided = account.report("spam", t(day))
    termination = of_type(decided, "AccountTerminated")  # its violation was held by none
    held = account.report("spam", t(4))[0].data["violation_id"]
    decided = _overturn(account, termination, t(5))
    decided_on = {vid for e in decided for vid in e.data.get("violation_ids") or ()}
    assert held in decided_on
    assert "vio_undecided" not in decided_on
