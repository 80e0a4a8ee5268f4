"""The AUP's decisions as pure functions: POLICY.md's ladder, missed remediations, appeals.

Each ``decide_*`` takes the ``Policy``, the account's current ``StandingState`` (every event
appended so far) and a ``Context`` (now, actor, correlation id, id factory) and returns the events
to append, in order; or it raises a ``DomainError`` and decides nothing. Nothing here reads a
clock (``now`` is the context's), a database or the network: the same inputs, with an injected
id factory, always give the same events. The production factory (``random_id``) makes fresh
ids, and time-ordered event ids (``Context.event_id``).

Every event carries the metadata ``policy_version, actor, causation_id, correlation_id, source``.
Causation chains violation → decision → notice; every notice names its ``decision_event_id``;
every restrictive decision carries a statement of reasons (``projections.reasons``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from enforcement.errors import Conflict, InvalidTransition, NotFound, ValidationFailed
from enforcement.policy_file import (
    CATEGORIES,
    DEFAULT_POLICY,
    SEVERITY_RANK,
    CategoryRule,
    DenialRule,
    Policy,
    ThrottleRule,
    load_policy,
    parse_duration,
)
from events import NewEvent
from events.fastjson import copy_json
from events.timefmt import format_time, parse_time, to_utc
from events.types import new_event_id
from projections import aup_events as ev
from projections.reasons import (
    NOTHING_TO_APPEAL_REDRESS,
    appeal_elsewhere,
    percent,
    statement_of_reasons,
    upheld_redress,
    violation_fact,
)
from projections.standing import (
    DecisionRecord,
    StandingState,
    SuspensionRecord,
    ViolationRecord,
    active_strikes,
    active_suspension,
    active_throttles,
    remediation_is_open,
    suspension_runs,
)

__all__ = [
    "CATEGORIES",
    "DEFAULT_POLICY",
    "CategoryRule",
    "Context",
    "Decider",
    "DenialRule",
    "Policy",
    "ThrottleRule",
    "ViolationReport",
    "abuse_report_open",
    "category_rule",
    "check_appeal_filing",
    "decide_abuse_report",
    "decide_appeal",
    "decide_appeal_filing",
    "decide_gate_abuse_report",
    "decide_gate_sustained_abuse",
    "decide_remediation_expired",
    "decide_triage",
    "decide_violation",
    "effective_severity",
    "load_policy",
    "parse_duration",
    "random_id",
    "sustained_abuse_due",
]

JSON = dict[str, Any]
IdFactory = Callable[[str], str]
POLICY_ACTOR = "policy"
SUSTAINED_ABUSE = "sustained_abuse"
ADULT_CONTENT = "unapproved_adult_content"
# Event ids are UUIDs (the store's column). With the production ``random_id`` they are the
# store's time-ordered ids; with an injected id factory they are derived from ``new_id("evt")``,
# so that one factory makes every output deterministic.
EVENT_ID_NAMESPACE = uuid.UUID("6f1c2a4e-8d3b-5e7f-9a0b-1c2d3e4f5a6b")


def random_id(prefix: str) -> str:
    """A fresh unique id such as ``vio_3f2a…``: the production ``new_id``."""
    return f"{prefix}_{uuid.uuid4().hex}"


@dataclass(frozen=True, slots=True)
class Context:
    """Who asks, when, and how new things are named. ``now`` is the only clock the policy sees."""

    now: datetime
    actor: str
    correlation_id: str
    new_id: IdFactory = random_id
    source: str = "api"
    causation_id: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "now", to_utc(self.now))

    def event_id(self) -> str:
        """A new event id (a UUID), deterministic when ``new_id`` is.

        With the production factory itself (``random_id``, not a wrapper of it) a time-ordered
        one (``events.new_event_id``): ids made later sort later, so the log's unique index on
        ``event_id`` grows at its right edge instead of taking a random page per event
        (``benchmarks/bench_violation_pages.py`` measures the difference)."""
        if self.new_id is random_id:
            return new_event_id()
        return str(uuid.uuid5(EVENT_ID_NAMESPACE, self.new_id("evt")))


@dataclass(frozen=True, slots=True)
class ViolationReport:
    """A reported violation as the policy receives it (validated at the edge)."""

    category: str
    occurred_at: datetime
    severity: str | None = None
    key_id: str | None = None
    source: str | None = None
    detection: str = "automated"
    evidence_ref: str | None = None
    description: str | None = None
    abuse_report_id: str | None = None


def category_rule(policy: Policy, category: str) -> CategoryRule:
    """The rule for ``category``; an unknown one is ``ValidationFailed`` listing the allowed."""
    try:
        return policy.categories[category]
    except KeyError:
        allowed = sorted(policy.categories)
        raise ValidationFailed(
            f"unknown category {category!r}",
            code="unknown_category",
            details=[{"field": "category", "allowed": allowed}],
        ) from None


def effective_severity(policy: Policy, category: str, reported: str | None) -> str:
    """The reported severity raised to the category's floor; absent, the category's default."""
    rule = category_rule(policy, category)
    if reported is None:
        return rule.default_severity
    if reported not in SEVERITY_RANK:
        raise ValidationFailed(
            f"unknown severity {reported!r}",
            details=[{"field": "severity", "allowed": list(SEVERITY_RANK)}],
        )
    return max(reported, rule.floor, key=SEVERITY_RANK.__getitem__)


def new_event(
    policy: Policy,
    ctx: Context,
    payload: Any,
    causation_id: str | None,
    *,
    actor: str | None = None,
    occurred_at: datetime | None = None,
) -> NewEvent:
    """``payload`` as a new event with the metadata every event carries (``policy_version``,
    ``actor`` (default: the context's), ``causation_id``, ``correlation_id``, ``source``)."""
    metadata = {
        "policy_version": policy.version,
        "actor": actor or ctx.actor,
        "causation_id": causation_id,
        "correlation_id": ctx.correlation_id,
        "source": ctx.source,
    }
    return ev.CODEC.encode(
        payload, occurred_at=occurred_at or ctx.now, metadata=metadata, event_id=ctx.event_id()
    )


class Decider:
    """Builds the events of one decision: metadata, statements of reasons, notices.

    Shared by every decision module (the ladder here, operator commands elsewhere) so that all
    events carry the same metadata and statements of reasons.
    """

    def __init__(
        self,
        policy: Policy,
        state: StandingState,
        ctx: Context,
        violations: Sequence[ViolationRecord],
        *,
        automated: bool,
        extra_facts: Sequence[JSON] = (),
        sections: Sequence[int] = (),
    ) -> None:
        self.policy, self.state, self.ctx = policy, state, ctx
        self.violations = list(violations)
        self.violation_ids = [v.violation_id for v in violations]
        self.automated = automated
        self.extra_facts = list(extra_facts)
        # AUP sections cited besides the violations' own (an operator's decision cites §6).
        self.sections = list(sections)
        self.events: list[NewEvent] = []

    def build(
        self,
        payload: Any,
        causation_id: str | None,
        *,
        actor: str | None = None,
        occurred_at: datetime | None = None,
    ) -> NewEvent:
        default_actor = POLICY_ACTOR if self.automated else self.ctx.actor
        return new_event(
            self.policy,
            self.ctx,
            payload,
            causation_id,
            actor=actor or default_actor,
            occurred_at=occurred_at,
        )

    def emit(self, *events: NewEvent) -> None:
        self.events.extend(events)

    def at(self, span: timedelta) -> str:
        return format_time(self.ctx.now + span)

    def reasons(self, decision: str, *, final: bool = False, redress: str | None = None) -> JSON:
        """The statement of reasons. An appeal may target the decision, unless ``final`` (an
        appeal's own outcome) or ``redress`` is given: what to do instead, for another record
        that an appeal cannot target (``DECISION_TYPES`` are those it can)."""
        rules = [self.policy.categories.get(v.category) for v in self.violations]
        facts = [
            violation_fact(v.violation_id, v.category, v.severity, v.occurred_at, v.description)
            for v in self.violations
        ]
        return statement_of_reasons(
            sections=[*(s for r in rules if r is not None for s in r.sections), *self.sections],
            categories=[v.category for v in self.violations],
            decision=decision,
            facts=facts + self.extra_facts,
            automated_detection=any(v.detection == "automated" for v in self.violations),
            automated_decision=self.automated,
            policy_version=self.policy.version,
            decided_at=self.ctx.now,
            appeal_window=None if final or redress is not None else self.policy.appeal_window,
            redress=redress,
        )

    def notice(self, kind: str, decision: NewEvent, deadline: str | None = None) -> NewEvent:
        sor = copy_json(decision.data["statement_of_reasons"])
        payload = ev.NoticeIssued(
            self.ctx.new_id("ntc"), kind, decision.event_id, list(self.violation_ids), sor, deadline
        )
        return self.build(payload, decision.event_id)

    def terminate(self, reason: str, text: str, cause: str | None) -> NewEvent:
        payload = ev.AccountTerminated(reason, self.reasons(text), list(self.violation_ids))
        return self.build(payload, cause)

    def covering(self, span: timedelta | None) -> SuspensionRecord | None:
        """The suspension in force that lasts at least ``span`` from now (None: indefinitely),
        which a suspension for ``span`` would not replace."""
        until = None if span is None else self.ctx.now + span
        current = active_suspension(self.state, self.ctx.now)
        if current is not None and (
            current.until is None or (until is not None and until <= parse_time(current.until))
        ):
            return current
        return None

    def suspend(self, span: timedelta | None, reason: str, cause: str | None) -> None:
        """Suspend and notify. When a suspension already in force lasts at least as long
        (``covering``), this one is recorded held behind it (``AccountSuspended.held_by``): it
        is the decision on these violations, and takes over if that one is overturned."""
        covering = self.covering(span)
        until = None if span is None else self.ctx.now + span
        when = "indefinitely, pending review" if until is None else f"until {format_time(until)}"
        text = f"The account is suspended {when}."
        if covering is not None:
            text = (
                f"The account is already suspended {_lasting(covering)} (suspension "
                f"{covering.suspension_id}). These violations call for a suspension {when}, "
                "which takes effect only if that suspension is overturned on appeal."
            )
        payload = ev.AccountSuspended(
            self.ctx.new_id("sus"),
            None if until is None else format_time(until),
            reason,
            self.reasons(text),
            list(self.violation_ids),
            None if covering is None else covering.suspension_id,
        )
        suspension = self.build(payload, cause)
        self.emit(suspension, self.notice("suspension", suspension))

    def throttle(self, rule: ThrottleRule, reason: str, cause: str | None) -> NewEvent:
        expires = self.at(rule.duration)
        text = (
            f"Every API key of the account is throttled to {percent(rule.factor)} of its limits "
            f"until {expires}."
        )
        payload = ev.ThrottleApplied(
            self.ctx.new_id("thr"),
            None,
            rule.factor,
            expires,
            reason,
            self.reasons(text),
            list(self.violation_ids),
        )
        return self.build(payload, cause)

    def remediation(self, cause: str | None) -> NewEvent:
        due = self.at(self.policy.remediation_window)
        text = f"Remedy the violation and confirm it by {due}; otherwise the account is suspended."
        payload = ev.RemediationRequested(
            self.ctx.new_id("rem"), list(self.violation_ids), due, self.reasons(text)
        )
        return self.build(payload, cause)


def _prior_strike_fact(v: ViolationRecord) -> JSON:
    """A prior strike as a fact of the decision it led to, marked ``prior_strike``."""
    fact = violation_fact(v.violation_id, v.category, v.severity, v.occurred_at, v.description)
    return {**fact, "prior_strike": True}


def _lasting(suspension: SuspensionRecord) -> str:
    """How long ``suspension`` lasts, for a statement: "indefinitely" or "until <time>"."""
    return "indefinitely" if suspension.until is None else f"until {suspension.until}"


# --- the ladder ------------------------------------------------------------------------------


def decide_violation(
    policy: Policy, state: StandingState, report: ViolationReport, ctx: Context
) -> list[NewEvent]:
    """``ViolationReported`` and the decisions POLICY.md's ladder takes on it, in order.

    Precedence: a terminated account gets nothing more; ``unapproved_adult_content`` on an
    approved account is dismissed; ``sustained_abuse`` is throttled (no strike); critical
    terminates; ``termination_after_strikes`` prior strikes terminate; high suspends; minor
    warns, throttles or suspends by the number of prior strikes. On a suspended account a
    suspension is recorded only if it outlasts the one in force.
    """
    rule = category_rule(policy, report.category)
    severity = effective_severity(policy, report.category, report.severity)
    if report.detection not in ev.DETECTIONS:
        raise ValidationFailed(
            f"unknown detection {report.detection!r}",
            details=[{"field": "detection", "allowed": list(ev.DETECTIONS)}],
        )
    violation = ViolationRecord(
        violation_id=ctx.new_id("vio"),
        event_id="",
        category=report.category,
        severity=severity,
        occurred_at=format_time(report.occurred_at),
        detection=report.detection,
        description=report.description,
        key_id=report.key_id,
        # Neither is ever a strike (POLICY.md), also where nothing else is decided on it (a
        # terminated account's, which an overturned termination would otherwise count).
        strike=report.category != SUSTAINED_ABUSE
        and not (report.category == ADULT_CONTENT and state.adult_content_approved),
    )
    d = Decider(policy, state, ctx, [violation], automated=True)
    payload = ev.ViolationReported(
        violation_id=violation.violation_id,
        category=report.category,
        severity=severity,
        reported_severity=report.severity,
        key_id=report.key_id,
        source=report.source,
        detection=report.detection,
        evidence_ref=report.evidence_ref,
        description=report.description,
        abuse_report_id=report.abuse_report_id,
        strike=violation.strike,
    )
    reported = d.build(payload, ctx.causation_id, actor=ctx.actor, occurred_at=report.occurred_at)
    d.emit(reported)
    _ladder(d, rule, violation, reported.event_id)
    return d.events


def _ladder(d: Decider, rule: CategoryRule, v: ViolationRecord, cause: str) -> None:
    policy, state, now = d.policy, d.state, d.ctx.now
    strikes = active_strikes(state, now, policy.strike_lookback)
    prior = len(strikes)
    if state.terminated:
        return
    if v.category == ADULT_CONTENT and state.adult_content_approved:
        d.emit(d.build(ev.ViolationDismissed(v.violation_id, "adult_content_approved"), cause))
        return
    if v.category == SUSTAINED_ABUSE:
        throttle = d.throttle(policy.sustained_abuse_throttle, "sustained_abuse", cause)
        d.emit(throttle, d.notice("throttle", throttle))
        return
    if prior and v.severity != "critical":
        # The prior strikes chose the rung: the statement lists them beside the violation.
        d.extra_facts[:0] = [_prior_strike_fact(s) for s in strikes]
    if v.severity == "critical" or prior >= policy.termination_after_strikes:
        if v.severity == "critical":
            reason, text = "critical_violation", "The account is terminated permanently."
        else:
            reason = "strike_limit_reached"
            text = f"The account is terminated: {prior} prior strikes were in force."
        termination = d.terminate(reason, text, cause)
        d.emit(termination)
        if rule.refer_to_authorities:
            text = "The violation is referred to the relevant authorities (AUP §6)."
            redress = appeal_elsewhere("the termination recorded with it", policy.appeal_window)
            referral = ev.AuthorityReferralOpened(
                d.ctx.new_id("ref"),
                list(d.violation_ids),
                v.category,
                d.reasons(text, redress=redress),
            )
            d.emit(d.build(referral, cause))
        d.emit(d.notice("termination", termination))
        return
    if v.severity == "high":
        if prior == 0:
            d.suspend(policy.first_high_suspension, "high_severity_first", cause)
        else:
            d.suspend(None, "high_severity_repeat", cause)
        return
    if prior == 0:
        remediation = d.remediation(cause)
        due = remediation.data["due_at"]
        d.emit(d.notice("warning", remediation, deadline=due), remediation)
    elif prior == 1:
        throttle = d.throttle(policy.second_minor_throttle, "minor_second_strike", cause)
        remediation = d.remediation(cause)
        due = remediation.data["due_at"]
        d.emit(throttle, d.notice("throttle", throttle, deadline=due), remediation)
    else:
        d.suspend(policy.third_minor_suspension, "minor_third_strike", cause)


def sustained_abuse_due(
    policy: Policy, state: StandingState, denials_in_window: int, now: datetime
) -> bool:
    """Whether gate denials should raise ``sustained_abuse`` (AUP §3): enough of them, and no
    sustained-abuse throttle already in force (one throttle per bout, not one per denial)."""
    if state.terminated or denials_in_window < policy.sustained_abuse_denials.count:
        return False
    return not any(t.reason == SUSTAINED_ABUSE for t in active_throttles(state, now))


def decide_gate_sustained_abuse(
    policy: Policy,
    state: StandingState,
    report: ViolationReport,
    denials_in_window: int,
    ctx: Context,
) -> list[NewEvent]:
    """The gate's ``sustained_abuse``: ``decide_violation`` if ``sustained_abuse_due`` on the
    state it is decided on (the one its events are appended to), else nothing. The gate's own
    look at the standing is only a filter: read before another denial's throttle is recorded,
    it would make one bout two violations."""
    if not sustained_abuse_due(policy, state, denials_in_window, ctx.now):
        return []
    return decide_violation(policy, state, report, ctx)


# --- deadlines -------------------------------------------------------------------------------


def decide_remediation_expired(
    policy: Policy, state: StandingState, remediation_id: str, ctx: Context
) -> list[NewEvent]:
    """``RemediationExpired``, then a ``missed_remediation_suspension`` and its notice.

    Nothing when the remediation is closed (completed, expired, its violations dismissed) or not
    yet due, so a scheduler may call it more than once. On a terminated account only the
    expiry is recorded. An unknown id is ``NotFound``.
    """
    remediation = state.remediations.get(remediation_id)
    if remediation is None:
        raise NotFound(f"no remediation {remediation_id!r} on this account")
    if not remediation_is_open(state, remediation) or to_utc(ctx.now) < parse_time(
        remediation.due_at
    ):
        return []
    violations = [state.violations[v] for v in remediation.violation_ids if v in state.violations]
    missed = {
        "remediation_id": remediation_id,
        "description": f"Remediation {remediation_id} was due at {remediation.due_at} "
        "and was not completed.",
    }
    d = Decider(policy, state, ctx, violations, automated=True, extra_facts=[missed])
    span = policy.missed_remediation_suspension
    covering = None if state.terminated else d.covering(span)
    missed_text = "The remediation was not completed in time"
    if state.terminated:
        text = f"{missed_text}; the account is terminated, so no suspension is imposed."
        redress = NOTHING_TO_APPEAL_REDRESS
    elif covering is not None:
        text = (
            f"{missed_text}; the account is already suspended {_lasting(covering)}, so the "
            f"suspension until {d.at(span)} this calls for takes effect only if that "
            "suspension is overturned on appeal."
        )
        redress = appeal_elsewhere("the suspension recorded with it", policy.appeal_window)
    else:
        text = f"{missed_text}; the account is suspended until {d.at(span)}."
        redress = appeal_elsewhere("the suspension recorded with it", policy.appeal_window)
    expired = d.build(
        ev.RemediationExpired(remediation_id, d.reasons(text, redress=redress)),
        remediation.event_id,
    )
    d.emit(expired)
    if not state.terminated:
        d.suspend(span, "remediation_missed", expired.event_id)
    return d.events


# --- abuse reports (AUP §7) ------------------------------------------------------------------


def decide_abuse_report(
    policy: Policy,
    category: str,
    description: str,
    reporter_contact: str | None,
    evidence_ref: str | None,
    ctx: Context,
    source: str | None = None,
) -> list[NewEvent]:
    """``AbuseReportReceived``: recorded, no strike until triaged. ``source``: who filed it
    (``ev.GATE_SOURCE`` for the gate; None for a report received through the API)."""
    category_rule(policy, category)
    d = Decider(policy, StandingState.empty(""), ctx, [], automated=False)
    payload = ev.AbuseReportReceived(
        ctx.new_id("rep"), category, description, reporter_contact, evidence_ref, source
    )
    return [d.build(payload, ctx.causation_id)]


def abuse_report_open(state: StandingState, category: str) -> bool:
    """Whether a report of ``category`` waits for an operator's triage on ``state``."""
    return any(r.status == "open" and r.category == category for r in state.abuse_reports.values())


def decide_gate_abuse_report(
    policy: Policy, state: StandingState, category: str, description: str, ctx: Context
) -> list[NewEvent]:
    """The gate's abuse report (``source`` ``GATE_SOURCE``), or nothing while a report of its
    category is open on the state it is decided on: one waits for an operator already. The
    gate's own look at the standing is only a filter: read before another denial's report is
    recorded, it would file two."""
    if abuse_report_open(state, category):
        return []
    return decide_abuse_report(policy, category, description, None, None, ctx, ev.GATE_SOURCE)


def decide_triage(
    policy: Policy,
    state: StandingState,
    report_id: str,
    outcome: str,
    severity: str | None,
    ctx: Context,
) -> list[NewEvent]:
    """``AbuseReportTriaged``; when confirmed, followed by the violation and its ladder decisions.

    The violation is of the report's category, occurred when the report came: the gate's
    (source ``gate``, detection ``automated``) when the gate filed the report, else a
    ``user_report`` of source ``abuse_report``.
    """
    report = state.abuse_reports.get(report_id)
    if report is None:
        raise NotFound(f"no abuse report {report_id!r} on this account")
    if report.status != "open":
        raise InvalidTransition(f"abuse report {report_id} was already triaged {report.status}")
    if outcome not in ev.TRIAGE_OUTCOMES:
        raise ValidationFailed(f"unknown outcome {outcome!r}")
    d = Decider(policy, state, ctx, [], automated=False)
    if outcome == "rejected":
        payload = ev.AbuseReportTriaged(report_id, outcome, severity, None)
        return [d.build(payload, report.event_id)]
    by_gate = report.source == ev.GATE_SOURCE
    violation = ViolationReport(
        category=report.category,
        occurred_at=parse_time(report.received_at),
        severity=severity,
        source=ev.GATE_SOURCE if by_gate else "abuse_report",
        detection="automated" if by_gate else "user_report",
        evidence_ref=report.evidence_ref,
        description=report.description,
        abuse_report_id=report_id,
    )
    decided = decide_violation(policy, state, violation, replace(ctx, causation_id=report.event_id))
    violation_id = decided[0].data["violation_id"]
    effective = decided[0].data["severity"]
    triaged = ev.AbuseReportTriaged(report_id, outcome, effective, violation_id)
    return [d.build(triaged, report.event_id), *decided]


# --- appeals ---------------------------------------------------------------------------------


def appeal_deadline(policy: Policy, decision: DecisionRecord) -> datetime:
    """Until when an appeal of ``decision`` may be filed: the later of the deadline its
    statement of reasons gave the account and the policy's window now (a window shortened since
    never cuts a stated deadline, and one lengthened since applies to earlier decisions too)."""
    deadline = parse_time(decision.recorded_at) + policy.appeal_window
    if decision.appeal_deadline is not None:
        deadline = max(deadline, parse_time(decision.appeal_deadline))
    return deadline


def check_appeal_filing(
    policy: Policy, state: StandingState, decision_event_id: str, now: datetime
) -> DecisionRecord:
    """The decision an appeal may be filed against now, or the reason it may not.

    ``NotFound``: no such decision event on the account (only throttles, suspensions,
    terminations and remediation requests are appealable). ``Conflict``: an appeal of it is
    open. ``InvalidTransition``: it was already overturned, or ``appeal_window`` has passed.
    """
    decision = state.decisions.get(decision_event_id)
    if decision is None:
        raise NotFound(
            f"no appealable decision event {decision_event_id!r} on this account",
            code="decision_not_found",
        )
    if decision.open_appeal_id is not None:
        raise Conflict(
            f"appeal {decision.open_appeal_id} of this decision is already open",
            code="appeal_already_open",
            details={"appeal_id": decision.open_appeal_id},
        )
    if decision.overturned:
        raise InvalidTransition("this decision was already overturned", code="already_overturned")
    deadline = appeal_deadline(policy, decision)
    if to_utc(now) > deadline:
        raise InvalidTransition(
            f"the time to appeal this decision ended at {format_time(deadline)}",
            code="appeal_window_closed",
            details={"deadline": format_time(deadline)},
        )
    return decision


def decide_appeal_filing(
    policy: Policy, state: StandingState, decision_event_id: str, statement: str, ctx: Context
) -> list[NewEvent]:
    """``AppealFiled`` against a decision event, if ``check_appeal_filing`` allows it."""
    check_appeal_filing(policy, state, decision_event_id, ctx.now)
    d = Decider(policy, state, ctx, [], automated=False)
    appeal = ev.AppealFiled(ctx.new_id("apl"), decision_event_id, statement)
    return [d.build(appeal, decision_event_id)]


def decide_appeal(
    policy: Policy,
    state: StandingState,
    appeal_id: str,
    outcome: str,
    reason: str,
    ctx: Context,
) -> list[NewEvent]:
    """``AppealDecided`` and, when ``overturned``, the reversal of the decision, then a notice.

    Reversal: a termination is ended by ``AccountReinstated``; a suspension still in force by
    ``AccountReinstated`` too when that leaves the account unsuspended, else (it had replaced one
    that still runs, or the account is terminated) by ``SuspensionEnded`` "overturned", which
    ends it alone, as it ends a replaced one; a throttle still in force by ``ThrottleLifted``.
    The violations behind the decision are dismissed so their strikes no longer count (which
    also closes its remediation).
    ``upheld`` changes nothing else. ``NotFound`` for an unknown appeal, ``InvalidTransition``
    for one already decided.
    """
    appeal = state.appeals.get(appeal_id)
    if appeal is None:
        raise NotFound(f"no appeal {appeal_id!r} on this account", code="appeal_not_found")
    if appeal.status != "open":
        raise InvalidTransition(f"appeal {appeal_id} was already decided: {appeal.status}")
    if outcome not in ev.APPEAL_OUTCOMES:
        raise ValidationFailed(
            f"unknown outcome {outcome!r}",
            details=[{"field": "outcome", "allowed": list(ev.APPEAL_OUTCOMES)}],
        )
    decision = state.decisions.get(appeal.decision_event_id)
    if decision is None:
        raise NotFound(f"appeal {appeal_id} targets no known decision", code="decision_not_found")
    violations = [state.violations[v] for v in decision.violation_ids if v in state.violations]
    fact = {"appeal_id": appeal_id, "description": reason}
    # The ground: the sections of the violations behind the decision; an operator's decision
    # has none, and cites what the operator's own did (§3 for a throttle, else §6).
    sections = [] if violations else [3 if decision.type == "ThrottleApplied" else 6]
    d = Decider(
        policy, state, ctx, violations, automated=False, extra_facts=[fact], sections=sections
    )
    what = f"decision {decision.event_id} ({decision.type})"
    restored = None
    if outcome == "upheld":
        text = f"The appeal is rejected: the {what} stands."
    else:
        text = f"The appeal is granted: the {what} is reversed"
        # An operator's decision taken on no violation has none to dismiss.
        text += " and its violations are dismissed." if decision.violation_ids else "."
        restored = _restored_suspension(state, decision, ctx.now)
        if restored is not None and not state.terminated:
            until = "indefinitely" if restored.until is None else f"until {restored.until}"
            text += (
                f" Suspension {restored.suspension_id}, which it had replaced, still holds: "
                f"the account stays suspended {until}."
            )
    if outcome == "upheld":
        deadline = appeal_deadline(policy, decision)
        if decision.appeal_deadline is not None and ctx.now <= parse_time(decision.appeal_deadline):
            # The deadline the account was given already, which no later policy cuts (the
            # policy's window now may be longer, but a later one may shorten it again).
            deadline = parse_time(decision.appeal_deadline)
        sor = d.reasons(text, redress=upheld_redress(deadline, ctx.now))
    else:
        sor = d.reasons(text, final=True)
    payload = ev.AppealDecided(appeal_id, decision.event_id, outcome, reason, sor)
    decided = d.build(payload, appeal.event_id)
    d.emit(decided)
    if outcome == "overturned":
        _reverse(d, decision, appeal_id, decided, restored)
    d.emit(d.notice("appeal_outcome", decided))
    return d.events


def _restored_suspension(
    state: StandingState, decision: DecisionRecord, now: datetime
) -> SuspensionRecord | None:
    """The suspension that overturning ``decision`` puts back in force: the one the suspension
    it imposed had replaced, when that is the current suspension and the replaced one still
    runs at ``now``."""
    current = active_suspension(state, now)
    if (
        decision.type != "AccountSuspended"
        or current is None
        or current.suspension_id != decision.target_id
        or not state.replaced_suspensions
    ):
        return None
    replaced = state.replaced_suspensions[-1]
    return replaced if suspension_runs(replaced, now) else None


def _reverse(
    d: Decider,
    decision: DecisionRecord,
    appeal_id: str,
    decided: NewEvent,
    restored: SuspensionRecord | None,
) -> None:
    """The events that reverse ``decision``; ``restored``: ``_restored_suspension``."""
    state, now, cause = d.state, d.ctx.now, decided.event_id
    why = f"appeal {appeal_id} overturned decision {decision.event_id}"
    sor = decided.data["statement_of_reasons"]
    current = active_suspension(state, now)
    suspension = decision.target_id if decision.type == "AccountSuspended" else None
    if (
        decision.type == "AccountTerminated"
        and state.terminated
        and state.termination_event_id == decision.event_id
    ):
        d.emit(d.build(ev.AccountReinstated(why, copy_json(sor), "termination"), cause))
    elif suspension is not None:
        in_force = current is not None and current.suspension_id == suspension
        if in_force and not state.terminated and restored is None:
            d.emit(d.build(ev.AccountReinstated(why, copy_json(sor), "suspension"), cause))
        elif in_force or any(
            r.suspension_id == suspension and suspension_runs(r, now)
            for r in state.replaced_suspensions
        ):
            # Only this suspension ends: one it had replaced that still runs is in force again
            # (on a terminated account, once the termination is reversed); a replaced one that
            # still runs is ended so that it never comes back (one that ran out ended already).
            d.emit(d.build(ev.SuspensionEnded(suspension, ev.SUSPENSION_OVERTURNED), cause))
    if decision.type == "ThrottleApplied" and any(
        t.throttle_id == decision.target_id for t in active_throttles(state, now)
    ):
        d.emit(d.build(ev.ThrottleLifted(str(decision.target_id), why), cause))
    for v in d.violations:
        if not v.dismissed:
            d.emit(d.build(ev.ViolationDismissed(v.violation_id, why), cause))
