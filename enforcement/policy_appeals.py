"""Appeals (POLICY.md): who may file one and until when, and what an appeal's outcome
undoes. Pure, as the whole policy is (``enforcement.policy``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from enforcement.decider import Context, Decider, category_rule, with_decided
from enforcement.errors import Conflict, InvalidTransition, NotFound, ValidationFailed
from enforcement.policy_file import Policy
from enforcement.policy_ladder import ladder
from events import NewEvent, RecordedEvent
from events.fastjson import copy_json
from events.timefmt import format_time, parse_time, to_utc
from projections import aup_events as ev
from projections.reasons import upheld_redress
from projections.standing import (
    DecisionRecord,
    StandingState,
    SuspensionRecord,
    active_suspension,
    active_throttles,
    held_undecided,
    suspension_runs,
)


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
    ends it alone, as it ends a replaced one; a throttle still in force by ``ThrottleLifted``;
    a remediation request, by ending as a suspension is ended the one its expiry imposed
    (``missed_remediation_suspension``), if that still holds: a request reversed was never
    owed, so neither is the penalty for not meeting it. The violations behind the decision are
    dismissed so their strikes no longer count (which also closes its remediation).
    A termination reversed is followed, after the notice, by the ladder's decisions on the
    violations recorded while it held, on which nothing was decided then (POLICY.md: "violation
    on a terminated account: recorded, nothing else decided"): with the termination reversed,
    each is decided now, in the order recorded, as on an account not terminated (a critical
    one terminates again, and the ones after it stay held by that termination).
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
    restored = missed = None
    if outcome == "upheld":
        text = f"The appeal is rejected: the {what} stands."
    else:
        text = f"The appeal is granted: the {what} is reversed"
        # An operator's decision taken on no violation has none to dismiss.
        text += " and its violations are dismissed." if decision.violation_ids else "."
        missed = _missed_suspension(state, decision, ctx.now)
        if missed is not None:
            text += (
                f" Suspension {missed.target_id}, imposed because the remediation was not "
                "completed, ends with it."
            )
        restored = _restored_suspension(state, missed or decision, ctx.now)
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
        _reverse(d, decision, appeal_id, decided, restored, missed)
    d.emit(d.notice("appeal_outcome", decided))
    if outcome == "overturned" and _ends_termination(state, decision):
        return d.events + decide_held(policy, state, d.events, appeal_id, ctx)
    return d.events


def decide_held(
    policy: Policy,
    state: StandingState,
    reversal: Sequence[NewEvent | RecordedEvent],
    appeal_id: str,
    ctx: Context,
    ctx_of: Callable[[str], Context] | None = None,
) -> list[NewEvent]:
    """The ladder's decisions, at ``ctx.now``, on each violation the termination of ``state``
    held (``held_violations``), after ``reversal`` (which reverses that termination). Each is
    decided on the state its predecessors' decisions left; its prior strikes are the strikes
    recorded before it. ``ctx_of``: the context to decide a violation in, by its event id
    (whatif's hands out the ids the record gave that violation's decisions); else ``ctx``.
    Nothing when ``state`` is not terminated."""
    if state.termination_event_id is None:
        return []  # not terminated: nothing held
    held = held_violations(state, state.termination_event_id)
    current = with_decided(state, reversal, ctx.now)
    decided: list[NewEvent] = []
    fact = {
        "appeal_id": appeal_id,
        "held_by": state.termination_event_id,  # a termination decided now takes the rest over
        "description": "Recorded while the account was terminated, when nothing was decided on "
        f"it; decided once appeal {appeal_id} reversed that termination.",
    }
    for i, violation_id in enumerate(held):
        v = current.violations[violation_id]
        context = ctx if ctx_of is None else ctx_of(v.event_id)
        d = Decider(policy, current, context, [v], automated=True, extra_facts=[fact])
        ladder(d, category_rule(policy, v.category), v, v.event_id, frozenset(held[i:]))
        current = with_decided(current, d.events, ctx.now)
        decided += d.events
    return decided


def held_violations(state: StandingState, termination_event_id: str) -> list[str]:
    """The ids of the violations, in the order recorded, that the termination
    ``termination_event_id`` holds undecided (``ViolationRecord.held_by``): recorded while it
    was in force, or taken over from a termination whose reversal decided this one on a
    violation it held (a held violation that terminated again holds the ones after it in
    turn: the fold's ``_take_over_held``); not dismissed, and with no decision. A violation
    that an earlier reversal left undecided (before 2026-12-07 none was decided) is not one of
    them."""
    return [
        v.violation_id
        for v in state.violations.values()
        if held_undecided(v, (termination_event_id,))
    ]


def _ends_termination(state: StandingState, decision: DecisionRecord) -> bool:
    """Whether reversing ``decision`` ends the account's termination: it is the termination
    in force."""
    return (
        decision.type == "AccountTerminated"
        and state.terminated
        and state.termination_event_id == decision.event_id
    )


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


def _missed_suspension(
    state: StandingState, decision: DecisionRecord, now: datetime
) -> DecisionRecord | None:
    """For a remediation request, the decision that suspended the account for missing it
    (``decide_remediation_expired``: reason ``remediation_missed``, on the request's violations),
    while that suspension still runs at ``now``, in force or held behind another; else None."""
    if decision.type != "RemediationRequested":
        return None
    remediation = state.remediations.get(str(decision.target_id))
    if remediation is None:
        return None
    for suspension in (state.suspension, *state.replaced_suspensions):
        if suspension is None or suspension.reason != "remediation_missed":
            continue
        if not suspension_runs(suspension, now):
            continue
        imposed = state.decisions.get(suspension.event_id)
        if imposed is not None and imposed.violation_ids == remediation.violation_ids:
            return imposed
    return None


def _reverse(
    d: Decider,
    decision: DecisionRecord,
    appeal_id: str,
    decided: NewEvent,
    restored: SuspensionRecord | None,
    missed: DecisionRecord | None,
) -> None:
    """The events that reverse ``decision``; ``restored``: ``_restored_suspension``;
    ``missed``: ``_missed_suspension``, ended with it."""
    state, now, cause = d.state, d.ctx.now, decided.event_id
    why = f"appeal {appeal_id} overturned decision {decision.event_id}"
    sor = decided.data["statement_of_reasons"]
    current = active_suspension(state, now)
    suspension = decision.target_id if decision.type == "AccountSuspended" else None
    if missed is not None:
        suspension = missed.target_id
    if _ends_termination(state, decision):
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
