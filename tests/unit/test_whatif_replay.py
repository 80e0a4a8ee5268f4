"""``enforcement.whatif.replay_account`` on a long history: its cost grows with the history, not
with its square (no copy of the simulated state, nor of the rest of the log, per violation)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import test_policy
from test_history import table_copies
from test_policy import P, t

from enforcement import operator_decisions as ops
from enforcement import whatif
from enforcement.decider import as_recorded
from enforcement.policy import (
    DEFAULT_POLICY,
    Context,
    ViolationReport,
    decide_remediation_expired,
    decide_violation,
)
from enforcement.policy_file import policy_from_mapping
from enforcement.whatif import replay_account
from events import NewEvent, RecordedEvent
from events.timefmt import parse_time
from projections import aup_events as ev
from projections.standing import StandingState, advance_all, apply_all

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def recorded_log(findings: int) -> list[RecordedEvent]:
    """Detector findings the shipped policy decides (a warning and a remediation each) and an
    operator dismisses an hour later."""
    state, log = StandingState.empty("acct_1"), []
    serial = itertools.count(1)

    def record(events: list[NewEvent], at: datetime) -> None:
        nonlocal state
        recorded = [
            as_recorded(e, "acct_1", state.version + i, at) for i, e in enumerate(events, 1)
        ]
        state = apply_all(state, recorded)
        log.extend(recorded)

    for i in range(findings):
        at = T0 + timedelta(hours=2 * i)
        ctx = Context(at, "reporter", f"cor_{i}", new_id=lambda p: f"{p}_{next(serial)}")
        decided = decide_violation(DEFAULT_POLICY, state, ViolationReport("spam", at), ctx)
        record(decided, at)
        later = at + timedelta(hours=1)
        dismiss = ops.DismissViolation(decided[0].data["violation_id"], "false positive")
        record(ops.decide(DEFAULT_POLICY, state, dismiss, Context(later, "operator", "d")), later)
    return log


class CountingLog(list[RecordedEvent]):
    """A log that counts the events read from it (one by one or in slices)."""

    read = 0

    def __getitem__(self, key: Any) -> Any:
        got = super().__getitem__(key)
        self.read += len(got) if isinstance(key, slice) else 1
        return got


def test_replaying_a_long_history_copies_neither_the_state_nor_the_log_per_violation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A 100,000-event account: each violation copied the simulated state (every record so far)
    and the rest of the log (to find the decisions recorded with it): n² over the history. Nor
    is an event applied to the simulated state more than once."""
    log = CountingLog(recorded_log(400))
    applied: list[int] = []

    def counting(state: StandingState, events: list[RecordedEvent]) -> StandingState:
        applied.append(len(events))
        return advance_all(state, events)

    monkeypatch.setattr(whatif, "advance_all", counting)
    with table_copies() as copied:
        result = replay_account(DEFAULT_POLICY, "acct_1", log)
    assert result.violations == 400
    assert result.differences == []  # the shipped policy decides as it did
    assert copied == [0]
    assert log.read <= 3 * len(log)
    assert sum(applied) <= len(log)


class Later:
    """An account whose store's clock reads each commit's ``recorded_at`` ``latency`` after the
    policy decided it (at the context's ``now``), as ``EventStore.append`` does."""

    def __init__(self) -> None:
        self.state, self.log = StandingState.empty("acct_1"), list[RecordedEvent]()
        self.serial = itertools.count(1)

    def ctx(self, now: datetime) -> Context:
        return Context(
            now, "reporter", f"req_{len(self.log)}", lambda p: f"{p}_{next(self.serial)}"
        )

    def record(self, events: list[NewEvent], recorded_at: datetime) -> None:
        recorded = [
            as_recorded(e, "acct_1", self.state.version + i, recorded_at)
            for i, e in enumerate(events, 1)
        ]
        self.state = apply_all(self.state, recorded)
        self.log.extend(recorded)

    def report(self, now: datetime, latency: timedelta) -> None:
        decided = decide_violation(
            DEFAULT_POLICY, self.state, ViolationReport("spam", now), self.ctx(now)
        )
        self.record(decided, now + latency)


MS = timedelta(milliseconds=1)


def test_a_violation_is_decided_again_when_the_policy_decided_it_not_when_it_was_recorded() -> None:
    """The first strike runs out a millisecond after the policy decided the second violation (a
    throttle, as a second strike), and before the store recorded it: decided again at its
    ``recorded_at``, it was a first strike (a warning), a difference the same policy made up."""
    account = Later()
    account.report(T0, timedelta(0))
    now = T0 + DEFAULT_POLICY.strike_lookback - MS
    account.report(now, 2 * MS)
    assert any(e.type == "ThrottleApplied" for e in account.log)

    result = replay_account(DEFAULT_POLICY, "acct_1", account.log)
    assert result.violations == 2
    assert result.differences == []


def test_a_missed_remediation_is_decided_again_when_the_worker_decided_it() -> None:
    """Two remediations due at one instant, expired by the worker at it in two commits, the
    second recorded a millisecond later: its 7 days were held behind the first's (as long, not
    longer). Decided again at its ``recorded_at`` they ran a millisecond longer and replaced the
    first: ``harsher`` under the very policy that recorded it."""
    account = Later()
    account.report(T0, timedelta(0))
    account.report(T0, timedelta(0))
    due = T0 + DEFAULT_POLICY.remediation_window
    for latency, remediation_id in enumerate(sorted(account.state.remediations)):
        ctx = account.ctx(due)
        decided = decide_remediation_expired(DEFAULT_POLICY, account.state, remediation_id, ctx)
        account.record(decided, due + latency * MS)
    held = [e for e in account.log if e.type == "AccountSuspended" and e.data["held_by"]]
    assert len(held) == 1

    result = replay_account(DEFAULT_POLICY, "acct_1", account.log)
    assert result.differences == []


def test_a_simulated_remediation_due_between_a_decision_and_its_record_expires_after_it() -> None:
    """A policy with a shorter remediation window makes the first violation's remediation due a
    millisecond after the policy decided a high-severity one, and before the store recorded it:
    at that due time it expires (its completion, later, is refused), and its suspension is held
    behind the indefinite one decided a millisecond before, whatever the store's latency."""
    shorter = replace(DEFAULT_POLICY, remediation_window=timedelta(days=2))
    decided = T0 + timedelta(days=2) - MS

    def replayed(latency: timedelta) -> list[tuple[str, Any, Any, str]]:
        account = Later()
        account.report(T0, timedelta(0))
        high = ViolationReport("spam", decided, severity="high")
        account.record(
            decide_violation(DEFAULT_POLICY, account.state, high, account.ctx(decided)),
            decided + latency,
        )
        (remediation_id,) = account.state.remediations
        later = T0 + timedelta(days=3)
        complete = ops.CompleteRemediation(remediation_id, "fixed")
        account.record(
            ops.decide(DEFAULT_POLICY, account.state, complete, account.ctx(later)), later
        )
        result = replay_account(shorter, "acct_1", account.log)
        return [(d.violation_id, d.recorded, d.simulated, d.change) for d in result.differences]

    assert replayed(2 * MS) == replayed(timedelta(0))


class FiniteLog(CountingLog):
    """A log that fails a replay stuck on one of its events (reading it over and over) rather
    than let it run for ever."""

    def __getitem__(self, key: Any) -> Any:
        got = super().__getitem__(key)
        assert self.read <= 3 * len(self), "the replay reads the log over and over"
        return got


def test_a_terminated_accounts_violation_and_missed_remediation_are_each_replayed_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a terminated account a violation is recorded with nothing decided on it, and a missed
    remediation with nothing but its expiry: the replay steps past each (one event, none recorded
    with it), and applies no event to the simulated state twice."""
    account = Later()
    account.report(T0, timedelta(0))  # a warning and a remediation
    (remediation_id,) = account.state.remediations
    at = T0 + timedelta(hours=1)
    csam = ViolationReport("csam", at)  # critical: terminated
    account.record(decide_violation(DEFAULT_POLICY, account.state, csam, account.ctx(at)), at)
    account.report(T0 + timedelta(hours=2), timedelta(0))
    due = T0 + DEFAULT_POLICY.remediation_window
    ctx = account.ctx(due)
    account.record(
        decide_remediation_expired(DEFAULT_POLICY, account.state, remediation_id, ctx), due
    )
    account.report(due + timedelta(hours=1), timedelta(0))
    assert [e.type for e in account.log[-3:]] == [
        "ViolationReported",
        "RemediationExpired",
        "ViolationReported",
    ]
    applied: list[str] = []

    def counting(state: StandingState, events: list[RecordedEvent]) -> StandingState:
        applied.extend(e.event_id for e in events)
        return advance_all(state, events)

    monkeypatch.setattr(whatif, "advance_all", counting)
    result = replay_account(DEFAULT_POLICY, "acct_1", FiniteLog(account.log))
    assert result.violations == 4
    assert result.differences == []
    assert len(applied) == len(set(applied))


def test_the_shipped_policy_decides_each_recorded_report_again_event_for_event(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every field of a recorded report (its key, source, detection, evidence, description and
    abuse report) and of its request (actor, correlation, cause, source) is decided again: the
    shipped policy's simulated events are the recorded ones, ids, data and metadata, for a
    violation, its notices and its missed remediation's suspension alike."""
    account = Later()
    report = ViolationReport(
        "spam",
        T0,
        severity="low",
        key_id="key_1",
        source="detector_7",
        detection="human_review",
        evidence_ref="ev_1",
        description="bulk mail",
        abuse_report_id="rep_1",
    )
    ctx = Context(T0, "moderator", "req_1", account.ctx(T0).new_id, "cli", "evt_cause")
    account.record(decide_violation(DEFAULT_POLICY, account.state, report, ctx), T0)
    (remediation_id,) = account.state.remediations
    due = T0 + DEFAULT_POLICY.remediation_window
    expired = Context(due, "worker", "req_2", account.ctx(due).new_id, "scheduler")
    account.record(
        decide_remediation_expired(DEFAULT_POLICY, account.state, remediation_id, expired), due
    )
    simulated: list[RecordedEvent] = []

    def keep(*args: Any) -> RecordedEvent:
        event = as_recorded(*args)
        simulated.append(event)
        return event

    monkeypatch.setattr(whatif, "as_recorded", keep)
    replay_account(DEFAULT_POLICY, "acct_1", account.log)

    def metadata(event: RecordedEvent) -> dict[str, Any]:
        # A simulated decision's cause is the made-up event id of the one that caused it: only
        # the causes from outside them are compared below.
        return {k: v for k, v in event.metadata.items() if k != "causation_id"}

    def seen(events: list[RecordedEvent]) -> list[tuple[Any, ...]]:
        return [
            (e.event_id, e.version, e.type, e.data, e.occurred_at, e.recorded_at, metadata(e))
            for e in events
        ]

    assert seen(simulated) == seen(account.log)
    # The causes from outside: the request's, and the remediation's request (the worker's).
    firsts = ("ViolationReported", "RemediationExpired")
    causes = [e.metadata["causation_id"] for e in simulated if e.type in firsts]
    assert causes == [e.metadata["causation_id"] for e in account.log if e.type in firsts]
    assert causes[0] == "evt_cause"


class Logged(test_policy.Account):
    """``test_policy.Account`` keeping its log, for a replay."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[RecordedEvent] = []

    def record(self, new_events: Sequence[NewEvent], at: datetime) -> list[RecordedEvent]:
        recorded = super().record(new_events, at)
        self.log += recorded
        return recorded


def _changes(
    account: Logged, since: datetime | None = None, **keys: Any
) -> dict[str, tuple[str, str, str]]:
    result = replay_account(policy_from_mapping(keys), account.account_id, account.log, since)
    return {
        d.violation_id: (d.recorded.kind, d.simulated.kind, d.change) for d in result.differences
    }


def _held_by_an_operator_termination() -> tuple[Logged, str]:
    """Two spam reports held by an operator's termination, which an appeal reverses: a
    warning for the first, a throttle for the second (one prior strike), whose id it gives."""
    account = Logged()
    terminated = ops.decide(P, account.state, ops.Terminate("fraud"), account.ctx(t(0), "op"))
    account.record(terminated, t(0))
    account.report("spam", t(1))
    second = account.report("spam", t(1.5))[0].data["violation_id"]
    decided = test_policy._overturn(account, terminated[0].event_id, t(2))
    assert "ThrottleApplied" in test_policy.types(decided)
    return account, second


def test_the_decisions_a_reversal_took_on_held_violations_are_theirs_and_decided_again() -> None:
    account, second = _held_by_an_operator_termination()
    assert _changes(account) == {}  # as recorded: the warning and the throttle are theirs
    # Terminating at one prior strike: the second spam, decided again at the overturn on the
    # simulated account (terminated by the operator as recorded), terminates.
    assert _changes(account, termination_after_strikes=1) == {
        second: ("throttle", "termination", "harsher")
    }


def test_a_violation_held_only_in_the_record_is_compared_with_its_decision_at_the_reversal() -> (
    None
):
    """Four spam reports, the fourth terminating (three prior strikes); a fifth held by that
    termination, which an appeal reverses: the fifth terminates again. With five strikes to
    terminate, the simulated account is never terminated and the fifth is suspended when it
    is reported: milder than the termination recorded for it, not "more"."""
    account = Logged()
    for day in range(4):
        decided = account.report("spam", t(day))
    termination = test_policy.of_type(decided, "AccountTerminated")
    fifth = account.report("spam", t(4))[0].data["violation_id"]
    again = test_policy._overturn(account, termination, t(5))
    assert test_policy.of_type(again, "AccountTerminated").data["violation_ids"] == [fifth]
    changes = _changes(account, termination_after_strikes=5)
    assert changes[fifth] == ("termination", "suspension", "milder")


def test_each_held_violation_decided_again_takes_its_own_recorded_ids() -> None:
    """Two violations held by an operator's termination, decided at its reversal: a warning
    and remediation A for the first, a throttle and remediation B for the second. The account
    completes A; B expires and suspends. A policy that suspends the first (high) asks for no
    remediation there: the second's simulated remediation is still B, which its recorded
    expiry closes as recorded, not A, which the recorded completion would close."""
    account = Logged()
    terminated = ops.decide(P, account.state, ops.Terminate("fraud"), account.ctx(t(0), "op"))
    account.record(terminated, t(0))
    first = account.report("disinformation", t(1))[0].data["violation_id"]
    second = account.report("spam", t(1.5))[0].data["violation_id"]
    decided = test_policy._overturn(account, terminated[0].event_id, t(2))
    requests = [e for e in decided if e.type == "RemediationRequested"]
    assert [r.data["violation_ids"] for r in requests] == [[first], [second]]
    complete = ops.CompleteRemediation(requests[0].data["remediation_id"], "fixed")
    account.record(ops.decide(P, account.state, complete, account.ctx(t(3), "op")), t(3))
    due = parse_time(requests[1].data["due_at"])
    b = requests[1].data["remediation_id"]
    expired = decide_remediation_expired(P, account.state, b, account.ctx(due, "scheduler"))
    assert "AccountSuspended" in test_policy.types(expired)
    account.record(expired, due)
    assert _changes(account) == {}
    changes = _changes(account, categories={"disinformation": {"default_severity": "high"}})
    assert set(changes) == {first}


def test_the_simulated_account_after_a_reversal_holds_what_it_decided_on_held_violations() -> None:
    """A spam report after the overturn: suspended as recorded (two prior strikes), where the
    overturn and its decisions are replayed as recorded; held where the other policy's
    termination at the overturn is; terminated where only that report is decided again."""
    account, second = _held_by_an_operator_termination()
    later = account.report("spam", t(3))[0].data["violation_id"]
    assert _changes(account) == {}
    assert _changes(account, termination_after_strikes=1) == {
        second: ("throttle", "termination", "harsher"),
        later: ("suspension", "none", "fewer"),
    }
    assert _changes(account, since=t(2.5), termination_after_strikes=1) == {
        later: ("suspension", "termination", "harsher")
    }


def test_the_decisions_a_reversal_took_on_held_violations_are_not_the_ones_decided_again() -> None:
    """Four spam reports held by an operator's termination, which an appeal reverses: the
    fourth terminates (three prior strikes). With five strikes to terminate, the other policy
    decides them again there on the account as it was before the recorded decisions: the
    same for the first three, and for the fourth a suspension held behind the third's,
    which lasts as long (no restriction)."""
    account = Logged()
    terminated = ops.decide(P, account.state, ops.Terminate("fraud"), account.ctx(t(0), "op"))
    account.record(terminated, t(0))
    for hours in range(4):
        fourth = account.report("spam", t(1 + hours / 24))[0].data["violation_id"]
    decided = test_policy._overturn(account, terminated[0].event_id, t(2))
    assert test_policy.of_type(decided, "AccountTerminated").data["violation_ids"] == [fourth]
    assert _changes(account, termination_after_strikes=5) == {
        fourth: ("termination", "none", "fewer")
    }


def test_a_remediation_a_reversal_requested_expires_at_the_other_policys_due_time() -> None:
    """The overturn's warning on the first held spam requests a remediation, completed five
    days later, in time as recorded. With a three-day window, the other policy's request is
    due before that completion: it expires there, and the missed remediation suspends."""
    account = _held_by_an_operator_termination()[0]
    requested = [e for e in account.log if e.type == "RemediationRequested"]
    first = requested[0].data["violation_ids"][0]
    account.given(ev.RemediationCompleted(requested[0].data["remediation_id"], "fixed"), t(7))
    assert _changes(account) == {}
    assert _changes(account, remediation_window="3d") == {
        first: ("warning", "suspension", "harsher")
    }
