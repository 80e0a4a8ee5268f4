"""Statements of reasons (POLICY.md, modelled on EU DSA Art. 17) as plain JSON.

Every restrictive decision carries one. The shape is stable and JSON-ready:
``ground``, ``aup_sections``, ``categories``, ``decision``, ``facts``, ``automated_detection``,
``automated_decision``, ``policy_version``, ``redress`` and ``appeal_deadline``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

from events.timefmt import format_time
from projections.durations import largest_whole_unit

JSON = dict[str, Any]
T = TypeVar("T")

FINAL_REDRESS = (
    "This decision on your appeal is final within the service; other redress available under "
    "applicable law is unaffected."
)
# For a decision that restricts nothing (a reinstatement, a dismissal): no appeal is offered.
NOTHING_TO_APPEAL_REDRESS = (
    "This decision restricts nothing, so there is nothing to appeal; other redress available "
    "under applicable law is unaffected."
)


def upheld_redress(deadline: datetime, decided_at: datetime) -> str:
    """The redress of an upheld appeal's outcome. The outcome cannot be appealed itself; the
    decision it upheld may be appealed again while the time to appeal it runs (``deadline``):
    POLICY.md allows one open appeal per decision, not one appeal."""
    if decided_at > deadline:
        return (
            "This decision on your appeal is final within the service: the time to appeal the "
            f"decision you appealed ended at {format_time(deadline)}. Other redress available "
            "under applicable law is unaffected."
        )
    return (
        "This decision on your appeal cannot be appealed itself. The decision you appealed may "
        f"be appealed again until {format_time(deadline)}, by replying to its notice and "
        "quoting its decision event id. Other redress available under applicable law is "
        "unaffected."
    )


def appeal_elsewhere(what: str, appeal_window: timedelta) -> str:
    """The redress of a record that an appeal cannot target, with the decision that it can:
    ``what`` names that decision (``the termination recorded with it``)."""
    return (
        f"This record cannot be appealed on its own: {what} can be, within "
        f"{human_duration(appeal_window)} of it, by replying to its notice and quoting its "
        "decision event id."
    )


def violation_fact(
    violation_id: str,
    category: str,
    severity: str,
    occurred_at: str,
    description: str | None,
) -> JSON:
    """One fact: a violation and what it was, as the statement lists it."""
    text = description or f"{severity} {category.replace('_', ' ')} violation"
    return {
        "violation_id": violation_id,
        "category": category,
        "severity": severity,
        "occurred_at": occurred_at,
        "description": text,
    }


_UNIT_WORDS = {"d": "day", "h": "hour", "m": "minute", "s": "second"}


def human_duration(span: timedelta) -> str:
    """``20 days``, ``24 hours``, ``10 minutes``, ``1 day``: the largest whole unit."""
    seconds = int(span.total_seconds())
    count, unit = largest_whole_unit(seconds) if seconds else (0, "s")
    return f"{count} {_UNIT_WORDS[unit]}{'s' if count != 1 else ''}"


def percent(factor: float) -> str:
    """``25%``, ``0.001%``, ``99.99999999999999%``: a throttle factor as a percentage, exactly
    as the factor is written (never rounded to 0% or 100%); in scientific notation only below
    a millionth of a percent."""
    shown = (Decimal(repr(factor)) * 100).normalize()
    return f"{shown:f}%" if shown == 0 or shown.adjusted() >= -6 else f"{shown}%"


def ground_text(sections: Iterable[int], categories: Iterable[str]) -> str:
    """``AUP §2 (phishing)``; several sections or categories are listed in order, once each."""
    secs = ", ".join(f"§{s}" for s in _unique(sections))
    cats = ", ".join(_unique(categories))
    text = f"AUP {secs}" if secs else "AUP"
    return f"{text} ({cats})" if cats else text


def statement_of_reasons(
    *,
    sections: Iterable[int],
    categories: Iterable[str],
    decision: str,
    facts: Sequence[JSON],
    automated_detection: bool,
    automated_decision: bool,
    policy_version: str,
    decided_at: datetime,
    appeal_window: timedelta | None,
    redress: str | None = None,
) -> JSON:
    """The statement of reasons for a decision taken at ``decided_at``.

    ``redress`` tells the account how to appeal and until when (``decided_at + appeal_window``,
    also given as ``appeal_deadline``). ``appeal_window=None`` marks a decision that an appeal
    cannot target: ``appeal_deadline`` is null and ``redress`` is the one given (what to do
    instead), by default ``FINAL_REDRESS`` (an appeal's own outcome).
    """
    section_list = _unique(sections)
    category_list = _unique(categories)
    deadline: str | None = None
    if appeal_window is None:
        redress = redress or FINAL_REDRESS
    else:
        deadline = format_time(decided_at + appeal_window)
        # An overturn dismisses the violations the decision was taken on, not the prior strikes
        # a statement lists beside them (``prior_strike``): those were decided on their own.
        # An operator's decision taken on no violation (a reason only) has none to clear.
        if any(f.get("prior_strike") for f in facts):
            cleared = (
                " and the violation it was taken on no longer counts as a strike (the prior "
                "strikes listed count as before)"
            )
        elif any(f.get("violation_id") for f in facts):
            cleared = " and the violations behind it no longer count as strikes"
        else:
            cleared = ""
        redress = (
            f"You may appeal this decision within {human_duration(appeal_window)} of it "
            f"(until {deadline}) by replying to this notice and quoting its decision event id. "
            f"A person reviews every appeal; if the decision is overturned it is reversed"
            f"{cleared}."
        )
    return {
        "ground": ground_text(section_list, category_list),
        "aup_sections": [f"§{s}" for s in section_list],
        "categories": category_list,
        "decision": decision,
        "facts": [dict(f) for f in facts],
        "automated_detection": automated_detection,
        "automated_decision": automated_decision,
        "policy_version": policy_version,
        "redress": redress,
        "appeal_deadline": deadline,
    }


def _unique(items: Iterable[T]) -> list[T]:
    seen: list[T] = []
    for item in items:
        if item not in seen:
            seen.append(item)
    return seen
