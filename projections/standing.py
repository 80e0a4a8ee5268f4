"""An account's standing as a pure fold of its events.

Two layers, both pure:

- ``StandingState`` (``projections.standing_state``) is the accumulator: everything the
  events said that the read side shows and the policy needs (violations, remediations,
  throttles, suspension, decisions and their appeals, abuse reports, rate limits). It holds no
  clock-dependent conclusion, so it can be stored (``to_json``) and resumed (``from_json``) and
  brought up to date with ``apply`` (this module).
- ``view(state, as_of, strike_lookback)`` (``projections.standing_view``) draws the
  ``Standing`` at an instant: strikes that are still within the lookback, suspensions and
  throttles that have not run out, the status.

``fold`` composes them over the events recorded up to ``as_of``; the write side (to decide) and the
read side (to answer) use the same code, so they cannot disagree.

Times inside the state are canonical RFC 3339 strings (``format_time``): fixed width, UTC, so
string order is time order and the state serialises without conversion.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta
from operator import attrgetter
from typing import Any, Protocol, TypeVar

from events import RecordedEvent
from events.timefmt import canonical_time, parse_time, to_utc
from projections import aup_events as ev
from projections.lookback import LookbackOfRecord, PolicyStart
from projections.standing_state import (
    DECISION_TYPES,
    JSON,
    STATE_SCHEMA,
    TABLES,
    AbuseReportRecord,
    AppealRecord,
    DecisionRecord,
    RateLimitRecord,
    RemediationRecord,
    StandingState,
    SuspensionRecord,
    Table,
    ThrottleRecord,
    ViolationRecord,
    held_undecided,
    record_json,
)
from projections.standing_view import (
    ActiveSuspension,
    ActiveThrottle,
    OpenRemediation,
    Standing,
    Status,
    active_strikes,
    active_suspension,
    active_throttles,
    remediation_is_open,
    suspension_runs,
    view,
)

R = TypeVar("R")


class FoldEvent(Protocol):
    """What the fold reads of an event: a ``RecordedEvent``, or a lighter row of the same event
    (a rebuild's, ``projections.runner``) whose times are already canonical text."""

    @property
    def account_id(self) -> str: ...
    @property
    def version(self) -> int: ...
    @property
    def type(self) -> str: ...
    @property
    def event_id(self) -> str: ...
    @property
    def schema_version(self) -> int: ...
    @property
    def data(self) -> JSON: ...
    @property
    def occurred_stamp(self) -> str:
        """``format_time(occurred_at)``."""
        ...

    @property
    def recorded_stamp(self) -> str:
        """``format_time(recorded_at)``."""
        ...


def apply(state: StandingState, event: FoldEvent) -> StandingState:
    """The state after ``event``. An event at or below the state's version changes nothing
    (redelivery is harmless); an event of another account is a ``ValueError``; an event type the
    fold does not know only advances the version."""
    return _applied(state, event, StandingState._owned_copy)


def advance(state: StandingState, event: FoldEvent) -> StandingState:
    """``apply`` for a caller that never looks at ``state`` again (a walk through a history that
    views each state in turn): it may return ``state`` itself, changed. ``apply`` copies the
    state's tables, so a walk through n events that way copies about n²/2 records; this one
    costs what each event changes."""
    return _applied(state, event, StandingState._renewed)


def _applied(
    state: StandingState, event: FoldEvent, owned: Callable[[StandingState], StandingState]
) -> StandingState:
    if event.version <= state.version:
        _check_account(state, event)
        return state
    new = owned(state)
    _apply_in_place(new, event)
    return new


def advance_all(state: StandingState, events: Iterable[FoldEvent]) -> StandingState:
    """``apply_all`` for a caller that never looks at ``state`` again (``advance``)."""
    new = state._renewed()
    _apply_all_in_place(new, events)
    return new


def apply_all(state: StandingState, events: Iterable[FoldEvent]) -> StandingState:
    """``apply`` of each event in turn (one copy of the state, however many events)."""
    new = state._owned_copy()
    _apply_all_in_place(new, events)
    return new


def fold_new(account_id: str, events: Iterable[FoldEvent]) -> StandingState:
    """``apply_all(StandingState.empty(account_id), events)``, equal to it but with plain
    tables that note no changes: a state to be stored whole (a rebuild), never as a difference
    (``changes_since`` is None)."""
    state = StandingState.empty(account_id)
    _apply_all_in_place(state, events)
    return state


def _apply_all_in_place(s: StandingState, events: Iterable[FoldEvent]) -> None:
    last = None
    for event in events:
        if _apply_event(s, event):
            last = event
    if last is not None:  # only the last event's time is kept
        s.last_recorded_at = last.recorded_stamp


def _check_account(state: StandingState, event: FoldEvent) -> None:
    if event.account_id != state.account_id:
        raise ValueError(
            f"event {event.event_id} belongs to {event.account_id!r}, not {state.account_id!r}"
        )


def _apply_in_place(s: StandingState, event: FoldEvent) -> None:
    if _apply_event(s, event):
        s.last_recorded_at = event.recorded_stamp


_payload = ev.CODEC.payload


def _apply_event(s: StandingState, event: FoldEvent) -> bool:
    """Apply ``event`` but for ``last_recorded_at``; False if it was already reflected."""
    if event.account_id != s.account_id:
        _check_account(s, event)
    if event.version <= s.version:
        return False
    handler = _HANDLERS.get(event.type)
    if handler is not None:
        handler(s, _payload(event.type, event.schema_version, event.data), event)
    s.version = event.version
    return True


# Per record class: a getter of all its fields (in order) and each field's index.
_SHAPES: dict[type[Any], tuple[Callable[[Any], tuple[Any, ...]], dict[str, int]]] = {}


def _with(record: R, **changes: Any) -> R:
    """``dataclasses.replace`` for the state's records, without its checks (a hot path)."""
    cls = type(record)
    shape = _SHAPES.get(cls)
    if shape is None:
        names = [f.name for f in dataclasses.fields(record)]  # type: ignore[arg-type]
        shape = _SHAPES[cls] = (attrgetter(*names), {n: i for i, n in enumerate(names)})
    getter, index = shape
    values = list(getter(record))
    for name, value in changes.items():
        values[index[name]] = value
    return cls(*values)


def _time(text: str | None) -> str | None:
    return None if text is None else canonical_time(text)


def _stated_deadline(statement_of_reasons: Any) -> str | None:
    """The ``appeal_deadline`` a statement of reasons gave, in the canonical time format."""
    if not isinstance(statement_of_reasons, dict):
        return None
    deadline = statement_of_reasons.get("appeal_deadline")
    if not isinstance(deadline, str):
        return None
    try:
        return canonical_time(deadline)
    except ValueError:
        return None  # not a time: as if none was given


def _record_decision(
    s: StandingState,
    e: FoldEvent,
    violation_ids: Iterable[str],
    target_id: str | None,
    statement_of_reasons: Any,
) -> None:
    ids = tuple(violation_ids)
    deadline = _stated_deadline(statement_of_reasons)
    s.decisions[e.event_id] = DecisionRecord(
        e.event_id, e.type, e.recorded_stamp, ids, target_id, None, False, deadline
    )
    for vid in ids:
        v = s.violations.get(vid)
        if v is not None:
            links = (*v.decision_event_ids, e.event_id)
            s.violations[vid] = _with(v, decision_event_ids=links)


def _on_violation_reported(s: StandingState, p: ev.ViolationReported, e: FoldEvent) -> None:
    s.violations[p.violation_id] = ViolationRecord(
        violation_id=p.violation_id,
        event_id=e.event_id,
        category=p.category,
        severity=p.severity,
        occurred_at=e.occurred_stamp,
        detection=p.detection,
        description=p.description,
        key_id=p.key_id,
        strike=p.strike,
        held_by=s.termination_event_id,  # None unless terminated
    )


def _on_violation_dismissed(s: StandingState, p: ev.ViolationDismissed, e: FoldEvent) -> None:
    v = s.violations.get(p.violation_id)
    if v is None:
        return
    s.violations[p.violation_id] = _with(v, dismissed=True)
    # A remediation asked for violations that are all dismissed is owed no more.
    for decision_id in v.decision_event_ids:
        d = s.decisions.get(decision_id)
        if d is None or d.type != "RemediationRequested" or d.target_id is None:
            continue
        r = s.remediations.get(d.target_id)
        if r is not None and r.status == "open" and _all_dismissed(s, r.violation_ids):
            s.remediations[r.remediation_id] = _with(r, status="dismissed")


def _all_dismissed(s: StandingState, violation_ids: tuple[str, ...]) -> bool:
    return bool(violation_ids) and all(
        (v := s.violations.get(vid)) is not None and v.dismissed for vid in violation_ids
    )


def _on_report_received(s: StandingState, p: ev.AbuseReportReceived, e: FoldEvent) -> None:
    s.abuse_reports[p.report_id] = AbuseReportRecord(
        p.report_id,
        e.event_id,
        p.category,
        p.description,
        p.evidence_ref,
        e.occurred_stamp,
        source=p.source,
    )


def _on_report_triaged(s: StandingState, p: ev.AbuseReportTriaged, e: FoldEvent) -> None:
    r = s.abuse_reports.get(p.report_id)
    if r is not None:
        s.abuse_reports[p.report_id] = _with(r, status=p.outcome, violation_id=p.violation_id)


def _on_remediation_requested(s: StandingState, p: ev.RemediationRequested, e: FoldEvent) -> None:
    ids = tuple(p.violation_ids)
    s.remediations[p.remediation_id] = RemediationRecord(
        p.remediation_id,
        e.event_id,
        ids,
        canonical_time(p.due_at),
        e.occurred_stamp,
        "dismissed" if _all_dismissed(s, ids) else "open",
    )
    _record_decision(s, e, p.violation_ids, p.remediation_id, p.statement_of_reasons)


def _close_remediation(s: StandingState, remediation_id: str, status: str) -> None:
    r = s.remediations.get(remediation_id)
    if r is not None:
        s.remediations[remediation_id] = _with(r, status=status)


def _on_remediation_completed(s: StandingState, p: ev.RemediationCompleted, e: FoldEvent) -> None:
    _close_remediation(s, p.remediation_id, "completed")


def _on_remediation_expired(s: StandingState, p: ev.RemediationExpired, e: FoldEvent) -> None:
    _close_remediation(s, p.remediation_id, "expired")


def _on_throttle_applied(s: StandingState, p: ev.ThrottleApplied, e: FoldEvent) -> None:
    s.throttles[p.throttle_id] = ThrottleRecord(
        p.throttle_id,
        e.event_id,
        p.key_id,
        p.factor,
        _time(p.expires_at),
        e.occurred_stamp,
        p.reason,
    )
    _record_decision(s, e, p.violation_ids, p.throttle_id, p.statement_of_reasons)


def _on_throttle_lifted(s: StandingState, p: ev.ThrottleLifted, e: FoldEvent) -> None:
    s.throttles.pop(p.throttle_id, None)


def _on_suspended(s: StandingState, p: ev.AccountSuspended, e: FoldEvent) -> None:
    current = s.suspension
    if p.held_by is not None and current is not None and current.suspension_id == p.held_by:
        # Held behind the current one, which lasts at least as long: kept with those it
        # replaced, in order of ``until`` (the longest last, the one an overturn restores).
        held = SuspensionRecord(
            p.suspension_id, e.event_id, e.occurred_stamp, _time(p.until), p.reason
        )
        s.replaced_suspensions = tuple(sorted((*s.replaced_suspensions, held), key=_until_order))
        _record_decision(s, e, p.violation_ids, p.suspension_id, p.statement_of_reasons)
        return
    # What this one replaces, kept while it still runs and ends no later than this one (so that
    # an overturn never lengthens a suspension; one ending at the same instant is not replaced by
    # a shorter one, timed as indefinite) and never when the current one had run out (that ended
    # every suspension it had replaced, swept or not).
    now, until = e.occurred_stamp, _time(p.until)
    if current is not None and current.until is not None and current.until <= now:
        replaced: tuple[SuspensionRecord, ...] = ()
    else:
        replaced = (*s.replaced_suspensions, *((current,) if current else ()))
    s.replaced_suspensions = tuple(
        r
        for r in replaced
        if (r.until is None or r.until > now)
        and (until is None or (r.until is not None and r.until <= until))
        and not _overturned(s, r)
    )
    s.suspension = SuspensionRecord(p.suspension_id, e.event_id, now, until, p.reason)
    _record_decision(s, e, p.violation_ids, p.suspension_id, p.statement_of_reasons)


def _until_order(r: SuspensionRecord) -> tuple[bool, str]:
    """Sorts suspensions by when they end, an indefinite one last."""
    return (r.until is None, r.until or "")


def _overturned(s: StandingState, r: SuspensionRecord) -> bool:
    """Whether an appeal overturned the decision that imposed ``r`` (logs from before
    ``SuspensionEnded`` "overturned" may have recorded no end of it: on a terminated account
    such a reversal recorded nothing, and the suspension stayed current)."""
    d = s.decisions.get(r.event_id)
    return d is not None and d.overturned


def _on_suspension_ended(s: StandingState, p: ev.SuspensionEnded, e: FoldEvent) -> None:
    if p.reason == ev.SUSPENSION_OVERTURNED:
        # Only that suspension ends: the one it replaced, if any, is in force again.
        if s.suspension is not None and s.suspension.suspension_id == p.suspension_id:
            replaced = s.replaced_suspensions
            s.suspension = replaced[-1] if replaced else None
            s.replaced_suspensions = replaced[:-1]
        else:
            s.replaced_suspensions = tuple(
                r for r in s.replaced_suspensions if r.suspension_id != p.suspension_id
            )
    elif s.suspension is not None and s.suspension.suspension_id == p.suspension_id:
        # Ran out (or ended otherwise): the account is no longer suspended.
        s.suspension = None
        s.replaced_suspensions = ()


def _on_reinstated(s: StandingState, p: ev.AccountReinstated, e: FoldEvent) -> None:
    if p.ends in ("all", "suspension"):
        s.suspension = None
        s.replaced_suspensions = ()
    if p.ends in ("all", "termination"):
        s.terminated = False
        s.termination_event_id = None


def _on_terminated(s: StandingState, p: ev.AccountTerminated, e: FoldEvent) -> None:
    s.terminated = True
    s.termination_event_id = e.event_id
    _record_decision(s, e, p.violation_ids, None, p.statement_of_reasons)
    _take_over_held(s, p.statement_of_reasons, e.event_id)


def _take_over_held(s: StandingState, statement_of_reasons: Any, termination: str) -> None:
    """A termination decided on a violation that another termination held, when an appeal
    reversed that one (its statement has a fact naming it, ``held_by``:
    ``policy_appeals.decide_held``), holds in its turn the violations that one still held
    undecided: they are decided when this one is reversed."""
    facts = statement_of_reasons.get("facts") if isinstance(statement_of_reasons, dict) else None
    previous = {f.get("held_by") for f in facts or () if isinstance(f, dict)} - {None}
    if not previous:
        return
    for violation_id, v in list(s.violations.items()):
        if held_undecided(v, previous):
            s.violations[violation_id] = _with(v, held_by=termination)


def _on_appeal_filed(s: StandingState, p: ev.AppealFiled, e: FoldEvent) -> None:
    s.appeals[p.appeal_id] = AppealRecord(
        p.appeal_id, e.event_id, p.decision_event_id, e.occurred_stamp
    )
    d = s.decisions.get(p.decision_event_id)
    if d is not None:
        s.decisions[d.event_id] = _with(d, open_appeal_id=p.appeal_id)


def _on_appeal_decided(s: StandingState, p: ev.AppealDecided, e: FoldEvent) -> None:
    a = s.appeals.get(p.appeal_id)
    if a is not None:
        s.appeals[p.appeal_id] = _with(a, status=p.outcome)
    d = s.decisions.get(p.decision_event_id)
    if d is not None:
        overturned = d.overturned or p.outcome == "overturned"
        s.decisions[d.event_id] = _with(d, open_appeal_id=None, overturned=overturned)
        if overturned:
            # An overturned suspension never comes back (logs from before SuspensionEnded
            # "overturned" recorded nothing for one that was replaced).
            s.replaced_suspensions = tuple(
                r for r in s.replaced_suspensions if r.event_id != d.event_id
            )


def _on_adult_approval(s: StandingState, p: ev.AdultContentApprovalChanged, e: FoldEvent) -> None:
    s.adult_content_approved = p.approved


def _on_rate_limits(s: StandingState, p: ev.RateLimitsConfigured, e: FoldEvent) -> None:
    record = RateLimitRecord(p.key_id, p.requests_per_minute, p.tokens_per_day)
    if p.key_id is None:
        s.account_rate_limit = record
    else:
        s.key_rate_limits[p.key_id] = record


_HANDLERS: dict[str, Callable[[StandingState, Any, FoldEvent], None]] = {
    "ViolationReported": _on_violation_reported,
    "ViolationDismissed": _on_violation_dismissed,
    "AbuseReportReceived": _on_report_received,
    "AbuseReportTriaged": _on_report_triaged,
    "RemediationRequested": _on_remediation_requested,
    "RemediationCompleted": _on_remediation_completed,
    "RemediationExpired": _on_remediation_expired,
    "ThrottleApplied": _on_throttle_applied,
    "ThrottleLifted": _on_throttle_lifted,
    "AccountSuspended": _on_suspended,
    "SuspensionEnded": _on_suspension_ended,
    "AccountReinstated": _on_reinstated,
    "AccountTerminated": _on_terminated,
    "AppealFiled": _on_appeal_filed,
    "AppealDecided": _on_appeal_decided,
    "AdultContentApprovalChanged": _on_adult_approval,
    "RateLimitsConfigured": _on_rate_limits,
}
# The event types the fold reads; every other type only advances the version.
FOLDED_TYPES: frozenset[str] = frozenset(_HANDLERS)


def state_at(account_id: str, events: Iterable[RecordedEvent], as_of: datetime) -> StandingState:
    """The state from the events (in version order) recorded up to ``as_of``: those before the
    first one recorded after it. A stream's times need not rise with its versions (processes
    whose clocks are apart), and a later version never counts without the ones before it."""
    state = StandingState.empty(account_id)
    for event in recorded_until(events, as_of):
        _apply_in_place(state, event)
    return state


def recorded_until(events: Iterable[RecordedEvent], as_of: datetime) -> Iterator[RecordedEvent]:
    """``events`` (in version order) up to the first one recorded after ``as_of``."""
    as_of = to_utc(as_of)
    for event in events:
        if to_utc(event.recorded_at) > as_of:
            return
        yield event


def fold(
    account_id: str,
    events: Iterable[RecordedEvent],
    as_of: datetime,
    strike_lookback: timedelta,
    policy_start: PolicyStart | None = None,
) -> Standing:
    """The standing at ``as_of`` from an account's events (in version order).

    Deterministic: the same events and ``as_of`` always give the same standing. An account with
    no events recorded by ``as_of`` is in good standing at version 0. Strikes count for the
    lookback recorded on the last of those events that records one (``projections.lookback``:
    the policy that last acted on the account); ``strike_lookback`` when none does. A
    ``policy_start`` (the last policy begun by ``as_of``) later than the last of the events
    takes their place: its policy was in force and had not acted on the account yet.
    """
    state = StandingState.empty(account_id)
    lookback = LookbackOfRecord(strike_lookback)
    for event in recorded_until(events, as_of):
        lookback.see(event.metadata)
        _apply_in_place(state, event)
    counted = lookback.value
    if policy_start is not None and _begun_since(policy_start.at, state.last_recorded_at, as_of):
        counted = policy_start.strike_lookback
    return view(state, as_of, counted)


def _begun_since(start: datetime, last_recorded_at: str | None, as_of: datetime) -> bool:
    """Whether a policy begun at ``start`` began by ``as_of`` and after the last event, recorded
    at ``last_recorded_at`` (the state's; ``None``: no event)."""
    start = to_utc(start)
    if start > to_utc(as_of):
        return False
    return last_recorded_at is None or start > parse_time(last_recorded_at)


# The state and the view are defined beside this module; importers take all three from here.
__all__ = [
    "DECISION_TYPES",
    "FOLDED_TYPES",
    "JSON",
    "STATE_SCHEMA",
    "TABLES",
    "AbuseReportRecord",
    "ActiveSuspension",
    "ActiveThrottle",
    "AppealRecord",
    "DecisionRecord",
    "FoldEvent",
    "OpenRemediation",
    "RateLimitRecord",
    "RemediationRecord",
    "Standing",
    "StandingState",
    "Status",
    "SuspensionRecord",
    "Table",
    "ThrottleRecord",
    "ViolationRecord",
    "active_strikes",
    "active_suspension",
    "active_throttles",
    "advance",
    "advance_all",
    "apply",
    "apply_all",
    "fold",
    "fold_new",
    "held_undecided",
    "record_json",
    "recorded_until",
    "remediation_is_open",
    "state_at",
    "suspension_runs",
    "view",
]
