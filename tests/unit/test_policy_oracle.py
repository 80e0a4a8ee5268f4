"""A differential oracle: the real decider and fold against ``policy_reference``'s reading of
POLICY.md, on sequences Hypothesis makes up.

Each sequence is one account under the default policy: violations of any category (a reported
severity or none, occurred from 100 days before they are reported to 5 minutes after), time
passing (with or without the deadline worker running), operators' dismissals and completed
remediations, and changes of the adult-content approval. After every step the decisions
recorded (types and key numbers) and the standing, at the current instant and at a later one,
must be the reference's.
Operators' suspensions, reinstatements, terminations, throttles and lifts (with a notice or,
``notify: false``, without), and appeals (filed and decided at once, upheld or overturned)
against any decision recorded, come up too, and so do throttles of one key, violations naming a
key (the ladder's throttles stay account-wide), abuse reports (a third party's, or the
gate's, which files none while one of its category is open) and their triage, and limits an
operator configures for a key or the account's ceiling (in the stored state, which the gate
reads: CONTRACT.md's standing object does not show them). After the run,
the standing ``as_of`` earlier instants (the events recorded up to each, folded) must be the
reference's as it stood then.

The second test does the same under a policy file made up for each sequence: every key of
POLICY.md's TOML block left out or given (durations from seconds to a hundred years, throttle
factors in (0, 1], ``termination_after_strikes`` from 1 to 2**63 - 1), written as TOML and read
by the product's own loader; the reference gets the same numbers, and every event recorded must
carry the file's ``version``. Steps there may also advance by exactly one of the policy's spans.

Disagreements found so far, and how they were settled (none under other policy files, with
``notify: false``, ``as_of`` earlier instants, abuse reports, key throttles or limits; the
readings the reference took there are in its docstring):
- An overturned operator's suspension that had replaced one ending at the same instant: the
  product gave the first one back when both were indefinite but not when both were timed. A
  product defect ("overturned reverses the decision", the one appealed; README: only one that an
  operator's *shorter* suspension replaced never comes back): fixed in the fold, pinned by
  ``test_overturning_a_suspension_as_long_as_the_one_it_replaced_gives_that_one_back``.
- A remediation cannot be completed at or after its due time (the product refuses it); the
  reference took "completed by its due time" to allow the instant itself. The expiry fires at
  that same instant, so the product's reading is the consistent one: the reference follows it.
- The lift of a throttle that has run out is refused; the reference follows the product.
- A violation whose ``occurred_at`` is ahead of its recording (CONTRACT.md allows 5 minutes)
  is a strike, and open, from when it is recorded, not from its ``occurred_at`` ("counted ... from
  when it occurred" read literally); the reference follows the product: it has happened, the
  reporter's clock is ahead.
- The reference first dropped a suspension that an operator's *equal* one replaced; README says
  only a shorter one: a defect of the reference, fixed. It also kept a suspension held behind
  the one an operator's shorter suspension replaced, and gave it back when that was overturned:
  a longer suspension than the operator's left alone would give, which README rules out ("must
  not leave the account worse off"); a defect of the reference, fixed.
"""

from __future__ import annotations

import copy
import os
import tempfile
from collections import deque
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import event as note
from hypothesis import given, settings
from hypothesis import note as say
from hypothesis import strategies as st

from enforcement import operator_decisions as ops
from enforcement.errors import Conflict, InvalidTransition
from enforcement.gate import core
from enforcement.policy import (
    DEFAULT_POLICY,
    Policy,
    ViolationReport,
    decide_abuse_report,
    decide_appeal,
    decide_appeal_filing,
    decide_gate_abuse_report,
    decide_gate_sustained_abuse,
    decide_remediation_expired,
    decide_triage,
    decide_violation,
)
from enforcement.policy_file import AUP_SEVERE, load_policy
from events import NewEvent, RecordedEvent
from events.timefmt import parse_time
from projections.standing import DECISION_TYPES, Standing, StandingState, fold, state_at, view
from tests.unit import policy_reference as ref
from tests.unit.test_policy import T0, Account

P = DEFAULT_POLICY
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# A few seconds in the suite; ORACLE_EXAMPLES=30000 ORACLE_STEPS=40 hunts for minutes.
EXAMPLES = int(os.environ.get("ORACLE_EXAMPLES", "400"))
STEPS = int(os.environ.get("ORACLE_STEPS", "14"))
POLICY_EXAMPLES = int(os.environ.get("ORACLE_EXAMPLES", "200"))


def _time(text: str | None) -> datetime | None:
    return None if text is None else parse_time(text)


def decision(event: NewEvent) -> ref.Decision:
    """An event as the reference states its decisions: type and key numbers."""
    d = event.data
    match event.type:
        case "ViolationReported":
            return (event.type, d["severity"], d["strike"])
        case "AccountSuspended":
            return (event.type, _time(d["until"]), d["held_by"] is not None)
        case "ThrottleApplied":  # the ladder's are account-wide (POLICY.md): key_id None
            return (event.type, d["key_id"], d["factor"], _time(d["expires_at"]))
        case "AbuseReportReceived":
            return (event.type, d["category"])
        case "AbuseReportTriaged":
            return (event.type, d["outcome"])
        case "RemediationRequested":
            return (event.type, _time(d["due_at"]))
        case "NoticeIssued":
            return (event.type, d["kind"])
        case "AuthorityReferralOpened":
            return (event.type, d["category"])
        case "ViolationDismissed":
            return (event.type, d["reason"])
        case "RateLimitsConfigured":
            return (event.type, d["key_id"], d["requests_per_minute"], d["tokens_per_day"])
        case _:
            return (event.type,)


@dataclass
class Twins:
    """The real account and the reference, fed the same steps under the same policy (the real
    one loaded as the product loads it); ids map the real ones to keys."""

    policy: Policy = P
    model: ref.Reference = field(default_factory=ref.Reference)
    real: Account = field(default_factory=Account)
    now: datetime = T0
    keys: dict[str, str] = field(default_factory=dict)  # real violation/remediation id -> key
    ids: dict[str, str] = field(default_factory=dict)  # key -> real id
    decisions: list[str] = field(default_factory=list)  # real ids of model.decisions, in order
    throttle_ids: list[str] = field(default_factory=list)  # real ids of model.throttles
    log: list[RecordedEvent] = field(default_factory=list)  # every event, as recorded
    # The reference as it stood once everything recorded at each instant was: for ``as_of``.
    snapshots: list[tuple[datetime, ref.Reference]] = field(default_factory=list)
    denial_times: deque[int] = field(default_factory=deque)  # the gate's (``core.record_denial``)

    def __post_init__(self) -> None:
        self.snapshot(T0 - timedelta(days=1))  # before anything is recorded

    def snapshot(self, at: datetime) -> None:
        self.snapshots.append((at, copy.deepcopy(self.model)))

    def _append(self, decided: list[NewEvent], at: datetime) -> None:
        for event in decided:  # POLICY.md: the policy's version "recorded on every decision"
            assert event.metadata["policy_version"] == self.policy.version, event.type
        self.log += self.real.record(decided, at)

    def _record(self, decided: list[NewEvent], at: datetime) -> None:
        self._append(decided, at)
        self.decisions += [e.event_id for e in decided if e.type in DECISION_TYPES]
        self.throttle_ids += [e.data["throttle_id"] for e in decided if e.type == "ThrottleApplied"]

    def _name(self, real_id: str, key: str) -> None:
        self.keys[real_id], self.ids[key] = key, real_id

    def report(
        self, category: str, severity: str | None, back: timedelta, key_id: str | None = None
    ) -> None:
        key = f"v{len(self.model.violations)}"
        occurred = self.now - back
        report = ViolationReport(category, occurred, severity, key_id, description="d")

        decided = decide_violation(self.policy, self.real.state, report, self.real.ctx(self.now))
        prior, limit = self.model.strikes(self.now), self.policy.termination_after_strikes
        note(f"report with {min(prior, 4)} prior strikes, terminating at {min(limit, 5)}")
        self._record(decided, self.now)
        expected = self.model.report(key, category, severity, occurred, self.now)
        self._name_violation(decided, key)
        for d in expected[1:]:
            note(f"report: {d[0]} {d[2] if d[0] == 'AccountSuspended' else ''}")
        step = f"report {category}/{severity} occurred {occurred} at {self.now}"
        assert [decision(e) for e in decided] == expected, step

    def _name_violation(self, decided: list[NewEvent], key: str) -> None:
        for event in decided:
            if event.type == "ViolationReported":
                self._name(event.data["violation_id"], key)
            if event.type == "RemediationRequested":
                self._name(event.data["remediation_id"], f"rem_{key}")

    def abuse_report(self, category: str, gate: bool) -> None:
        """A third party's abuse report, or the gate's (``gate``)."""
        key, ctx = f"r{len(self.model.abuse_reports)}", self.real.ctx(self.now)
        if gate:
            decided = decide_gate_abuse_report(self.policy, self.real.state, category, "d", ctx)
        else:
            decided = decide_abuse_report(self.policy, category, "d", None, None, ctx)
        self._record(decided, self.now)
        expected = self.model.receive_abuse_report(key, category, self.now, gate)
        if decided:
            self._name(decided[0].data["report_id"], key)
        assert [decision(e) for e in decided] == expected, f"abuse report at {self.now}"

    def deny(self, gaps: list[timedelta]) -> None:
        """Gate denials (rate or quota), one after each gap: counted as the embedded gate counts
        them (``core.record_denial`` with the gate's options), and raising ``sustained_abuse``
        as the gate's detector has the service decide it (``decide_gate_sustained_abuse``)."""
        if self.model.suspended(self.now) or self.model.terminated:
            return  # denied as suspended or terminated: no rate denial to count
        rule = self.policy.sustained_abuse_denials
        window_us = int(rule.window.total_seconds()) * core.US
        for gap in gaps:
            self.now += gap
            at_us = (self.now - EPOCH) // timedelta(microseconds=1)
            counted = core.record_denial(self.denial_times, at_us, rule.count, window_us)
            key = f"v{len(self.model.violations)}"
            report = ViolationReport(
                "sustained_abuse", self.now, None, "k1", "gate", "automated", description="d"
            )
            ctx = self.real.ctx(self.now, "gate")
            decided = decide_gate_sustained_abuse(
                self.policy, self.real.state, report, counted, ctx
            )
            self._record(decided, self.now)
            expected = self.model.deny(key, self.now)
            self._name_violation(decided, key)
            if expected:
                self.snapshot(self.now)
            note(f"denials: {'raised' if expected else 'none'}")
            assert [decision(e) for e in decided] == expected, f"denial at {self.now}"

    def triage(self, index: int, outcome: str, severity: str | None) -> None:
        if not self.model.abuse_reports:
            return
        key = self.model.abuse_reports[index % len(self.model.abuse_reports)].key
        ctx = self.real.ctx(self.now, "op")
        expected = self.model.triage(key, outcome, severity, self.now)
        if expected is None:
            with pytest.raises(InvalidTransition):
                decide_triage(self.policy, self.real.state, self.ids[key], outcome, severity, ctx)
            return
        decided = decide_triage(self.policy, self.real.state, self.ids[key], outcome, severity, ctx)
        self._record(decided, self.now)
        self._name_violation(decided, f"{key}_v")
        note(f"triage {outcome}: {[d[0] for d in expected[2:]]}")
        assert [decision(e) for e in decided] == expected, f"triage {key} at {self.now}"

    def advance(self, by: timedelta, deadlines: bool) -> None:
        start, self.now = self.now, self.now + by
        if not deadlines:
            return
        due = sorted(
            self.model.due_remediations(self.now),
            key=lambda k: max(start, *(r.due_at for r in self.model.remediations if r.key == k)),
        )
        for key in due:
            (rem,) = [r for r in self.model.remediations if r.key == key]
            at = max(start, rem.due_at)  # the worker just after due_at, or the sweep catching up
            real_id = self.ids[key]
            ctx = self.real.ctx(at)
            decided = decide_remediation_expired(self.policy, self.real.state, real_id, ctx)
            self._record(decided, at)
            expected = self.model.expire(key, at)
            self.snapshot(at)
            note(f"expire: {[d[0] for d in expected]} {expected[1][2] if expected[1:] else ''}")
            assert [decision(e) for e in decided] == expected, f"expire {key} at {at}"

    def operate(self, command: Any) -> None:
        decided = ops.decide(self.policy, self.real.state, command, self.real.ctx(self.now, "op"))
        self._append(decided, self.now)

    def appeal(self, index: int, outcome: str) -> None:
        if not self.decisions:
            return
        index = len(self.decisions) - 1 - index % len(self.decisions)  # the latest most often
        target, ctx = self.decisions[index], self.real.ctx(self.now, "op")
        try:
            filed = decide_appeal_filing(self.policy, self.real.state, target, "not me", ctx)
        except InvalidTransition:
            filed = []
        self._append(filed, self.now)
        decided: list[NewEvent] = []
        if filed:
            appeal_id = filed[0].data["appeal_id"]
            decided = decide_appeal(self.policy, self.real.state, appeal_id, outcome, "r", ctx)
            self._record(decided, self.now)  # a reversed termination's held violations' too
            for event in decided:
                if event.type == "RemediationRequested":
                    (vid,) = event.data["violation_ids"]
                    self._name(event.data["remediation_id"], f"rem_{self.keys[vid]}")
        kind = self.model.decisions[index].type
        if (
            kind == "AccountSuspended"
            and self.model.decisions[index].target is self.model.suspension
        ):
            others = [
                x for x in self.model.suspensions if x.in_force(self.now) and not x.overturned
            ]
            note(f"appeal against the current suspension, {len(others)} running")
        note(f"appeal {outcome} {kind} {'filed' if filed else 'refused'}")
        step = f"appeal {outcome} against decision {index} at {self.now}"
        assert bool(filed) == self.model.appeal(index, outcome, self.now), step
        # What follows the appeal's own notice: the decisions on the violations a reversed
        # termination had held.
        notice = next((i for i, e in enumerate(decided) if e.type == "NoticeIssued"), len(decided))
        held = [decision(e) for e in decided[notice + 1 :]]
        if held:
            note(f"appeal decided held violations: {[d[0] for d in held]}")
        assert held == (self.model.held_decisions if filed and outcome == "overturned" else [])

    def operator(self, command: Any, allowed: bool | list[ref.Decision] | None) -> None:
        """An operator's command the reference allows (``allowed``: true, or the decisions it
        expects) or refuses (a 409)."""
        if allowed:
            ctx = self.real.ctx(self.now, "op")
            decided = ops.decide(self.policy, self.real.state, command, ctx)
            self._record(decided, self.now)
            if isinstance(allowed, list):
                assert [decision(e) for e in decided] == allowed, f"{command} at {self.now}"
        else:
            with pytest.raises((InvalidTransition, Conflict)):
                self.operate(command)

    def check_standing(self, at: datetime) -> None:
        real = view(self.real.state, at, self.policy.strike_lookback)
        got = self.standing(real, self.real.state)
        assert got == self.model.standing(at), f"standing at {at}"

    def check_as_of(self, at: datetime) -> None:
        """The standing ``as_of`` an earlier instant (the events recorded up to it, folded) is
        the reference's standing then, as it stood when those were recorded."""
        real = fold(self.real.account_id, self.log, at, self.policy.strike_lookback)
        model = self.snapshots[0][1]
        for when, then in self.snapshots:
            if when <= at:
                model = then
        got = self.standing(real, state_at(self.real.account_id, self.log, at))
        assert got == model.standing(at), f"standing as_of {at}"

    def standing(self, standing: Standing, state: StandingState) -> ref.RefStanding:
        """The real standing in the reference's terms; the limits configured are the stored
        state's (the gate's, which CONTRACT.md's standing object does not show)."""
        limits = [state.account_rate_limit, *state.key_rate_limits.values()]
        real = standing.to_json()
        got = ref.RefStanding(
            status=real["status"],
            strikes=real["strikes"],
            open_violations=frozenset(self.keys[v] for v in real["open_violations"]),
            open_remediations=frozenset(
                (self.keys[r["remediation_id"]], parse_time(r["due_at"]))
                for r in real["open_remediations"]
            ),
            throttles=frozenset(
                (t["key_id"], t["factor"], _time(t["expires_at"])) for t in real["active_throttles"]
            ),
            suspension=None
            if real["suspension"] is None
            else (_time(real["suspension"]["until"]),),
            terminated=real["terminated"],
            adult_content_approved=real["adult_content_approved"],
            open_abuse_reports=real["open_abuse_reports"],
            limits=frozenset(
                (r.key_id, r.requests_per_minute, r.tokens_per_day) for r in limits if r
            ),
        )
        note(f"status {got.status} strikes {got.strikes}")
        if got.throttles and all(key for key, _, _ in got.throttles):
            note(f"status {got.status} under key throttles alone")
        return got


CATEGORIES = sorted(ref.CATEGORY_TABLE)
# Mostly categories whose default is minor, so that sequences climb the ladder before a
# termination ends them; every category and severity still comes up.
MINOR = [c for c in CATEGORIES if ref.CATEGORY_TABLE[c][0] in ("low", "medium")]
CATEGORY = st.one_of(st.sampled_from(MINOR), st.sampled_from(MINOR), st.sampled_from(CATEGORIES))
SEVERITY = st.one_of(st.none(), st.none(), st.sampled_from(ref.SEVERITIES))
# Hours, with whole days and the policy's own spans (7, 24 h; 7, 20, 30, 90 days) likely, so that
# boundaries are met exactly as often as not.
HOURS = st.one_of(
    st.integers(0, 48),
    st.sampled_from([24, 24 * 7, 24 * 20, 24 * 30, 24 * 90]),
    st.integers(0, 100).map(lambda d: d * 24),
)
SPAN = st.one_of(st.sampled_from([24 * 7, 24 * 30]), HOURS)
KEY = st.sampled_from([None, None, "k1", "k2"])
# CONTRACT.md's limits (``LimitsIn``: 1 to 10**7 requests a minute, 1 to 10**15 tokens a day).
RPM_VALUES = st.one_of(st.sampled_from([1, 2, 60, 600, 10**7]), st.integers(1, 10**7))
TPD_VALUES = st.one_of(st.sampled_from([1, 10, 10**6, 10**12, 10**15]), st.integers(1, 10**15))
REPORT = st.tuples(
    st.just("report"),
    CATEGORY,
    SEVERITY,
    # Minutes before being reported it occurred (CONTRACT.md: up to 5 minutes ahead), and the
    # key it names, if any.
    st.tuples(st.one_of(HOURS.map(lambda h: h * 60), st.integers(-5, 0)), KEY),
)
APPEAL = st.tuples(
    st.just("appeal"), st.integers(0, 20), st.sampled_from(["upheld", "overturned"]), st.just(0)
)
DENIALS = st.tuples(
    st.just("denials"), st.sampled_from(["edge", "spread"]), st.integers(-1, 1), st.integers(0, 3)
)
# Time passing by exactly one of the policy's own spans (its index in ``spans``).
SPAN_STEP = st.tuples(st.just("advance_span"), st.integers(0, 20), st.booleans(), st.just(0))
STEP = st.one_of(
    REPORT,
    st.tuples(st.just("advance"), HOURS, st.booleans(), st.just(0)),
    SPAN_STEP,
    st.tuples(st.just("dismiss"), st.integers(0, 20), st.just(None), st.just(0)),
    st.tuples(st.just("complete"), st.integers(0, 20), st.just(None), st.just(0)),
    st.tuples(st.just("approve"), st.booleans(), st.just(None), st.just(0)),
    # An operator's suspension or throttle: for a span (often one of the ladder's), or without
    # end; with a notice or without (``notify``).
    st.tuples(st.just("suspend"), SPAN, st.booleans(), st.booleans()),
    # ... a throttle of the account or of one key (``c``: notify, key).
    st.tuples(st.just("throttle"), SPAN, st.booleans(), st.tuples(st.booleans(), KEY)),
    # Abuse reports (a third party's, or the gate's: ``b``), and their triage.
    st.tuples(st.just("abuse_report"), CATEGORY, st.booleans(), st.just(0)),
    st.tuples(
        st.just("triage"), st.integers(0, 20), st.sampled_from(["confirmed", "rejected"]), SEVERITY
    ),
    # An operator's limits for a key or the account's ceiling (``b``: None), CONTRACT.md's
    # ranges, the deployment's defaults and the gate test's among them.
    st.tuples(st.just("limits"), RPM_VALUES, KEY, TPD_VALUES),
    # A burst of the gate's denials (``b``: the last one of ``count`` exactly ``window`` after
    # the first, a microsecond less or more; ``c``: more after it), or evenly spread.
    DENIALS,
    st.tuples(st.just("terminate"), st.just(0), st.none(), st.booleans()),
    st.tuples(st.sampled_from(["reinstate", "lift"]), st.integers(0, 20), st.none(), st.just(0)),
    APPEAL,
)
# Instants to ask the standing ``as_of`` after the run: the instant of a step (by index), moved
# by a microsecond before it, not at all, or some hours after it.
AS_OF = st.lists(
    st.tuples(
        st.integers(0, 40),
        st.one_of(
            st.sampled_from([timedelta(microseconds=-1), timedelta(0)]),
            HOURS.map(lambda h: timedelta(hours=h)),
        ),
    ),
    max_size=3,
)


def spans(policy: ref.RefPolicy) -> list[timedelta]:
    """The policy's own durations, which the steps may advance by exactly."""
    return [
        policy.strike_lookback,
        policy.remediation_window,
        policy.first_high_suspension,
        policy.second_minor_throttle[1],
        policy.third_minor_suspension,
        policy.missed_remediation_suspension,
        policy.sustained_abuse_throttle[1],
        policy.appeal_window,
    ]


def burst(policy: Policy, shape: str, delta: int, extra: int) -> list[timedelta]:
    """The gaps before each denial of a burst: at ``edge``, ``count`` denials whose first is
    ``window`` (plus ``delta`` microseconds) before the last, then ``extra`` a microsecond
    apart; ``spread``, ``count + extra - 1`` denials evenly over ``window`` (plus ``delta``
    halves of it)."""
    count, window = policy.sustained_abuse_denials.count, policy.sustained_abuse_denials.window
    us = timedelta(microseconds=1)
    if shape == "edge":
        first = [timedelta(0), *[us] * (count - 2)]
        last = [window - (count - 2) * us + delta * us] if count > 1 else []
        return [*first, *last, *[us] * extra]
    n = max(count + extra - 1, 1)
    span = window * (2 + delta) / 2
    return [timedelta(0), *[span / n] * (n - 1)]


def run(twins: Twins, steps: list[tuple[Any, ...]], later: int, as_of: list[Any]) -> None:
    for name, a, b, c in steps:
        if name == "report":
            twins.report(a, b, timedelta(minutes=c[0]), c[1])
        elif name == "advance":
            twins.advance(timedelta(hours=a), b)
        elif name == "advance_span":
            options = spans(twins.model.policy)
            twins.advance(options[a % len(options)], b)
        elif name == "dismiss":
            live = [v.key for v in twins.model.violations if not v.dismissed]
            if live:
                key = live[a % len(live)]
                twins.operate(ops.DismissViolation(twins.ids[key], "mistake"))
                twins.model.dismiss(key)
        elif name == "complete":
            open_ = [r.key for r in twins.model.remediations if not r.closed]
            if open_:
                key = open_[a % len(open_)]
                command = ops.CompleteRemediation(twins.ids[key], "fixed")
                if twins.model.complete(key, twins.now):
                    twins.operate(command)
                else:
                    with pytest.raises(InvalidTransition):
                        twins.operate(command)
        elif name == "approve":
            twins.operate(ops.SetAdultContentApproval(a, "verified"))
            twins.model.approve_adult_content(a)
        elif name == "appeal":
            twins.appeal(a, b)
        elif name == "suspend":  # until: a hours ahead, or indefinitely; c: notify
            until = None if b else twins.now + timedelta(hours=max(a, 1))
            expected = twins.model.operator_suspend(until, twins.now, c)
            twins.operator(ops.Suspend("r", until, notify=c), expected)
        elif name == "reinstate":
            twins.operator(ops.Reinstate("r"), twins.model.reinstate(twins.now))
        elif name == "terminate":
            expected = twins.model.operator_terminate(twins.now, c)
            twins.operator(ops.Terminate("r", notify=c), expected)
        elif name == "throttle":
            expires = None if b else twins.now + timedelta(hours=max(a, 1))
            notify, key_id = c
            expected = twins.model.operator_throttle(0.1, expires, twins.now, notify, key_id)
            throttle = ops.ApplyThrottle(0.1, "r", key_id, expires, notify)
            twins.operator(throttle, expected)
        elif name == "limits":
            expected = twins.model.configure_limits(b, a, c)
            twins.operator(ops.ConfigureLimits(a, c, b), expected)
        elif name == "abuse_report":
            twins.abuse_report(a, b)
        elif name == "denials":
            twins.deny(burst(twins.policy, a, b, c))
        elif name == "triage":
            twins.triage(a, b, c)
        elif name == "lift" and twins.model.throttles:
            index = a % len(twins.model.throttles)
            twins.operator(
                ops.LiftThrottle(twins.throttle_ids[index]), twins.model.lift(index, twins.now)
            )
        twins.snapshot(twins.now)
        twins.check_standing(twins.now)
    twins.check_standing(twins.now + timedelta(hours=later))
    for index, by in as_of:
        twins.check_as_of(twins.snapshots[index % len(twins.snapshots)][0] + by)


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.lists(STEP, max_size=STEPS), HOURS, AS_OF)
def test_the_decider_and_the_fold_agree_with_the_reference(
    steps: list[tuple[Any, ...]], later: int, as_of: list[Any]
) -> None:
    say(f"steps={steps!r}, later={later}, as_of={as_of!r}")
    run(Twins(), steps, later, as_of)


# --- policy files other than the default ------------------------------------------------------

_UNIT = {"s": timedelta(seconds=1), "m": timedelta(minutes=1), "h": timedelta(hours=1)}
_UNIT["d"] = timedelta(days=1)
# A duration as a policy file writes it (POLICY.md: "<integer><s|m|h|d>") and what it means:
# mostly hours and days, which the steps' hours meet exactly; minutes and seconds that fall
# between them; and the longest a file may give (a hundred years).
DURATION = st.one_of(
    st.tuples(st.integers(1, 72), st.just("h")),
    st.tuples(st.integers(1, 100), st.just("d")),
    st.tuples(st.integers(1, 600), st.sampled_from(["s", "m"])),
    st.sampled_from([(36_500, "d"), (876_000, "h")]),
).map(lambda nu: (f"{nu[0]}{nu[1]}", nu[0] * _UNIT[nu[1]]))
FACTOR = st.one_of(
    st.sampled_from([0.25, 0.5, 1, 1.0]), st.floats(0, 1, exclude_min=True, allow_subnormal=True)
)
# The keys whose value is a plain duration (the reference's, from POLICY.md's TOML block).
DURATION_KEYS = [f.name for f in fields(ref.RefPolicy) if isinstance(f.default, timedelta)]
# Each key of POLICY.md's TOML block, or None: left out of the file, so it keeps its default.
POLICY_KEYS = st.fixed_dictionaries(
    {
        "version": st.one_of(
            st.none(), st.from_regex(r"[a-z0-9][a-z0-9._-]{0,20}", fullmatch=True)
        ),
        **{key: st.one_of(st.none(), DURATION) for key in DURATION_KEYS},
        **{
            key: st.one_of(
                st.none(),
                st.fixed_dictionaries({}, optional={"factor": FACTOR, "duration": DURATION}),
            )
            for key in ("second_minor_throttle", "sustained_abuse_throttle")
        },
        "sustained_abuse_denials": st.one_of(
            st.none(),
            st.fixed_dictionaries(
                {},
                optional={
                    "count": st.one_of(st.integers(1, 5), st.integers(1, 10_000)),
                    "window": DURATION,
                },
            ),
        ),
        "termination_after_strikes": st.one_of(
            st.none(), st.integers(1, 5), st.integers(1, 2**63 - 1)
        ),
        # policy_file.py's per-category keys (``sections`` only reach the statement of reasons).
        "categories": st.one_of(
            st.none(),
            st.dictionaries(
                st.sampled_from(sorted(ref.CATEGORY_TABLE)),
                st.fixed_dictionaries(
                    {},
                    optional={
                        "default_severity": st.sampled_from(ref.SEVERITIES),
                        "floor": st.sampled_from(ref.SEVERITIES),
                        "refer_to_authorities": st.booleans(),
                    },
                ),
                min_size=1,
                max_size=12,
            ),
        ),
    }
)


# A report one step in three, so that sequences climb the ladder the policy sets up, and time
# passing by the policy's spans and appeals more often, to meet its appeal window.
CLIMB = st.sampled_from([REPORT, REPORT, SPAN_STEP, APPEAL, STEP, STEP]).flatmap(lambda s: s)


def category_rules(overrides: dict[str, dict[str, Any]], numbers: dict[str, Any]) -> list[str]:
    """The TOML of ``categories`` overrides (a floor above the default is written as the default,
    as a file may not have it otherwise; the AUP's severe categories keep their severities, as
    a file may not lower them), their meaning put in ``numbers``."""
    table, parts = dict(ref.DEFAULT_CATEGORIES), []
    for name, given_override in overrides.items():
        override = {
            k: v
            for k, v in given_override.items()
            if name not in AUP_SEVERE or k == "refer_to_authorities"
        }
        if not override:
            continue
        default, floor, refer = table[name]
        rule = {"default_severity": default, "floor": floor, "refer_to_authorities": refer}
        rule |= override
        given = dict(override)
        rank = ref.SEVERITIES.index
        if rank(rule["floor"]) > rank(rule["default_severity"]):
            rule["floor"] = given["floor"] = rule["default_severity"]
        table[name] = (rule["default_severity"], rule["floor"], rule["refer_to_authorities"])
        items = ", ".join(
            f"{k} = {str(v).lower() if isinstance(v, bool) else repr(v)}" for k, v in given.items()
        )
        parts.append(f"{name} = {{ {items} }}")
    numbers["categories"] = table
    return parts


def policy_file(keys: dict[str, Any]) -> tuple[str, ref.RefPolicy]:
    """The TOML text of a policy file giving ``keys`` (those not None), and what it means."""
    lines, numbers = [], {}
    base = ref.DEFAULT
    for key, value in keys.items():
        if value is None:
            continue
        if key == "version":
            lines.append(f'{key} = "{value}"')
            numbers[key] = value
        elif key == "termination_after_strikes":
            lines.append(f"{key} = {value}")
            numbers[key] = value
        elif key == "categories":
            lines.append(f"categories = {{ {', '.join(category_rules(value, numbers))} }}")
        elif isinstance(value, tuple):
            lines.append(f'{key} = "{value[0]}"')
            numbers[key] = value[1]
        else:
            first, second = ("count", "window") if "denials" in key else ("factor", "duration")
            default = getattr(base, key)
            parts, meaning = [], list(default)
            if first in value:
                parts.append(f"{first} = {value[first]!r}")
                meaning[0] = float(value[first]) if first == "factor" else value[first]
            if second in value:
                parts.append(f'{second} = "{value[second][0]}"')
                meaning[1] = value[second][1]
            lines.append(f"{key} = {{ {', '.join(parts)} }}")
            numbers[key] = tuple(meaning)
    return "\n".join(lines) + "\n", replace(base, **numbers)


@settings(max_examples=POLICY_EXAMPLES, deadline=None)
@given(POLICY_KEYS, st.lists(CLIMB, max_size=STEPS), HOURS, AS_OF)
def test_under_any_policy_file_the_decider_and_the_fold_agree_with_the_reference(
    keys: dict[str, Any], steps: list[tuple[Any, ...]], later: int, as_of: list[Any]
) -> None:
    policy, meaning = loaded(keys)
    say(f"steps={steps!r}, later={later}, as_of={as_of!r}")
    run(Twins(policy, ref.Reference(meaning)), steps, later, as_of)


def loaded(keys: dict[str, Any]) -> tuple[Policy, ref.RefPolicy]:
    """The policy file giving ``keys`` as the product loads it, and what it means."""
    text, meaning = policy_file(keys)
    say(f"policy file:\n{text}")
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "policy.toml")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
        policy = load_policy(path)
    denials = policy.sustained_abuse_denials  # the gate's, which no step here reaches
    assert (denials.count, denials.window) == meaning.sustained_abuse_denials
    return policy, meaning
