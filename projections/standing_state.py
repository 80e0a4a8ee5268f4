"""What an account's events have established, independent of the clock: ``StandingState``,
the accumulator the fold (``projections.standing``) builds, with its records and its JSON.

It holds no clock-dependent conclusion, so it can be stored (``to_json``) and resumed
(``from_json``). Times inside it are canonical RFC 3339 strings (``format_time``): fixed width,
UTC, so string order is time order and the state serialises without conversion.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from projections.frozen import fast_init
from projections.open_items import OpenItems

JSON = dict[str, Any]
# Bump when the stored shape of ``StandingState`` changes, or what the fold keeps in it;
# ``from_json`` then refuses older states and the stored standings must be rebuilt from the log
# (the log is the truth). 3: DecisionRecord.appeal_deadline; 4: replaced_suspensions; 5: those
# also keep a timed suspension ending at the same instant as the one replacing it (a 4 lacks it);
# 6: ViolationRecord.held_by.
STATE_SCHEMA = 6
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
    # The termination in force when it was recorded, which decided nothing on it (POLICY.md):
    # its reversal on appeal decides it (``policy_appeals``). None when recorded otherwise.
    held_by: str | None = None


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

    A value: ``apply``, ``apply_all`` and ``fold`` never change a state they are given (only
    ``advance`` does, for a caller that drops the state it gives), and callers must not either
    (the views keep, on the state, what they found in its tables: ``projections.open_items``).
    ``from_json(to_json(s)) == s`` and ``to_json`` is plain JSON whose collections are lists in
    event order (safe in PostgreSQL JSONB, which reorders object keys).
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

    def _renewed(self) -> StandingState:
        """This state made ready to be changed in place, as ``_owned_copy`` makes a copy ready,
        but without copying the tables: its tables forget what they noted and what is open is
        carried from here. For a caller that never looks at the state before again
        (``standing.advance``): a copy costs every record of the history."""
        for name in TABLES:
            table = getattr(self, name)
            if isinstance(table, Table):
                table.touched, table.popped, table.appended = {}, set(), {}
            else:
                setattr(self, name, Table(table))
        self.derived_from = self.version
        self.open_base, self.open_items = self.open_items, None
        return self

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


def held_undecided(v: ViolationRecord, by: Collection[str | None]) -> bool:
    """Whether ``v`` is held by one of the terminations ``by`` and still waits for its
    decision: neither dismissed nor decided since."""
    return v.held_by in by and not (v.dismissed or v.decision_event_ids)
