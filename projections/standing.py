"""An account's standing as a pure fold of its events.

Two layers, both pure:

- ``StandingState`` is the accumulator: everything the events said that the read side shows and
  the policy needs (violations, remediations, throttles, suspension, decisions and their appeals,
  abuse reports, rate limits). It holds no clock-dependent conclusion, so it can be stored
  (``to_json``) and resumed (``from_json``) and brought up to date with ``apply``.
- ``view(state, as_of, strike_lookback)`` draws the ``Standing`` at an instant: strikes that are
  still within the lookback, suspensions and throttles that have not run out, the status.

``fold`` composes them over the events recorded up to ``as_of``; the write side (to decide) and the
read side (to answer) use the same code, so they cannot disagree.

Times inside the state are canonical RFC 3339 strings (``format_time``): fixed width, UTC, so
string order is time order and the state serialises without conversion.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from operator import attrgetter
from typing import Any, Literal, Protocol, TypeVar

from events import RecordedEvent
from events.timefmt import canonical_time, format_any_time, format_time, parse_time, to_utc
from projections import aup_events as ev
from projections.frozen import fast_init
from projections.open_items import CANONICAL_TEXT_LENGTH, OpenItems, open_records

JSON = dict[str, Any]
Status = Literal[
    "terminated", "suspended", "throttled", "remediation_due", "warned", "good_standing"
]
# Bump when the stored shape of ``StandingState`` changes; ``from_json`` then refuses older
# states and the stored standings must be rebuilt from the log (the log is the truth).
STATE_SCHEMA = 4  # 3: DecisionRecord.appeal_deadline; 4: StandingState.replaced_suspensions
# Event types that are decisions an appeal may target, and what each one targets.
DECISION_TYPES = (
    "ThrottleApplied",
    "AccountSuspended",
    "AccountTerminated",
    "RemediationRequested",
)


@fast_init
@dataclass(frozen=True, slots=True)
class ViolationRecord:
    """A reported violation; ``strike`` false never counts, ``dismissed`` no longer counts."""

    violation_id: str
    event_id: str
    category: str
    severity: str
    occurred_at: str
    detection: str
    description: str | None
    key_id: str | None
    strike: bool
    dismissed: bool = False
    decision_event_ids: tuple[str, ...] = ()


@fast_init
@dataclass(frozen=True, slots=True)
class RemediationRecord:
    """A remediation request; open means ``status == "open"`` (see ``remediation_is_open``)."""

    remediation_id: str
    event_id: str
    violation_ids: tuple[str, ...]
    due_at: str
    requested_at: str
    status: str = "open"  # open | completed | expired | dismissed (all its violations were)


@fast_init
@dataclass(frozen=True, slots=True)
class ThrottleRecord:
    """A throttle not lifted; in force until ``expires_at`` (None: until lifted)."""

    throttle_id: str
    event_id: str
    key_id: str | None
    factor: float
    expires_at: str | None
    applied_at: str
    reason: str


@fast_init
@dataclass(frozen=True, slots=True)
class SuspensionRecord:
    """A suspension not ended; in force until ``until`` (None: indefinitely)."""

    suspension_id: str
    event_id: str
    since: str
    until: str | None
    reason: str


@fast_init
@dataclass(frozen=True, slots=True)
class DecisionRecord:
    """A decision event an appeal may target: what it was, when, why, and what it restricted."""

    event_id: str
    type: str
    recorded_at: str
    violation_ids: tuple[str, ...]
    target_id: str | None
    open_appeal_id: str | None = None
    overturned: bool = False
    # The appeal deadline its statement of reasons gave the account; None when it gave none
    # (the window then runs from ``recorded_at``: ``policy.check_appeal_filing``).
    appeal_deadline: str | None = None


@fast_init
@dataclass(frozen=True, slots=True)
class AppealRecord:
    """An appeal of one decision event, open until decided."""

    appeal_id: str
    event_id: str
    decision_event_id: str
    filed_at: str
    status: str = "open"  # open | upheld | overturned


@fast_init
@dataclass(frozen=True, slots=True)
class AbuseReportRecord:
    """A third party's report (AUP §7), or the gate's (``source``), open until triaged."""

    report_id: str
    event_id: str
    category: str
    description: str
    evidence_ref: str | None
    received_at: str
    status: str = "open"  # open | confirmed | rejected
    violation_id: str | None = None
    # Who filed it: ``GATE_SOURCE`` for the gate, None for a report received through the API
    # (and for a record stored before the field: its event has none either).
    source: str | None = None


@fast_init
@dataclass(frozen=True, slots=True)
class RateLimitRecord:
    """The latest configured limits of a key, or (``key_id`` None) of the whole account."""

    key_id: str | None
    requests_per_minute: int
    tokens_per_day: int


@dataclass(slots=True)
class StandingState:
    """What an account's events have established, independent of the clock.

    A value: ``apply``, ``apply_all`` and ``fold`` never change a state they are given, and
    callers must not either (the views keep, on the state, what they found in its tables:
    ``projections.open_items``). ``from_json(to_json(s)) == s`` and ``to_json`` is plain JSON whose
    collections are lists in event order (safe in PostgreSQL JSONB, which reorders object keys).
    """

    account_id: str
    version: int = 0
    last_recorded_at: str | None = None
    terminated: bool = False
    termination_event_id: str | None = None
    adult_content_approved: bool = False
    # The latest suspension not ended (a new one replaces it), and the ones it replaced while
    # they were still running, oldest first: an overturned suspension (``SuspensionEnded`` with
    # reason ``overturned``) gives the account back the one it replaced, not good standing.
    suspension: SuspensionRecord | None = None
    replaced_suspensions: tuple[SuspensionRecord, ...] = ()
    account_rate_limit: RateLimitRecord | None = None
    violations: dict[str, ViolationRecord] = field(default_factory=dict)
    remediations: dict[str, RemediationRecord] = field(default_factory=dict)
    throttles: dict[str, ThrottleRecord] = field(default_factory=dict)
    decisions: dict[str, DecisionRecord] = field(default_factory=dict)
    appeals: dict[str, AppealRecord] = field(default_factory=dict)
    abuse_reports: dict[str, AbuseReportRecord] = field(default_factory=dict)
    key_rate_limits: dict[str, RateLimitRecord] = field(default_factory=dict)
    # Not part of the value: the version of the state this one was made from by ``apply`` /
    # ``apply_all``, whose tables (``Table``) then note every key they changed since, so that
    # ``projections.stored`` writes only those (``changed_keys``).
    derived_from: int | None = field(default=None, compare=False, repr=False)
    # Not part of the value either: the records that may be open (``projections.open_items``),
    # found when first asked for, and those of the state this one was made from.
    open_items: OpenItems | None = field(default=None, init=False, compare=False, repr=False)
    open_base: OpenItems | None = field(default=None, init=False, compare=False, repr=False)

    @classmethod
    def empty(cls, account_id: str) -> StandingState:
        """The state of an account with no events: version 0."""
        return cls(account_id=account_id)

    def head_json(self) -> JSON:
        """Everything but the tables (``TABLES``): what is stored in the ``standings`` row."""
        return {
            "schema": STATE_SCHEMA,
            "account_id": self.account_id,
            "version": self.version,
            "last_recorded_at": self.last_recorded_at,
            "terminated": self.terminated,
            "termination_event_id": self.termination_event_id,
            "adult_content_approved": self.adult_content_approved,
            "suspension": _record_json(self.suspension),
            "replaced_suspensions": [_record_json(r) for r in self.replaced_suspensions],
            "account_rate_limit": _record_json(self.account_rate_limit),
        }

    def to_json(self) -> JSON:
        """The whole state: ``head_json`` plus every table as a list of records in event order."""
        return {
            **self.head_json(),
            **{name: [_record_json(r) for r in getattr(self, name).values()] for name in TABLES},
        }

    @classmethod
    def from_json(cls, data: JSON) -> StandingState:
        """The state ``to_json`` wrote. Raises ``ValueError`` for another state schema."""
        return cls.from_parts(data, {name: data[name] for name in TABLES})

    @classmethod
    def from_parts(cls, head: JSON, tables: Mapping[str, Iterable[JSON]]) -> StandingState:
        """The state from ``head_json`` and each table's records (``record_json``) in event
        order; a table missing from ``tables`` is empty. Raises ``ValueError`` for another state
        schema."""
        if head.get("schema") != STATE_SCHEMA:
            raise ValueError(f"standing state schema {head.get('schema')!r} is not {STATE_SCHEMA}")
        state = cls(
            account_id=head["account_id"],
            version=head["version"],
            last_recorded_at=head["last_recorded_at"],
            terminated=head["terminated"],
            termination_event_id=head["termination_event_id"],
            adult_content_approved=head["adult_content_approved"],
            suspension=_optional_record(SuspensionRecord, head["suspension"]),
            replaced_suspensions=tuple(
                _record(SuspensionRecord, r) for r in head["replaced_suspensions"]
            ),
            account_rate_limit=_optional_record(RateLimitRecord, head["account_rate_limit"]),
        )
        for name, items in tables.items():
            record_class, key = TABLES[name]
            table = getattr(state, name)
            for item in items:
                record = _record(record_class, item)
                table[getattr(record, key)] = record
        return state

    def _owned_copy(self) -> StandingState:
        """A copy whose tables may be changed in place (and note what changes); records are
        immutable and shared."""
        copy = StandingState(
            account_id=self.account_id,
            version=self.version,
            last_recorded_at=self.last_recorded_at,
            terminated=self.terminated,
            termination_event_id=self.termination_event_id,
            adult_content_approved=self.adult_content_approved,
            suspension=self.suspension,
            replaced_suspensions=self.replaced_suspensions,
            account_rate_limit=self.account_rate_limit,
            violations=Table(self.violations),
            remediations=Table(self.remediations),
            throttles=Table(self.throttles),
            decisions=Table(self.decisions),
            appeals=Table(self.appeals),
            abuse_reports=Table(self.abuse_reports),
            key_rate_limits=Table(self.key_rate_limits),
            derived_from=self.version,
        )
        copy.open_base = self.open_items
        return copy

    def changes_since(self, base: StandingState, table: str) -> Table | None:
        """``table`` with the keys it changed (``Table.touched``, ``Table.popped``) since
        ``base``, when this state was made from ``base`` by one ``apply``/``apply_all``; else
        None."""
        if self.derived_from is None or self.derived_from != base.version:
            return None
        changed = getattr(self, table)
        return changed if isinstance(changed, Table) else None


class Table(dict[str, Any]):
    """A state's table that notes the keys set or popped in it since it was copied
    (``StandingState.changes_since``). Equal to a plain ``dict`` with the same items."""

    __slots__ = ("appended", "popped", "touched")

    def __init__(self, items: Mapping[str, Any]) -> None:
        super().__init__(items)
        self.touched: dict[str, None] = {}  # every key set or popped, in that order
        self.popped: set[str] = set()  # keys popped (set again since: now at the end)
        # Keys set where the table did not hold them (new, or set again after a pop), in the
        # order they now end the table; one popped since may be among them.
        self.appended: dict[str, None] = {}

    def __setitem__(self, key: str, value: Any) -> None:
        self.touched[key] = None
        if key not in self:
            self.appended.pop(key, None)
            self.appended[key] = None
        super().__setitem__(key, value)

    def pop(self, key: str, *default: Any) -> Any:
        self.touched[key] = None
        self.popped.add(key)
        return super().pop(key, *default)

    def _unnoted(self, *_args: Any, **_kwargs: Any) -> Any:
        raise TypeError("a state's table changes only by setting and popping keys (noted)")

    # Changes these notes would miss: refused rather than left out of ``changed_records`` and
    # ``projections.open_items``.
    __delitem__ = update = setdefault = popitem = clear = __ior__ = _unnoted


TABLES: dict[str, tuple[type[Any], str]] = {
    "violations": (ViolationRecord, "violation_id"),
    "remediations": (RemediationRecord, "remediation_id"),
    "throttles": (ThrottleRecord, "throttle_id"),
    "decisions": (DecisionRecord, "event_id"),
    "appeals": (AppealRecord, "appeal_id"),
    "abuse_reports": (AbuseReportRecord, "report_id"),
    "key_rate_limits": (RateLimitRecord, "key_id"),
}
R = TypeVar("R")


_FIELD_NAMES: dict[type[Any], tuple[str, ...]] = {}


def record_json(record: Any) -> JSON:
    """A record of the state as plain JSON (tuples become lists)."""
    names = _FIELD_NAMES.get(type(record))
    if names is None:
        names = _FIELD_NAMES[type(record)] = tuple(f.name for f in dataclasses.fields(record))
    return {name: list(v) if isinstance(v := getattr(record, name), tuple) else v for name in names}


def _record_json(record: Any) -> JSON | None:
    return None if record is None else record_json(record)


# The fields of each record that are tuples (JSON gives them as lists).
_TUPLE_FIELDS: dict[type[Any], tuple[str, ...]] = {
    ViolationRecord: ("decision_event_ids",),
    RemediationRecord: ("violation_ids",),
    DecisionRecord: ("violation_ids",),
}


def _record(record_class: type[R], data: JSON) -> R:
    tuples = _TUPLE_FIELDS.get(record_class)
    if tuples:
        data = dict(data)
        for name in tuples:
            if name in data:
                data[name] = tuple(data[name])
    return record_class(**data)


def _optional_record(record_class: type[R], data: JSON | None) -> R | None:
    return None if data is None else _record(record_class, data)


# --- applying events -----------------------------------------------------------------------


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
    if event.version <= state.version:
        _check_account(state, event)
        return state
    new = state._owned_copy()
    _apply_in_place(new, event)
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
    # What this one replaces, kept only while it would still run after this one (so that an
    # overturn never lengthens a suspension) and never when the current one had run out (that
    # ended every suspension it had replaced, swept or not).
    now, until = e.occurred_stamp, _time(p.until)
    if current is not None and current.until is not None and current.until <= now:
        replaced: tuple[SuspensionRecord, ...] = ()
    else:
        replaced = (*s.replaced_suspensions, *((current,) if current else ()))
    s.replaced_suspensions = tuple(
        r
        for r in replaced
        if (r.until is None or r.until > now)
        and (until is None or (r.until is not None and r.until < until))
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


# --- viewing the state at an instant -------------------------------------------------------


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
) -> Standing:
    """The standing at ``as_of`` from an account's events (in version order).

    Deterministic: the same events and ``as_of`` always give the same standing. An account with
    no events recorded by ``as_of`` is in good standing at version 0.
    """
    return view(state_at(account_id, events, as_of), as_of, strike_lookback)
