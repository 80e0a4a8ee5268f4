"""An overturned termination reinstates from the termination only: a suspension that is still
in force (decided separately) stays in force."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from enforcement.policy import (
    DEFAULT_POLICY,
    Context,
    ViolationReport,
    decide_appeal,
    decide_appeal_filing,
    decide_violation,
)
from events import NewEvent, RecordedEvent
from projections.standing import StandingState, apply_all, view

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def _record(state: StandingState, new: list[NewEvent], at: datetime) -> list[RecordedEvent]:
    return [
        RecordedEvent(
            position=state.version + i,
            event_id=e.event_id,
            account_id=state.account_id,
            version=state.version + i,
            type=e.type,
            schema_version=e.schema_version,
            data=e.data,
            metadata=e.metadata,
            occurred_at=e.occurred_at,
            recorded_at=at,
            prev_hash="0" * 64,
            hash="0" * 64,
        )
        for i, e in enumerate(new, start=1)
    ]


def _step(state: StandingState, new: list[NewEvent], at: datetime) -> StandingState:
    return apply_all(state, _record(state, new, at))


def _ctx(at: datetime) -> Context:
    return Context(now=at, actor="operator:test", correlation_id="req")


def test_overturning_a_termination_keeps_a_separate_suspension_in_force() -> None:
    state = StandingState.empty("acct")
    t1 = T0
    state = _step(
        state,
        decide_violation(DEFAULT_POLICY, state, ViolationReport("phishing", t1), _ctx(t1)),
        t1,
    )
    t2 = T0 + timedelta(hours=1)
    decided = decide_violation(DEFAULT_POLICY, state, ViolationReport("csam", t2), _ctx(t2))
    termination = next(e for e in decided if e.type == "AccountTerminated")
    state = _step(state, decided, t2)
    t3 = T0 + timedelta(hours=2)
    state = _step(
        state, decide_appeal_filing(DEFAULT_POLICY, state, termination.event_id, "", _ctx(t3)), t3
    )
    appeal_id = next(iter(state.appeals))
    t4 = T0 + timedelta(hours=3)
    state = _step(
        state, decide_appeal(DEFAULT_POLICY, state, appeal_id, "overturned", "", _ctx(t4)), t4
    )

    standing = view(state, t4, DEFAULT_POLICY.strike_lookback)
    assert not standing.terminated
    assert standing.suspension is not None  # the high violation's 7-day suspension still holds
    assert standing.status == "suspended"
