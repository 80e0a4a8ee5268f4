"""The AUP's decisions as pure functions: POLICY.md's ladder, missed remediations, abuse
reports, and appeals (``enforcement.policy_appeals``), built with ``enforcement.decider``.

Each ``decide_*`` takes the ``Policy``, the account's current ``StandingState`` (every event
appended so far) and a ``Context`` (now, actor, correlation id, id factory) and returns the events
to append, in order; or it raises a ``DomainError`` and decides nothing. Nothing here reads a
clock (``now`` is the context's), a database or the network: the same inputs, with an injected
id factory, always give the same events. The production factory (``random_id``) makes fresh
ids, and time-ordered event ids (``Context.event_id``).

Every event carries the metadata ``policy_version, strike_lookback, actor, causation_id,
correlation_id, source``.
Causation chains violation → decision → notice; every notice names its ``decision_event_id``;
every restrictive decision carries a statement of reasons (``projections.reasons``).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from enforcement.decider import (
    ADULT_CONTENT,
    SUSTAINED_ABUSE,
    Context,
    Decider,
    ViolationReport,
    category_rule,
    effective_severity,
    lasting,
    new_event,
    random_id,
)
from enforcement.errors import InvalidTransition, NotFound, ValidationFailed
from enforcement.policy_appeals import (
    appeal_deadline,
    check_appeal_filing,
    decide_appeal,
    decide_appeal_filing,
    decide_held,
)
from enforcement.policy_file import (
    CATEGORIES,
    DEFAULT_POLICY,
    CategoryRule,
    DenialRule,
    Policy,
    ThrottleRule,
    load_policy,
    parse_duration,
)
from enforcement.policy_ladder import ladder
from events import NewEvent
from events.timefmt import format_time, parse_time, to_utc
from projections import aup_events as ev
from projections.reasons import NOTHING_TO_APPEAL_REDRESS, appeal_elsewhere
from projections.standing import (
    StandingState,
    ThrottleRecord,
    ViolationRecord,
    active_throttles,
    remediation_is_open,
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
    "appeal_deadline",
    "category_rule",
    "check_appeal_filing",
    "decide_abuse_report",
    "decide_appeal",
    "decide_appeal_filing",
    "decide_gate_abuse_report",
    "decide_gate_sustained_abuse",
    "decide_held",
    "decide_remediation_expired",
    "decide_triage",
    "decide_violation",
    "effective_severity",
    "load_policy",
    "new_event",
    "parse_duration",
    "random_id",
    "sustained_abuse_due",
]

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
    ladder(d, rule, violation, reported.event_id)
    return d.events


def sustained_abuse_due(
    policy: Policy, state: StandingState, denials_in_window: int, now: datetime
) -> bool:
    """Whether gate denials should raise ``sustained_abuse`` (AUP §3): enough of them, and no
    sustained-abuse throttle already in force (one throttle per bout, not one per denial)."""
    if state.terminated or denials_in_window < policy.sustained_abuse_denials.count:
        return False
    return not _bout_throttles(state, now)


def sustained_abuse_throttle_end(state: StandingState, now: datetime) -> datetime | None:
    """When the sustained-abuse throttles in force at ``now`` have all run out; None when none
    is in force, or one runs until it is lifted."""
    ends = [t.expires_at for t in _bout_throttles(state, now)]
    if not ends or None in ends:
        return None
    return max(parse_time(end) for end in ends if end is not None)


def _bout_throttles(state: StandingState, now: datetime) -> list[ThrottleRecord]:
    """The sustained-abuse throttles in force at ``now``: one per bout of gate denials."""
    return [t for t in active_throttles(state, now) if t.reason == SUSTAINED_ABUSE]


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
            f"{missed_text}; the account is already suspended {lasting(covering)}, so the "
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
