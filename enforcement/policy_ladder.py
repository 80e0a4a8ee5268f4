"""POLICY.md's ladder: the decisions a violation gets, by its category, its severity and the
account's prior strikes. Pure, as the whole policy is (``enforcement.policy``); shared by a
violation's decision (``policy.decide_violation``) and by an appeal that reverses a termination
(``policy_appeals``: the violations that termination held are decided then).
"""

from __future__ import annotations

from enforcement.decider import ADULT_CONTENT, SUSTAINED_ABUSE, Decider, prior_strike_fact
from enforcement.policy_file import CategoryRule
from projections import aup_events as ev
from projections.reasons import NOTHING_TO_APPEAL_REDRESS, appeal_elsewhere
from projections.standing import ViolationRecord, active_strikes


def ladder(
    d: Decider,
    rule: CategoryRule,
    v: ViolationRecord,
    cause: str,
    later: frozenset[str] = frozenset(),
) -> None:
    """The ladder's decisions on ``v``, emitted on ``d``, caused by ``cause``. ``later``:
    violations already in the state that were recorded with it or after it, which are not
    prior strikes (``policy_appeals``: the violations a reversed termination held). The rows'
    precedence is ``policy.decide_violation``'s."""
    policy, state, now = d.policy, d.state, d.ctx.now
    if state.terminated:
        return
    if v.category == ADULT_CONTENT and not v.strike:
        # Not a strike: the account was approved for adult content when it was recorded (a
        # held one is judged by then, not by the approval when it is decided). No restriction,
        # but a decision all the same: its statement cites the AUP (POLICY.md: "every decision
        # the system records must carry that citation"), as an operator's does.
        text = (
            f"Violation {v.violation_id} is dismissed: the account was approved for adult "
            "content when it was recorded, so it is no strike."
        )
        sor = d.reasons(text, redress=NOTHING_TO_APPEAL_REDRESS)
        payload = ev.ViolationDismissed(v.violation_id, "adult_content_approved", sor)
        d.emit(d.build(payload, cause))
        return
    if v.category == SUSTAINED_ABUSE:
        throttle = d.throttle(policy.sustained_abuse_throttle, "sustained_abuse", cause)
        d.emit(throttle, d.notice("throttle", throttle))
        return
    strikes = [
        s for s in active_strikes(state, now, policy.strike_lookback) if s.violation_id not in later
    ]
    prior = len(strikes)
    if prior and v.severity != "critical":
        # The prior strikes chose the rung: the statement lists them beside the violation.
        d.extra_facts[:0] = [prior_strike_fact(s) for s in strikes]
    if v.severity == "critical" or prior >= policy.termination_after_strikes:
        if v.severity == "critical":
            reason, text = "critical_violation", "The account is terminated permanently."
        else:
            reason = "strike_limit_reached"
            text = f"The account is terminated: {prior} prior strikes were in force."
        termination = d.terminate(reason, text, cause)
        d.emit(termination)
        # Only a severe violation "may be reported to relevant authorities" (AUP §6; POLICY.md's
        # critical row): one of a referred category that a policy file lets be less than
        # critical, terminating by the strike count, is not referred.
        if v.severity == "critical" and rule.refer_to_authorities:
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
