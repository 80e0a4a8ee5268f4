"""One plain-text template per decision kind. Pure: a notice event in, subject and text out.

Every notice names the account, the decision, the AUP section, the statement of reasons, the
deadline where there is one, and how to appeal (CONTRACT.md, POLICY.md "Statement of reasons").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from events import RecordedEvent
from events.timefmt import format_time

SUBJECTS = {
    "warning": "Warning and remediation request",
    "remediation": "Remediation request",
    "throttle": "Your API access is throttled",
    "suspension": "Your account is suspended",
    "termination": "Your account is terminated",
    "reinstatement": "Your account is reinstated",
    "appeal_outcome": "The outcome of your appeal",
    "dismissal": "A violation was dismissed",
}

INTROS = {
    "warning": "We found a first-time minor violation of our Acceptable Use Policy. No restriction "
    "applies now, but you must remedy it before the deadline below.",
    "remediation": "You must remedy the violation below before the deadline.",
    "throttle": "The rate limits of your API keys are reduced because of the violation(s) below.",
    "suspension": "Your account is suspended because of the violation(s) below.",
    "termination": "Your account is permanently terminated because of the violation(s) below.",
    "reinstatement": "Your account is reinstated and may use the Service again.",
    "appeal_outcome": "Your appeal has been decided.",
    "dismissal": "A violation recorded against your account was dismissed.",
}
# The opening of a notice an operator sent again (``NoticeIssued.resend_of``): what it copies.
RESENT = (
    "This notice is a copy of notice {notice_id}, issued {issued_at}, sent again. It says what "
    "held when that notice was issued: the account's standing may have changed since."
)
RESENT_TOLD = ("notice_id", "notice_event_id", "issued_at")
# Added to a throttle's opening when the throttle comes with a remediation request (its deadline).
REMEDY_TOO = (
    "You must also remedy violation {violations} and confirm it before the deadline below; "
    "otherwise your account is suspended."
)
# The openings of an operator's restriction taken on no violation (a reason only): it names
# the facts below, not violations that are not there.
INTROS_WITHOUT_VIOLATIONS = {
    "throttle": "The rate limits of your API keys are reduced for the reasons below.",
    "suspension": "Your account is suspended for the reasons below.",
    "termination": "Your account is permanently terminated for the reasons below.",
}


@dataclass(frozen=True, slots=True)
class RenderedNotice:
    subject: str
    text: str
    body: dict[str, Any]  # the webhook's JSON


def render(notice: RecordedEvent) -> RenderedNotice:
    data = notice.data
    kind = data["kind"]
    sor = data.get("statement_of_reasons") or {}
    subject = f"[TaaS] {SUBJECTS.get(kind, 'Enforcement notice')} ({notice.account_id})"
    first = data.get("resend_of")
    lines = [] if first is None else [RESENT.format(**first), ""]
    if first is not None:
        subject += " (sent again)"
    lines += [
        f"Account: {notice.account_id}",
        f"Decision: {sor.get('decision', kind)}",
        f"Ground: {sor.get('ground', 'AUP')}",
        "",
        _intro(kind, data.get("violation_ids") or [], data.get("deadline")),
        "",
        "Statement of reasons",
        f"- Policy version: {sor.get('policy_version', '')}",
        f"- Detected automatically: {'yes' if sor.get('automated_detection') else 'no'}",
        f"- Decided automatically: {'yes' if sor.get('automated_decision') else 'no'}",
    ]
    for fact in sor.get("facts", []):
        ident = (
            fact.get("violation_id") or fact.get("remediation_id") or fact.get("appeal_id") or ""
        )
        # A reporter's description may hold lines of its own: indented under its fact, none can
        # pass for one of the notice's own ("How to appeal").
        described = "\n    ".join(str(fact.get("description") or "").splitlines())
        if fact.get("prior_strike"):
            ident += " (a prior strike)"
        lines.append(f"- Fact {ident}: {described}".replace("Fact :", "Fact:").rstrip())
    if data.get("deadline"):
        lines += ["", f"Deadline: {data['deadline']}"]
    lines += [
        "",
        "How to appeal",
        sor.get("redress") or "Reply to this notice to ask for a review.",
        "",
        f"Decision event id: {data['decision_event_id']}",
        f"Notice id: {data['notice_id']} (issued {format_time(notice.recorded_at)})",
    ]
    text = "\n".join(lines) + "\n"
    body = {
        "notice_id": data["notice_id"],
        "notice_event_id": notice.event_id,
        "account_id": notice.account_id,
        "kind": kind,
        "decision_event_id": data["decision_event_id"],
        "violation_ids": data.get("violation_ids", []),
        "deadline": data.get("deadline"),
        "subject": subject,
        "text": text,
        "statement_of_reasons": sor,
        "issued_at": format_time(notice.recorded_at),
        # What the notice copies; the operator's reason for sending it again stays in the log.
        "resend_of": None if first is None else {k: first[k] for k in RESENT_TOLD},
    }
    return RenderedNotice(subject, text, body)


def _intro(kind: str, violation_ids: list[str], deadline: str | None) -> str:
    if not violation_ids and kind in INTROS_WITHOUT_VIOLATIONS:
        return INTROS_WITHOUT_VIOLATIONS[kind]
    intro = INTROS.get(kind, "")
    if kind == "throttle" and deadline and violation_ids:
        # A minor violation on one prior strike is throttled and must be remedied (POLICY.md's
        # ladder): this notice, its only one, asks for the remediation too and says what
        # missing it does.
        intro += " " + REMEDY_TOO.format(violations=", ".join(violation_ids))
    return intro
