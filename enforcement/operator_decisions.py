"""Operator commands as pure decisions: which events a command records, or why it may not.

The operator decides (``automated_decision`` false); the policy only shapes the statement of
reasons, the notices and the transitions that are allowed. ``notify=False`` records no notice
("with or without notice", AUP §6).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from enforcement.errors import InvalidTransition, NotFound, ValidationFailed
from enforcement.policy import Context, Decider, Policy
from events import NewEvent, RecordedEvent
from events.fastjson import copy_json
from events.timefmt import format_time, parse_time, to_utc
from projections import aup_events as ev
from projections.reasons import NOTHING_TO_APPEAL_REDRESS, percent
from projections.standing import (
    StandingState,
    ViolationRecord,
    active_suspension,
    active_throttles,
    remediation_is_open,
)


@dataclass(frozen=True, slots=True)
class Suspend:
    reason: str
    until: datetime | None = None
    notify: bool = True


@dataclass(frozen=True, slots=True)
class Reinstate:
    reason: str


@dataclass(frozen=True, slots=True)
class Terminate:
    reason: str
    notify: bool = True


@dataclass(frozen=True, slots=True)
class ApplyThrottle:
    factor: float
    reason: str
    key_id: str | None = None
    expires_at: datetime | None = None
    notify: bool = True


@dataclass(frozen=True, slots=True)
class LiftThrottle:
    throttle_id: str
    reason: str = "lifted by an operator"


@dataclass(frozen=True, slots=True)
class DismissViolation:
    violation_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class CompleteRemediation:
    remediation_id: str
    note: str


@dataclass(frozen=True, slots=True)
class SetAdultContentApproval:
    approved: bool
    reason: str


@dataclass(frozen=True, slots=True)
class ConfigureLimits:
    requests_per_minute: int
    tokens_per_day: int
    key_id: str | None = None  # None: the account-wide ceiling across all its keys


@dataclass(frozen=True, slots=True)
class ResendNotice:
    """Send a notice again, as a copy under its own id (``NoticeIssued.resend_of``): after its
    delivery failed for good (a contact corrected since), or when the account says it never
    arrived. ``notice`` is the ``NoticeIssued`` event sent again; not one of a decision an
    appeal overturned. ``channels``: those of the contact's it goes out on (None: all), e.g.
    the webhook alone when only it had failed."""

    notice: RecordedEvent
    reason: str
    channels: tuple[str, ...] | None = None


Command = (
    Suspend
    | Reinstate
    | Terminate
    | ApplyThrottle
    | LiftThrottle
    | DismissViolation
    | CompleteRemediation
    | SetAdultContentApproval
    | ConfigureLimits
    | ResendNotice
)


# The AUP section an operator's statement of reasons rests on: §3 (rate limits) for a throttle,
# §6 (account suspension) for every other restriction. Lifting a throttle, configuring limits
# and the adult-content approval (§3, §4) record no statement of reasons.
_SECTIONS: dict[type, int] = {ApplyThrottle: 3}


def _operator(
    policy: Policy,
    state: StandingState,
    ctx: Context,
    reason: str,
    section: int,
    violations: Sequence[ViolationRecord] = (),
) -> Decider:
    fact = {"description": reason or "operator decision", "actor": ctx.actor}
    return Decider(
        policy, state, ctx, violations, automated=False, extra_facts=[fact], sections=[section]
    )


def _not_terminated(state: StandingState, what: str) -> None:
    if state.terminated:
        raise InvalidTransition(
            f"the account is terminated; it cannot be {what}", code="account_terminated"
        )


def _future(moment: datetime | None, now: datetime, field: str) -> str | None:
    if moment is None:
        return None
    if to_utc(moment) <= now:
        raise ValidationFailed(
            f"The {field} time must be in the future",
            details=[{"field": field, "message": "must be in the future"}],
        )
    return format_time(moment)


def decide(policy: Policy, state: StandingState, command: Command, ctx: Context) -> list[NewEvent]:
    """The events an operator command records on ``state`` at ``ctx.now``."""
    now = to_utc(ctx.now)
    d = _operator(
        policy, state, ctx, getattr(command, "reason", "") or "", _SECTIONS.get(type(command), 6)
    )
    payload: object  # each command's own event payload
    match command:
        case Suspend(reason, until, notify):
            _not_terminated(state, "suspended")
            until_text = _future(until, now, "until")
            when = "indefinitely, pending review" if until_text is None else f"until {until_text}"
            payload = ev.AccountSuspended(
                ctx.new_id("sus"),
                until_text,
                reason,
                d.reasons(f"The account is suspended {when}."),
            )
            event = d.build(payload, ctx.causation_id)
            d.emit(event, *([d.notice("suspension", event)] if notify else []))
        case Reinstate(reason):
            _not_terminated(state, "reinstated (only an overturned appeal reverses a termination)")
            if active_suspension(state, now) is None:
                raise InvalidTransition("the account is not suspended", code="not_suspended")
            sor = d.reasons("The account is reinstated.", redress=NOTHING_TO_APPEAL_REDRESS)
            event = d.build(ev.AccountReinstated(reason, sor), ctx.causation_id)
            d.emit(event, d.notice("reinstatement", event))
        case Terminate(reason, notify):
            _not_terminated(state, "terminated again")
            payload = ev.AccountTerminated(reason, d.reasons("The account is terminated."))
            event = d.build(payload, ctx.causation_id)
            d.emit(event, *([d.notice("termination", event)] if notify else []))
        case ApplyThrottle(factor, reason, key_id, expires_at, notify):
            _not_terminated(state, "throttled")
            if not 0 < factor <= 1:
                raise ValidationFailed(
                    "The factor must be in (0, 1]",
                    details=[{"field": "factor", "message": "must be in (0, 1]"}],
                )
            expires = _future(expires_at, now, "expires_at")
            scope = "every API key of the account" if key_id is None else f"API key {key_id}"
            lasting = "until lifted" if expires is None else f"until {expires}"
            text = (
                f"Requests of {scope} are throttled to {percent(factor)} of its limits {lasting}."
            )
            payload = ev.ThrottleApplied(
                ctx.new_id("thr"), key_id, factor, expires, reason, d.reasons(text)
            )
            event = d.build(payload, ctx.causation_id)
            d.emit(event, *([d.notice("throttle", event)] if notify else []))
        case LiftThrottle(throttle_id, reason):
            if throttle_id not in state.throttles and any(
                dec.type == "ThrottleApplied" and dec.target_id == throttle_id
                for dec in state.decisions.values()
            ):
                raise InvalidTransition(
                    f"throttle {throttle_id} was already lifted", code="throttle_not_active"
                )
            if throttle_id not in state.throttles:
                raise NotFound(
                    f"no throttle {throttle_id!r} on this account", code="throttle_not_found"
                )
            if all(t.throttle_id != throttle_id for t in active_throttles(state, now)):
                raise InvalidTransition(
                    f"throttle {throttle_id} is no longer in force", code="throttle_not_active"
                )
            d.emit(d.build(ev.ThrottleLifted(throttle_id, reason), ctx.causation_id))
        case DismissViolation(violation_id, reason):
            violation = state.violations.get(violation_id)
            if violation is None:
                raise NotFound(
                    f"no violation {violation_id!r} on this account", code="violation_not_found"
                )
            if violation.dismissed:
                raise InvalidTransition(
                    f"violation {violation_id} is already dismissed", code="already_dismissed"
                )
            # The statement names the violation it dismisses (its facts, section and category).
            d = _operator(policy, state, ctx, reason, _SECTIONS.get(type(command), 6), [violation])
            text = f"Violation {violation_id} is dismissed and no longer counts as a strike."
            sor = d.reasons(text, redress=NOTHING_TO_APPEAL_REDRESS)
            d.emit(d.build(ev.ViolationDismissed(violation_id, reason, sor), violation.event_id))
        case CompleteRemediation(remediation_id, note):
            remediation = state.remediations.get(remediation_id)
            if remediation is None:
                raise NotFound(
                    f"no remediation {remediation_id!r} on this account",
                    code="remediation_not_found",
                )
            if not remediation_is_open(state, remediation):
                raise InvalidTransition(
                    f"remediation {remediation_id} is {remediation.status}",
                    code="remediation_not_open",
                )
            if now >= parse_time(remediation.due_at):
                # POLICY.md: one not completed by its due time expires and suspends; from its
                # due time on it is overdue (the standing says so), decided by the scheduler.
                raise InvalidTransition(
                    f"remediation {remediation_id} was due at {remediation.due_at} and can no "
                    "longer be completed",
                    code="remediation_overdue",
                )
            d.emit(d.build(ev.RemediationCompleted(remediation_id, note), remediation.event_id))
        case SetAdultContentApproval(approved, reason):
            d.emit(d.build(ev.AdultContentApprovalChanged(approved, reason), ctx.causation_id))
        case ConfigureLimits(rpm, tpd, key_id):
            d.emit(d.build(ev.RateLimitsConfigured(key_id, rpm, tpd), ctx.causation_id))
        case ResendNotice(notice, reason, channels):
            if notice.type != "NoticeIssued" or notice.account_id != state.account_id:
                raise NotFound(
                    f"no notice {notice.data.get('notice_id')!r} on this account",
                    code="notice_not_found",
                )
            decision = state.decisions.get(notice.data["decision_event_id"])
            if decision is not None and decision.overturned:
                # It would tell the account of a restriction an appeal lifted: the appeal's
                # outcome has its own notice.
                raise InvalidTransition(
                    f"the decision of notice {notice.data['notice_id']} was overturned on appeal",
                    code="decision_overturned",
                )
            copy = _resent(notice, reason, channels, ctx.new_id("ntc"))
            d.emit(d.build(copy, notice.event_id))
    return d.events


def _resent(
    notice: RecordedEvent, reason: str, channels: tuple[str, ...] | None, notice_id: str
) -> ev.NoticeIssued:
    """A copy of ``notice`` (a ``NoticeIssued``) under ``notice_id``, naming the first notice
    it copies (the one a copy of a copy copies), as sent again for ``reason`` on ``channels``
    (None: every channel of the contact)."""
    data = notice.data
    first = data.get("resend_of") or {
        "notice_id": data["notice_id"],
        "notice_event_id": notice.event_id,
        "issued_at": format_time(notice.recorded_at),
    }
    return ev.NoticeIssued(
        notice_id,
        data["kind"],
        data["decision_event_id"],
        list(data["violation_ids"]),
        copy_json(data["statement_of_reasons"]),
        data["deadline"],
        {
            "notice_id": first["notice_id"],
            "notice_event_id": first["notice_event_id"],
            "issued_at": first["issued_at"],
            "reason": reason,
            "channels": None if channels is None else list(channels),
        },
    )


def decide_suspension_ended(
    policy: Policy, state: StandingState, suspension_id: str, ctx: Context
) -> list[NewEvent]:
    """``SuspensionEnded`` when ``suspension_id`` is the current suspension and its ``until`` has
    passed; nothing otherwise (so the scheduler may call it any number of times)."""
    current = state.suspension
    if (
        current is None
        or current.suspension_id != suspension_id
        or current.until is None
        or current.until > format_time(ctx.now)
    ):
        return []
    d = Decider(policy, state, ctx, [], automated=True)
    return [d.build(ev.SuspensionEnded(suspension_id, "expired"), current.event_id)]
