"""What every decision of the policy is built with: the ``Context`` (now, actor, ids), the
``ViolationReport`` as the policy receives it, a category's rule and severity, and the ``Decider``,
which gives every event of a decision the same metadata, statement of reasons and notice.

Pure, as the whole policy is (``enforcement.policy``): nothing here reads a clock, a database or
the network.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from enforcement.errors import ValidationFailed
from enforcement.policy_file import SEVERITY_RANK, CategoryRule, Policy, ThrottleRule
from events import NewEvent, RecordedEvent
from events.fastjson import copy_json
from events.timefmt import format_time, parse_time, to_utc
from events.types import new_event_id
from projections import aup_events as ev
from projections.durations import duration_text
from projections.lookback import METADATA_KEY as LOOKBACK_KEY
from projections.reasons import percent, statement_of_reasons, violation_fact
from projections.standing import (
    StandingState,
    SuspensionRecord,
    ViolationRecord,
    active_suspension,
    apply_all,
)

JSON = dict[str, Any]
IdFactory = Callable[[str], str]
POLICY_ACTOR = "policy"
SUSTAINED_ABUSE = "sustained_abuse"
ADULT_CONTENT = "unapproved_adult_content"
# Event ids are UUIDs (the store's column). With the production ``random_id`` they are the
# store's time-ordered ids; with an injected id factory they are derived from ``new_id("evt")``,
# so that one factory makes every output deterministic.
EVENT_ID_NAMESPACE = uuid.UUID("6f1c2a4e-8d3b-5e7f-9a0b-1c2d3e4f5a6b")


def random_id(prefix: str) -> str:
    """A fresh unique id such as ``vio_3f2a…``: the production ``new_id``."""
    return f"{prefix}_{uuid.uuid4().hex}"


@dataclass(frozen=True, slots=True)
class Context:
    """Who asks, when, and how new things are named. ``now`` is the only clock the policy sees."""

    now: datetime
    actor: str
    correlation_id: str
    new_id: IdFactory = random_id
    source: str = "api"
    causation_id: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "now", to_utc(self.now))

    def event_id(self) -> str:
        """A new event id (a UUID), deterministic when ``new_id`` is.

        With the production factory itself (``random_id``, not a wrapper of it) a time-ordered
        one (``events.new_event_id``): ids made later sort later, so the log's unique index on
        ``event_id`` grows at its right edge instead of taking a random page per event
        (``benchmarks/bench_violation_pages.py`` measures the difference)."""
        if self.new_id is random_id:
            return new_event_id()
        return str(uuid.uuid5(EVENT_ID_NAMESPACE, self.new_id("evt")))


@dataclass(frozen=True, slots=True)
class ViolationReport:
    """A reported violation as the policy receives it (validated at the edge)."""

    category: str
    occurred_at: datetime
    severity: str | None = None
    key_id: str | None = None
    source: str | None = None
    detection: str = "automated"
    evidence_ref: str | None = None
    description: str | None = None
    abuse_report_id: str | None = None


def category_rule(policy: Policy, category: str) -> CategoryRule:
    """The rule for ``category``; an unknown one is ``ValidationFailed`` listing the allowed."""
    try:
        return policy.categories[category]
    except KeyError:
        allowed = sorted(policy.categories)
        raise ValidationFailed(
            f"unknown category {category!r}",
            code="unknown_category",
            details=[{"field": "category", "allowed": allowed}],
        ) from None


def effective_severity(policy: Policy, category: str, reported: str | None) -> str:
    """The reported severity raised to the category's floor; absent, the category's default."""
    rule = category_rule(policy, category)
    if reported is None:
        return rule.default_severity
    if reported not in SEVERITY_RANK:
        raise ValidationFailed(
            f"unknown severity {reported!r}",
            details=[{"field": "severity", "allowed": list(SEVERITY_RANK)}],
        )
    return max(reported, rule.floor, key=SEVERITY_RANK.__getitem__)


def new_event(
    policy: Policy,
    ctx: Context,
    payload: Any,
    causation_id: str | None,
    *,
    actor: str | None = None,
    occurred_at: datetime | None = None,
) -> NewEvent:
    """``payload`` as a new event with the metadata every event carries (``policy_version``,
    ``strike_lookback`` (``projections.lookback``), ``actor`` (default: the context's),
    ``causation_id``, ``correlation_id``, ``source``)."""
    metadata = {
        "policy_version": policy.version,
        LOOKBACK_KEY: duration_text(policy.strike_lookback),
        "actor": actor or ctx.actor,
        "causation_id": causation_id,
        "correlation_id": ctx.correlation_id,
        "source": ctx.source,
    }
    return ev.CODEC.encode(
        payload, occurred_at=occurred_at or ctx.now, metadata=metadata, event_id=ctx.event_id()
    )


class Decider:
    """Builds the events of one decision: metadata, statements of reasons, notices.

    Shared by every decision module (the ladder in ``enforcement.policy``, appeals, operator
    commands) so that all events carry the same metadata and statements of reasons.
    """

    def __init__(
        self,
        policy: Policy,
        state: StandingState,
        ctx: Context,
        violations: Sequence[ViolationRecord],
        *,
        automated: bool,
        extra_facts: Sequence[JSON] = (),
        sections: Sequence[int] = (),
    ) -> None:
        self.policy, self.state, self.ctx = policy, state, ctx
        self.violations = list(violations)
        self.violation_ids = [v.violation_id for v in violations]
        self.automated = automated
        self.extra_facts = list(extra_facts)
        # AUP sections cited besides the violations' own (an operator's decision cites §6).
        self.sections = list(sections)
        self.events: list[NewEvent] = []

    def build(
        self,
        payload: Any,
        causation_id: str | None,
        *,
        actor: str | None = None,
        occurred_at: datetime | None = None,
    ) -> NewEvent:
        default_actor = POLICY_ACTOR if self.automated else self.ctx.actor
        return new_event(
            self.policy,
            self.ctx,
            payload,
            causation_id,
            actor=actor or default_actor,
            occurred_at=occurred_at,
        )

    def emit(self, *events: NewEvent) -> None:
        self.events.extend(events)

    def at(self, span: timedelta) -> str:
        return format_time(self.ctx.now + span)

    def reasons(self, decision: str, *, final: bool = False, redress: str | None = None) -> JSON:
        """The statement of reasons. An appeal may target the decision, unless ``final`` (an
        appeal's own outcome) or ``redress`` is given: what to do instead, for another record
        that an appeal cannot target (``DECISION_TYPES`` are those it can)."""
        rules = [self.policy.categories.get(v.category) for v in self.violations]
        facts = [
            violation_fact(v.violation_id, v.category, v.severity, v.occurred_at, v.description)
            for v in self.violations
        ]
        return statement_of_reasons(
            sections=[*(s for r in rules if r is not None for s in r.sections), *self.sections],
            categories=[v.category for v in self.violations],
            decision=decision,
            facts=facts + self.extra_facts,
            automated_detection=any(v.detection == "automated" for v in self.violations),
            automated_decision=self.automated,
            policy_version=self.policy.version,
            decided_at=self.ctx.now,
            appeal_window=None if final or redress is not None else self.policy.appeal_window,
            redress=redress,
        )

    def notice(self, kind: str, decision: NewEvent, deadline: str | None = None) -> NewEvent:
        sor = copy_json(decision.data["statement_of_reasons"])
        payload = ev.NoticeIssued(
            self.ctx.new_id("ntc"), kind, decision.event_id, list(self.violation_ids), sor, deadline
        )
        return self.build(payload, decision.event_id)

    def terminate(self, reason: str, text: str, cause: str | None) -> NewEvent:
        payload = ev.AccountTerminated(reason, self.reasons(text), list(self.violation_ids))
        return self.build(payload, cause)

    def covering(self, span: timedelta | None) -> SuspensionRecord | None:
        """The suspension in force that lasts at least ``span`` from now (None: indefinitely),
        which a suspension for ``span`` would not replace."""
        until = None if span is None else self.ctx.now + span
        current = active_suspension(self.state, self.ctx.now)
        if current is not None and (
            current.until is None or (until is not None and until <= parse_time(current.until))
        ):
            return current
        return None

    def suspend(self, span: timedelta | None, reason: str, cause: str | None) -> None:
        """Suspend and notify. When a suspension already in force lasts at least as long
        (``covering``), this one is recorded held behind it (``AccountSuspended.held_by``): it
        is the decision on these violations, and takes over if that one is overturned."""
        covering = self.covering(span)
        until = None if span is None else self.ctx.now + span
        when = "indefinitely, pending review" if until is None else f"until {format_time(until)}"
        text = f"The account is suspended {when}."
        if covering is not None:
            text = (
                f"The account is already suspended {lasting(covering)} (suspension "
                f"{covering.suspension_id}). These violations call for a suspension {when}, "
                "which takes effect only if that suspension is overturned on appeal."
            )
        payload = ev.AccountSuspended(
            self.ctx.new_id("sus"),
            None if until is None else format_time(until),
            reason,
            self.reasons(text),
            list(self.violation_ids),
            None if covering is None else covering.suspension_id,
        )
        suspension = self.build(payload, cause)
        self.emit(suspension, self.notice("suspension", suspension))

    def throttle(self, rule: ThrottleRule, reason: str, cause: str | None) -> NewEvent:
        expires = self.at(rule.duration)
        text = (
            f"Every API key of the account is throttled to {percent(rule.factor)} of its limits "
            f"until {expires}."
        )
        payload = ev.ThrottleApplied(
            self.ctx.new_id("thr"),
            None,
            rule.factor,
            expires,
            reason,
            self.reasons(text),
            list(self.violation_ids),
        )
        return self.build(payload, cause)

    def remediation(self, cause: str | None) -> NewEvent:
        due = self.at(self.policy.remediation_window)
        text = f"Remedy the violation and confirm it by {due}; otherwise the account is suspended."
        payload = ev.RemediationRequested(
            self.ctx.new_id("rem"), list(self.violation_ids), due, self.reasons(text)
        )
        return self.build(payload, cause)


def prior_strike_fact(v: ViolationRecord) -> JSON:
    """A prior strike as a fact of the decision it led to, marked ``prior_strike``."""
    fact = violation_fact(v.violation_id, v.category, v.severity, v.occurred_at, v.description)
    return {**fact, "prior_strike": True}


def lasting(suspension: SuspensionRecord) -> str:
    """How long ``suspension`` lasts, for a statement: "indefinitely" or "until <time>"."""
    return "indefinitely" if suspension.until is None else f"until {suspension.until}"


def as_recorded(
    event: RecordedEvent | NewEvent, account_id: str, version: int, recorded_at: datetime
) -> RecordedEvent:
    """``event`` as the account's ``version``, recorded at ``recorded_at`` (a recorded one keeps
    its position): a decided event as the fold will read it, before the store records it."""
    return RecordedEvent(
        position=event.position if isinstance(event, RecordedEvent) else 0,
        event_id=event.event_id,
        account_id=account_id,
        version=version,
        type=event.type,
        schema_version=event.schema_version,
        data=event.data,
        metadata=event.metadata,
        occurred_at=to_utc(event.occurred_at),
        recorded_at=to_utc(recorded_at),
        prev_hash="",
        hash="",
    )


def with_decided(
    state: StandingState, events: Sequence[NewEvent | RecordedEvent], now: datetime
) -> StandingState:
    """``state`` after ``events``, decided at ``now`` and not yet recorded: what a decision
    that follows them in the same command decides on."""
    first = state.version + 1
    return apply_all(
        state, [as_recorded(e, state.account_id, first + i, now) for i, e in enumerate(events)]
    )
