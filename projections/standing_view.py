"""The ``Standing`` at an instant, drawn from a ``StandingState`` by ``view``: strikes still
within the lookback, suspensions and throttles that have not run out, the status. Pure."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from events.timefmt import format_any_time, format_time, parse_time, to_utc
from projections.open_items import CANONICAL_TEXT_LENGTH, open_records
from projections.standing_state import (
    JSON,
    TABLES,
    AbuseReportRecord,
    AppealRecord,
    RemediationRecord,
    StandingState,
    SuspensionRecord,
    ThrottleRecord,
    ViolationRecord,
)

Status = Literal[
    "terminated", "suspended", "throttled", "remediation_due", "warned", "good_standing"
]


@dataclass(frozen=True, slots=True)
class OpenRemediation:
    """A remediation still open at ``as_of`` (possibly overdue)."""

    remediation_id: str
    due_at: datetime
    violation_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ActiveThrottle:
    """A throttle in force at ``as_of``; ``key_id`` None applies to every key."""

    throttle_id: str
    key_id: str | None
    factor: float
    expires_at: datetime | None


@dataclass(frozen=True, slots=True)
class ActiveSuspension:
    """The suspension in force at ``as_of``; ``until`` None means indefinitely."""

    suspension_id: str
    since: datetime
    until: datetime | None
    reason: str


@dataclass(frozen=True, slots=True)
class Standing:
    """An account's standing at ``as_of``; ``to_json`` is CONTRACT.md's standing object."""

    account_id: str
    status: Status
    strikes: int
    open_violations: tuple[str, ...]
    open_remediations: tuple[OpenRemediation, ...]
    active_throttles: tuple[ActiveThrottle, ...]
    suspension: ActiveSuspension | None
    terminated: bool
    adult_content_approved: bool
    open_abuse_reports: int
    open_appeals: int
    version: int
    as_of: datetime

    @property
    def overdue_remediations(self) -> tuple[OpenRemediation, ...]:
        """Open remediations whose due time has passed (``RemediationExpired`` not yet recorded)."""
        return tuple(r for r in self.open_remediations if r.due_at <= self.as_of)

    def to_json(self) -> JSON:
        s = self.suspension
        return {
            "account_id": self.account_id,
            "status": self.status,
            "strikes": self.strikes,
            "open_violations": list(self.open_violations),
            "open_remediations": [
                {
                    "remediation_id": r.remediation_id,
                    "due_at": format_time(r.due_at),
                    "violation_ids": list(r.violation_ids),
                }
                for r in self.open_remediations
            ],
            "active_throttles": [
                {
                    "throttle_id": t.throttle_id,
                    "key_id": t.key_id,
                    "factor": t.factor,
                    "expires_at": _fmt(t.expires_at),
                }
                for t in self.active_throttles
            ],
            "suspension": None
            if s is None
            else {
                "suspension_id": s.suspension_id,
                "since": format_time(s.since),
                "until": _fmt(s.until),
                "reason": s.reason,
            },
            "terminated": self.terminated,
            "adult_content_approved": self.adult_content_approved,
            "open_abuse_reports": self.open_abuse_reports,
            "open_appeals": self.open_appeals,
            "version": self.version,
            "as_of": format_any_time(self.as_of),
        }

    @classmethod
    def from_json(cls, data: JSON) -> Standing:
        """The standing ``to_json`` wrote (for clients and stored read models)."""
        s = data["suspension"]
        return cls(
            account_id=data["account_id"],
            status=data["status"],
            strikes=data["strikes"],
            open_violations=tuple(data["open_violations"]),
            open_remediations=tuple(
                OpenRemediation(
                    r["remediation_id"], parse_time(r["due_at"]), tuple(r["violation_ids"])
                )
                for r in data["open_remediations"]
            ),
            active_throttles=tuple(
                ActiveThrottle(t["throttle_id"], t["key_id"], t["factor"], _parse(t["expires_at"]))
                for t in data["active_throttles"]
            ),
            suspension=None
            if s is None
            else ActiveSuspension(
                s["suspension_id"], parse_time(s["since"]), _parse(s["until"]), s["reason"]
            ),
            terminated=data["terminated"],
            adult_content_approved=data["adult_content_approved"],
            open_abuse_reports=data["open_abuse_reports"],
            open_appeals=data["open_appeals"],
            version=data["version"],
            as_of=parse_time(data["as_of"]),
        )


def _fmt(moment: datetime | None) -> str | None:
    return None if moment is None else format_time(moment)


def _parse(text: str | None) -> datetime | None:
    return None if text is None else parse_time(text)


def remediation_is_open(state: StandingState, remediation: RemediationRecord) -> bool:
    """Open until completed, expired, or dismissed (all its violations were dismissed)."""
    return remediation.status == "open"


def active_strikes(
    state: StandingState, as_of: datetime, strike_lookback: timedelta
) -> list[ViolationRecord]:
    """Violations that count as strikes at ``as_of``: not dismissed, within the lookback."""
    as_of = to_utc(as_of)
    counts = _counts_after(_strike_cutoff(as_of, strike_lookback))
    return [
        v for v in _violations(state, format_time(as_of), strike_lookback) if v.strike and counts(v)
    ]


def _counts_after(cutoff: str) -> Callable[[ViolationRecord], bool]:
    """Whether a violation counts (a strike, if it is one) with this strike cutoff."""
    return lambda v: not v.dismissed and v.occurred_at > cutoff


def _in_force_at(at: str) -> Callable[[ThrottleRecord], bool]:
    """Whether a throttle is in force at the time text ``at``."""
    return lambda t: t.expires_at is None or t.expires_at > at


def _is_open(record: RemediationRecord | AbuseReportRecord | AppealRecord) -> bool:
    return record.status == "open"


# The records of a table that may be open (``projections.open_items``): at every instant at or
# after ``since`` a superset of the open ones, which the tests above then pick from. Each
# ``filter_for(since)`` keeps what the test at ``since`` keeps: a record it refuses stays closed.


def _open(
    state: StandingState,
    name: str,
    at: str,
    filter_for: Callable[[str], Callable[[Any], bool]],
    variant: Hashable = None,
) -> Iterable[Any]:
    """The records of table ``name`` that may be open at ``at`` (``variant``: what the filter
    depends on besides ``since``)."""
    kept_as = name if variant is None else (name, variant)
    return open_records(state, getattr(state, name), TABLES[name][1], kept_as, at, filter_for)


def _violations(
    state: StandingState, at: str, strike_lookback: timedelta
) -> Iterable[ViolationRecord]:
    """Violations that may count at ``at`` (a time text) or later."""

    def filter_for(since: str) -> Callable[[ViolationRecord], bool]:
        cutoff = _strike_cutoff(parse_time(since), strike_lookback)
        if len(cutoff) != CANONICAL_TEXT_LENGTH or strike_lookback < timedelta(0):
            # Before the year 1000 its text does not sort as its time; a negative lookback's
            # cutoff falls back to "" past the year 9999: later cutoffs may be earlier ones.
            return lambda v: not v.dismissed
        return _counts_after(cutoff)

    return _open(state, "violations", at, filter_for, strike_lookback)


def _status_open(_since: str) -> Callable[[Any], bool]:
    return _is_open  # a record closed stays closed


def _strike_cutoff(as_of: datetime, strike_lookback: timedelta) -> str:
    """The time text a violation must have occurred after to count at ``as_of``; before the
    first time a datetime holds (an ``as_of`` in the first days of year 1), the earliest."""
    try:
        return format_time(as_of - strike_lookback)
    except OverflowError:
        return ""  # every time text sorts after it


def suspension_runs(s: SuspensionRecord, as_of: datetime) -> bool:
    """Whether ``s`` runs at ``as_of``: one whose ``until`` has passed has ended."""
    return s.until is None or s.until > format_time(as_of)


def active_suspension(state: StandingState, as_of: datetime) -> SuspensionRecord | None:
    """The suspension in force at ``as_of`` (``suspension_runs``)."""
    s = state.suspension
    return s if s is not None and suspension_runs(s, as_of) else None


def active_throttles(state: StandingState, as_of: datetime) -> list[ThrottleRecord]:
    """Throttles in force at ``as_of``: not lifted and not expired."""
    now = format_time(as_of)
    return list(filter(_in_force_at(now), _open(state, "throttles", now, _in_force_at)))


def view(state: StandingState, as_of: datetime, strike_lookback: timedelta) -> Standing:
    """The standing at ``as_of`` of a state holding the events recorded up to ``as_of``."""
    as_of = to_utc(as_of)
    at = format_time(as_of)
    counts = _counts_after(_strike_cutoff(as_of, strike_lookback))
    # One pass for both (``active_strikes`` is the same test plus ``strike``).
    open_ids: list[str] = []
    strikes = 0
    for v in _violations(state, at, strike_lookback):
        if counts(v):
            open_ids.append(v.violation_id)
            if v.strike:
                strikes += 1
    open_violations = tuple(open_ids)
    remediations = tuple(
        OpenRemediation(r.remediation_id, parse_time(r.due_at), r.violation_ids)
        for r in _open(state, "remediations", at, _status_open)
        if remediation_is_open(state, r)
    )
    throttles = tuple(
        ActiveThrottle(t.throttle_id, t.key_id, t.factor, _parse(t.expires_at))
        for t in active_throttles(state, as_of)
    )
    s = active_suspension(state, as_of)
    suspension = (
        None
        if s is None
        else ActiveSuspension(s.suspension_id, parse_time(s.since), _parse(s.until), s.reason)
    )
    status: Status
    if state.terminated:
        status = "terminated"
    elif suspension is not None:
        status = "suspended"
    elif throttles:
        status = "throttled"
    elif remediations:
        status = "remediation_due"
    elif strikes:
        status = "warned"
    else:
        status = "good_standing"
    return Standing(
        account_id=state.account_id,
        status=status,
        strikes=strikes,
        open_violations=open_violations,
        open_remediations=remediations,
        active_throttles=throttles,
        suspension=suspension,
        terminated=state.terminated,
        adult_content_approved=state.adult_content_approved,
        open_abuse_reports=sum(map(_is_open, _open(state, "abuse_reports", at, _status_open))),
        open_appeals=sum(map(_is_open, _open(state, "appeals", at, _status_open))),
        version=state.version,
        as_of=as_of,
    )
