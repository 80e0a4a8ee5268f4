"""The use cases through ``EnforcementService`` on a real database (SQLite and PostgreSQL), with a
fake clock: what each one records, what it refuses (writing nothing), and that the stored standing
stays the fold of the log after every story."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

import pytest
from sqlalchemy.exc import OperationalError
from test_service_support import (
    OPERATOR,
    REPORTER,
    FakeClock,
    assert_account_consistent,
    events_of,
    fail_appending,
    fingerprint,
    open_system,
    report,
    types_of,
)

from enforcement import operator_decisions as ops
from enforcement.bootstrap import Container
from enforcement.errors import Conflict, InvalidTransition, NotFound, ValidationFailed
from enforcement.gatekeeping import GATE_ACTOR
from enforcement.policy import ViolationReport
from enforcement.service import Fact, Outcome
from events import AppendOutcomeUnknown, ConcurrencyError, IdempotencyConflict, StoreError
from projections import aup_events as ev

DAY = timedelta(days=1)
T = TypeVar("T")


def command(system: Container, account: str, cmd: ops.Command) -> Outcome:
    return system.service.operator(account, cmd, OPERATOR)


def refused(
    system: Container, account: str, error: type[Exception], action: Callable[[], object]
) -> Exception:
    """Run ``action``, expect ``error``, and check that nothing was written."""
    before = system.store.head(account)
    with pytest.raises(error) as caught:
        action()
    assert system.store.head(account) == before
    return caught.value


def decision(outcome: Outcome, event_type: str) -> str:
    [event] = [e for e in outcome.events if e.type == event_type]
    return event.event_id


# --- reporting --------------------------------------------------------------------------------


def test_a_reported_violation_is_decided_at_once_and_a_key_replays_the_first_result(
    system: Container,
) -> None:
    body = {"account_id": "acct_1", "category": "spam"}
    violation = ViolationReport("spam", system.clock())

    first = system.service.report_violation(
        "acct_1", violation, REPORTER, "key-1", fingerprint(**body)
    )

    assert types_of(first.events) == ["ViolationReported", "NoticeIssued", "RemediationRequested"]
    assert not first.replayed
    assert {e.metadata["source"] for e in first.events} == {"api"}  # the actor's, by default
    assert first.standing.status == "remediation_due"
    assert first.standing.strikes == 1
    assert first.standing.version == 3
    notice = first.events[1]
    assert notice.data["kind"] == "warning"
    assert notice.data["decision_event_id"] == first.events[2].event_id

    again = system.service.report_violation(
        "acct_1", violation, REPORTER, "key-1", fingerprint(**body)
    )
    assert again.replayed
    assert [e.event_id for e in again.events] == [e.event_id for e in first.events]
    assert again.standing.version == 3

    other = {**body, "severity": "high"}
    refused(
        system,
        "acct_1",
        IdempotencyConflict,
        lambda: system.service.report_violation(
            "acct_1",
            ViolationReport("spam", system.clock(), "high"),
            REPORTER,
            "key-1",
            fingerprint(**other),
        ),
    )
    assert len(events_of(system, "acct_1")) == 3
    assert_account_consistent(system, "acct_1")


def test_the_standing_and_history_as_of_an_instant_are_what_was_recorded_up_to_it(
    system: Container, clock: FakeClock
) -> None:
    first = report(system, "acct_asof", "spam")
    clock.advance(DAY)
    report(system, "acct_asof", "spam")
    then = first.events[-1].recorded_at

    assert system.service.standing("acct_asof", then).to_json() == first.standing.to_json()
    assert system.service.standing("acct_asof").version == len(events_of(system, "acct_asof"))
    assert [e.event.version for e in system.service.history("acct_asof", then)] == [1, 2, 3]
    assert len(list(system.service.history("acct_asof"))) > 3


def test_a_key_replays_its_first_result_without_deciding_again(system: Container) -> None:
    """The gate's sustained-abuse report is decided only while it is due (no sustained-abuse
    throttle in force). Asked again under its key once its throttle is in force, the service
    answers the first result from the key's record: deciding again would now record nothing."""
    violation = ViolationReport("sustained_abuse", system.clock(), source=ev.GATE_SOURCE)
    body = fingerprint(account="acct_g", category="sustained_abuse", bucket=1)

    def report_again() -> Outcome:
        return system.service.report_gate_sustained_abuse(
            "acct_g", violation, 100, "gate-key-1", body, GATE_ACTOR
        )

    first = report_again()
    assert types_of(first.events) == ["ViolationReported", "ThrottleApplied", "NoticeIssued"]
    assert not first.replayed

    again = report_again()
    assert again.replayed
    assert [e.event_id for e in again.events] == [e.event_id for e in first.events]
    assert len(events_of(system, "acct_g")) == 3


def test_a_key_recorded_by_another_process_meanwhile_replays_its_result(
    system: Container, database_url: str, clock: FakeClock
) -> None:
    """Two processes get the same request (a retry sent to another instance): the second looks
    the key up before the first records it, then loses the append to it. It answers the
    first's events as a replay (HTTP 200), not as its own new result (201)."""
    body = {"account_id": "acct_r", "category": "spam"}
    violation = ViolationReport("spam", clock())
    key, print_ = "key-race", fingerprint(**body)
    with open_system(database_url, clock) as other_process:
        winner: list[Outcome] = []
        look_up = system.store.recorded_for_key

        def look_up_then_lose_the_race(*args: Any) -> Any:
            found = look_up(*args)  # nothing yet…
            winner.append(  # …and the other process records the request meanwhile
                other_process.service.report_violation("acct_r", violation, REPORTER, key, print_)
            )
            return found

        system.store.recorded_for_key = look_up_then_lose_the_race  # type: ignore[method-assign]
        loser = system.service.report_violation("acct_r", violation, REPORTER, key, print_)

    [first] = winner
    assert not first.replayed and loser.replayed
    assert [e.event_id for e in loser.events] == [e.event_id for e in first.events]
    assert loser.standing.version == 3
    assert len(events_of(system, "acct_r")) == 3
    assert_account_consistent(system, "acct_r")


def test_a_command_refused_on_what_its_keys_first_request_did_answers_that_requests_result(
    system: Container, database_url: str, clock: FakeClock
) -> None:
    """A terminate sent again under its key looks the key up before the first one records it,
    then decides on the state the first left, where a terminate is refused: its answer is the
    first's result, replayed. A terminate under another key is refused (nothing to replay)."""
    key, print_ = "key-term", fingerprint(account_id="acct_k", reason="fraud")
    with open_system(database_url, clock) as other_process:
        winner: list[Outcome] = []
        look_up = system.store.recorded_for_key

        def look_up_then_lose_the_race(*args: Any) -> Any:
            found = look_up(*args)
            if not winner:  # nothing yet, and the other process records the command meanwhile
                winner.append(
                    other_process.service.operator(
                        "acct_k",
                        ops.Terminate("fraud"),
                        OPERATOR,
                        idempotency_key=key,
                        fingerprint=print_,
                    )
                )
            return found

        system.store.recorded_for_key = look_up_then_lose_the_race  # type: ignore[method-assign]
        loser = system.service.operator(
            "acct_k", ops.Terminate("fraud"), OPERATOR, idempotency_key=key, fingerprint=print_
        )

    [first] = winner
    assert loser.replayed and [e.event_id for e in loser.events] == [
        e.event_id for e in first.events
    ]
    refused(
        system,
        "acct_k",
        InvalidTransition,
        lambda: system.service.operator(
            "acct_k", ops.Terminate("again"), OPERATOR, idempotency_key="key-2", fingerprint="f2"
        ),
    )


def test_a_batch_reports_for_many_accounts_and_a_bad_item_stands_alone(system: Container) -> None:
    now = system.clock()
    spam = ViolationReport("spam", now)
    items = [
        ("acct_b0", spam, "batch-0", fingerprint(account_id="acct_b0", category="spam")),
        ("acct_b1", ViolationReport("no_such_category", now), None, None),
        ("acct_b2", ViolationReport("phishing", now, "high"), None, None),
        ("acct_b3", ViolationReport("spam", now, "enormous"), None, None),
        ("acct_b4", ViolationReport("csam", now), None, None),
        ("acct_b0", spam, "batch-0", fingerprint(account_id="acct_b0", category="spam")),
        ("acct_b5", spam, "batch-0", fingerprint(account_id="acct_b5", category="spam")),
        ("acct_b6", ViolationReport("spam", now, detection="telepathy"), None, None),
        ("acct_b0", spam, None, None),
    ]

    results = system.service.report_batch(items, REPORTER)

    assert [r.status for r in results] == [201, 422, 201, 422, 201, 200, 409, 422, 201]
    assert results[1].error is not None and results[1].error.code == "unknown_category"
    assert isinstance(results[3].error, ValidationFailed)
    assert isinstance(results[6].error, IdempotencyConflict)
    assert results[5].outcome is not None and results[0].outcome is not None
    assert [e.event_id for e in results[5].outcome.events] == [
        e.event_id for e in results[0].outcome.events
    ]
    # The second report on acct_b0 was its second strike: the ladder ran per item, in order.
    assert results[8].outcome is not None
    assert "ThrottleApplied" in types_of(results[8].outcome.events)
    assert results[2].outcome is not None and results[2].outcome.standing.status == "suspended"
    assert results[4].outcome is not None and results[4].outcome.standing.terminated
    for bad in ("acct_b1", "acct_b3", "acct_b5", "acct_b6"):
        assert events_of(system, bad) == []
    for account in ("acct_b0", "acct_b2", "acct_b4"):
        assert_account_consistent(system, account)
    assert len(events_of(system, "acct_b0")) == 3 + 4


def test_a_confirmed_abuse_report_becomes_a_violation_and_a_rejected_one_no_strike(
    system: Container, clock: FakeClock
) -> None:
    service = system.service
    filed = service.file_abuse_report(
        "acct_r", "phishing", "phishing mails", "victim@example.org", "s3://e/1", REPORTER
    )
    assert types_of(filed.events) == ["AbuseReportReceived"]
    assert filed.standing.open_abuse_reports == 1
    assert filed.standing.strikes == 0
    report_id = filed.events[0].data["report_id"]
    received_at = filed.events[0].occurred_at

    clock.advance(DAY)
    confirmed = service.triage_abuse_report("acct_r", report_id, "confirmed", None, OPERATOR)
    assert types_of(confirmed.events) == [
        "AbuseReportTriaged",
        "ViolationReported",
        "AccountSuspended",
        "NoticeIssued",
    ]
    reported = confirmed.events[1]
    assert reported.data["detection"] == "user_report"
    assert reported.data["abuse_report_id"] == report_id
    assert reported.occurred_at == received_at
    assert confirmed.events[0].data["violation_id"] == reported.data["violation_id"]
    assert confirmed.events[0].data["severity"] == "high"
    assert confirmed.standing.strikes == 1
    assert confirmed.standing.status == "suspended"
    assert confirmed.standing.open_abuse_reports == 0
    refused(
        system,
        "acct_r",
        InvalidTransition,
        lambda: service.triage_abuse_report("acct_r", report_id, "rejected", None, OPERATOR),
    )

    second = service.file_abuse_report("acct_r", "spam", "spam", None, None, REPORTER)
    second_id = second.events[0].data["report_id"]
    rejected = service.triage_abuse_report("acct_r", second_id, "rejected", None, OPERATOR)
    assert types_of(rejected.events) == ["AbuseReportTriaged"]
    assert rejected.standing.strikes == 1
    assert rejected.standing.open_abuse_reports == 0
    refused(
        system,
        "acct_r",
        NotFound,
        lambda: service.triage_abuse_report("acct_r", "rep_nope", "confirmed", None, OPERATOR),
    )
    refused(
        system,
        "acct_q",
        ValidationFailed,
        lambda: service.file_abuse_report("acct_q", "gossip", "x", None, None, REPORTER),
    )
    assert_account_consistent(system, "acct_r")


def test_a_dismissed_violation_no_longer_counts_and_closes_its_remediation(
    system: Container, clock: FakeClock
) -> None:
    first = report(system, "acct_d", "spam")
    violation_id = first.events[0].data["violation_id"]

    clock.advance(timedelta(hours=1))
    dismissed = command(system, "acct_d", ops.DismissViolation(violation_id, "false positive"))

    assert types_of(dismissed.events) == ["ViolationDismissed"]
    assert dismissed.standing.strikes == 0
    assert dismissed.standing.open_remediations == ()
    assert dismissed.standing.status == "good_standing"
    refused(
        system,
        "acct_d",
        InvalidTransition,
        lambda: command(system, "acct_d", ops.DismissViolation(violation_id, "again")),
    )
    refused(
        system,
        "acct_d",
        NotFound,
        lambda: command(system, "acct_d", ops.DismissViolation("vio_unknown", "x")),
    )
    # The next minor violation is a first-time one again: a warning, not a throttle.
    again = report(system, "acct_d", "spam")
    assert types_of(again.events) == ["ViolationReported", "NoticeIssued", "RemediationRequested"]
    assert_account_consistent(system, "acct_d")


# --- remediations -----------------------------------------------------------------------------


def test_a_completed_remediation_never_expires_and_a_missed_one_suspends(
    system: Container, clock: FakeClock
) -> None:
    service = system.service
    done = report(system, "acct_ok", "spam")
    done_id = done.standing.open_remediations[0].remediation_id
    missed = report(system, "acct_late", "spam")
    missed_id = missed.standing.open_remediations[0].remediation_id

    clock.advance(3 * DAY)
    completed = command(system, "acct_ok", ops.CompleteRemediation(done_id, "keys rotated"))
    assert types_of(completed.events) == ["RemediationCompleted"]
    assert completed.standing.open_remediations == ()
    assert completed.standing.status == "warned"
    early = service.expire_remediation("acct_late", missed_id, OPERATOR)
    assert early.events == []

    clock.advance(5 * DAY)
    assert service.expire_remediation("acct_ok", done_id, OPERATOR).events == []
    refused(
        system,
        "acct_ok",
        InvalidTransition,
        lambda: command(system, "acct_ok", ops.CompleteRemediation(done_id, "twice")),
    )
    expired = service.expire_remediation("acct_late", missed_id, OPERATOR)
    assert types_of(expired.events) == ["RemediationExpired", "AccountSuspended", "NoticeIssued"]
    suspension = expired.standing.suspension
    assert suspension is not None and suspension.until == clock() + 7 * DAY
    assert expired.standing.status == "suspended"
    # Idempotent for the scheduler: a second call records nothing.
    assert service.expire_remediation("acct_late", missed_id, OPERATOR).events == []
    refused(
        system,
        "acct_late",
        InvalidTransition,
        lambda: command(system, "acct_late", ops.CompleteRemediation(missed_id, "too late")),
    )
    refused(
        system,
        "acct_late",
        NotFound,
        lambda: service.expire_remediation("acct_late", "rem_unknown", OPERATOR),
    )
    assert_account_consistent(system, "acct_ok")
    assert_account_consistent(system, "acct_late")


def test_a_remediation_is_completed_before_its_due_time_or_not_at_all(
    system: Container, clock: FakeClock
) -> None:
    """POLICY.md: a remediation "not completed by its due time" expires and suspends. From its
    due time on (when the standing calls it overdue) a completion is refused, however late the
    scheduler comes to record the expiry; a microsecond before, it is accepted."""
    on_time = report(system, "acct_in_time", "spam").standing.open_remediations[0]
    late = report(system, "acct_overdue", "spam").standing.open_remediations[0]
    assert on_time.due_at == late.due_at == clock() + 7 * DAY

    clock.set(on_time.due_at - timedelta(microseconds=1))
    completed = command(system, "acct_in_time", ops.CompleteRemediation(on_time.remediation_id, ""))
    assert types_of(completed.events) == ["RemediationCompleted"]

    for moment in (late.due_at, late.due_at + timedelta(hours=5)):
        clock.set(moment)
        assert system.service.standing("acct_overdue").overdue_remediations == (late,)
        error = refused(
            system,
            "acct_overdue",
            InvalidTransition,
            lambda: command(
                system, "acct_overdue", ops.CompleteRemediation(late.remediation_id, "late")
            ),
        )
        assert getattr(error, "code", None) == "remediation_overdue"
    expired = system.service.expire_remediation("acct_overdue", late.remediation_id, OPERATOR)
    assert types_of(expired.events) == ["RemediationExpired", "AccountSuspended", "NoticeIssued"]
    assert expired.standing.status == "suspended"
    assert_account_consistent(system, "acct_in_time")
    assert_account_consistent(system, "acct_overdue")


# --- suspension, reinstatement, termination ---------------------------------------------------


def test_suspend_end_the_suspension_and_reinstate(system: Container, clock: FakeClock) -> None:
    service = system.service
    report(system, "acct_s", "spam")
    suspended = command(system, "acct_s", ops.Suspend("under review", until=clock() + 2 * DAY))
    assert types_of(suspended.events) == ["AccountSuspended", "NoticeIssued"]
    assert suspended.events[0].data["statement_of_reasons"]["automated_decision"] is False
    assert suspended.standing.status == "suspended"
    suspension_id = suspended.events[0].data["suspension_id"]

    assert service.end_suspension("acct_s", suspension_id, OPERATOR).events == []
    clock.advance(2 * DAY)
    ended = service.end_suspension("acct_s", suspension_id, OPERATOR)
    assert types_of(ended.events) == ["SuspensionEnded"]
    assert ended.standing.suspension is None
    assert service.end_suspension("acct_s", suspension_id, OPERATOR).events == []
    refused(
        system,
        "acct_s",
        InvalidTransition,
        lambda: command(system, "acct_s", ops.Reinstate("nothing to lift")),
    )

    quiet = command(system, "acct_s", ops.Suspend("pending review", notify=False))
    assert types_of(quiet.events) == ["AccountSuspended"]
    assert quiet.standing.suspension is not None and quiet.standing.suspension.until is None
    reinstated = command(system, "acct_s", ops.Reinstate("review done"))
    assert types_of(reinstated.events) == ["AccountReinstated", "NoticeIssued"]
    assert reinstated.standing.suspension is None
    assert reinstated.standing.status == "remediation_due"
    refused(
        system,
        "acct_s",
        ValidationFailed,
        lambda: command(system, "acct_s", ops.Suspend("past", until=clock() - DAY)),
    )
    assert_account_consistent(system, "acct_s")


def test_a_terminated_account_is_never_reinstated_by_a_plain_reinstate(
    system: Container, clock: FakeClock
) -> None:
    command(system, "acct_t", ops.Suspend("review"))
    terminated = command(system, "acct_t", ops.Terminate("fraud"))
    assert types_of(terminated.events) == ["AccountTerminated", "NoticeIssued"]
    assert terminated.standing.status == "terminated"

    error = refused(
        system, "acct_t", Conflict, lambda: command(system, "acct_t", ops.Reinstate("please"))
    )
    assert isinstance(error, InvalidTransition)
    for cmd in (
        ops.Terminate("again"),
        ops.Suspend("more"),
        ops.ApplyThrottle(0.5, "slow", expires_at=clock() + DAY),
    ):
        refused(system, "acct_t", InvalidTransition, lambda cmd=cmd: command(system, "acct_t", cmd))
    # A violation on a terminated account is recorded, and nothing else is decided.
    after = report(system, "acct_t", "csam")
    assert types_of(after.events) == ["ViolationReported"]
    assert after.standing.terminated

    silent = command(system, "acct_t2", ops.Terminate("fraud", notify=False))
    assert types_of(silent.events) == ["AccountTerminated"]
    assert_account_consistent(system, "acct_t")
    assert_account_consistent(system, "acct_t2")


# --- throttles, approvals, limits -------------------------------------------------------------


def test_apply_and_lift_a_throttle(system: Container, clock: FakeClock) -> None:
    applied = command(
        system,
        "acct_th",
        ops.ApplyThrottle(0.5, "bursty", key_id="key_7", expires_at=clock() + 2 * DAY),
    )
    assert types_of(applied.events) == ["ThrottleApplied", "NoticeIssued"]
    [throttle] = applied.standing.active_throttles
    assert (throttle.key_id, throttle.factor) == ("key_7", 0.5)
    assert applied.standing.status == "throttled"

    lifted = command(system, "acct_th", ops.LiftThrottle(throttle.throttle_id))
    assert types_of(lifted.events) == ["ThrottleLifted"]
    assert lifted.standing.active_throttles == ()
    assert lifted.standing.status == "good_standing"
    refused(
        system,
        "acct_th",
        InvalidTransition,
        lambda: command(system, "acct_th", ops.LiftThrottle(throttle.throttle_id)),
    )

    short = command(system, "acct_th", ops.ApplyThrottle(0.25, "x", expires_at=clock() + DAY))
    short_id = short.events[0].data["throttle_id"]
    clock.advance(2 * DAY)
    assert system.service.standing("acct_th").active_throttles == ()
    refused(
        system,
        "acct_th",
        InvalidTransition,
        lambda: command(system, "acct_th", ops.LiftThrottle(short_id)),
    )
    refused(
        system,
        "acct_th",
        ValidationFailed,
        lambda: command(system, "acct_th", ops.ApplyThrottle(0.0, "stop")),
    )
    refused(
        system,
        "acct_th",
        ValidationFailed,
        lambda: command(system, "acct_th", ops.ApplyThrottle(1.5, "faster")),
    )
    assert_account_consistent(system, "acct_th")


def test_adult_content_approval_dismisses_unapproved_adult_content(
    system: Container, clock: FakeClock
) -> None:
    approved = command(system, "acct_a", ops.SetAdultContentApproval(True, "verified platform"))
    assert types_of(approved.events) == ["AdultContentApprovalChanged"]
    assert approved.standing.adult_content_approved

    tolerated = report(system, "acct_a", "unapproved_adult_content")
    assert types_of(tolerated.events) == ["ViolationReported", "ViolationDismissed"]
    assert tolerated.events[1].data["reason"] == "adult_content_approved"
    assert tolerated.standing.strikes == 0
    assert tolerated.standing.status == "good_standing"

    command(system, "acct_a", ops.SetAdultContentApproval(False, "approval withdrawn"))
    counted = report(system, "acct_a", "unapproved_adult_content")
    assert types_of(counted.events) == ["ViolationReported", "NoticeIssued", "RemediationRequested"]
    assert counted.standing.strikes == 1
    assert_account_consistent(system, "acct_a")


def test_configure_key_and_account_limits(system: Container) -> None:
    per_key = command(system, "acct_l", ops.ConfigureLimits(60, 10_000, key_id="key_1"))
    ceiling = command(system, "acct_l", ops.ConfigureLimits(100, 50_000))
    changed = command(system, "acct_l", ops.ConfigureLimits(30, 5_000, key_id="key_1"))

    assert [types_of(o.events) for o in (per_key, ceiling, changed)] == [
        ["RateLimitsConfigured"]
    ] * 3
    state = system.standings.load("acct_l")
    assert state.account_rate_limit is not None
    assert (
        state.account_rate_limit.requests_per_minute,
        state.account_rate_limit.tokens_per_day,
    ) == (
        100,
        50_000,
    )
    assert state.key_rate_limits["key_1"].requests_per_minute == 30
    assert state.key_rate_limits["key_1"].tokens_per_day == 5_000
    assert changed.standing.status == "good_standing"
    assert_account_consistent(system, "acct_l")


# --- appeals ----------------------------------------------------------------------------------


def test_an_overturned_appeal_reverses_a_termination(system: Container, clock: FakeClock) -> None:
    service = system.service
    terminated = report(system, "acct_ap", "weapons_development")
    termination = decision(terminated, "AccountTerminated")
    clock.advance(DAY)

    filed = service.file_appeal("acct_ap", termination, "wrong account", OPERATOR)
    assert types_of(filed.events) == ["AppealFiled"]
    assert filed.standing.open_appeals == 1
    appeal_id = filed.events[0].data["appeal_id"]
    refused(
        system,
        "acct_ap",
        Conflict,
        lambda: service.file_appeal("acct_ap", termination, "again", OPERATOR),
    )

    decided = service.decide_appeal("acct_ap", appeal_id, "overturned", "misattributed", OPERATOR)
    assert types_of(decided.events) == [
        "AppealDecided",
        "AccountReinstated",
        "ViolationDismissed",
        "NoticeIssued",
    ]
    assert decided.standing.status == "good_standing"
    assert not decided.standing.terminated
    assert decided.standing.strikes == 0
    assert decided.standing.open_appeals == 0
    refused(
        system,
        "acct_ap",
        InvalidTransition,
        lambda: service.decide_appeal("acct_ap", appeal_id, "upheld", "changed mind", OPERATOR),
    )
    refused(
        system,
        "acct_ap",
        InvalidTransition,
        lambda: service.file_appeal("acct_ap", termination, "once more", OPERATOR),
    )
    # The account is live again: a minor violation is a first-time one.
    again = report(system, "acct_ap", "spam")
    assert types_of(again.events) == ["ViolationReported", "NoticeIssued", "RemediationRequested"]
    assert_account_consistent(system, "acct_ap")


def test_a_violation_held_by_an_overturned_termination_is_decided_then(
    system: Container, clock: FakeClock
) -> None:
    """POLICY.md: a violation on a terminated account is recorded and nothing else; once an
    appeal reverses the termination it is decided, in the same append as the reversal."""
    termination = decision(report(system, "acct_held", "weapons_development"), "AccountTerminated")
    clock.advance(DAY)
    held = report(system, "acct_held", "csam")
    assert types_of(held.events) == ["ViolationReported"]
    clock.advance(DAY)
    decided = overturn(system, "acct_held", termination, "misattributed")
    assert types_of(decided.events) == [
        "AppealDecided",
        "AccountReinstated",
        "ViolationDismissed",
        "NoticeIssued",
        "AccountTerminated",
        "AuthorityReferralOpened",
        "NoticeIssued",
    ]
    assert decided.standing.terminated
    assert decided.standing.strikes == 1  # the csam; the weapons report is dismissed
    assert decided.events[4].data["violation_ids"] == [held.events[0].data["violation_id"]]
    assert_account_consistent(system, "acct_held")


def overturn(system: Container, account: str, decision_event_id: str, why: str) -> Outcome:
    """Appeal the decision and overturn it at once."""
    filed = system.service.file_appeal(account, decision_event_id, "not us", OPERATOR)
    appeal_id = filed.events[0].data["appeal_id"]
    return system.service.decide_appeal(account, appeal_id, "overturned", why, OPERATOR)


def suspension_of(outcome: Outcome) -> str:
    return str(
        next(e for e in outcome.events if e.type == "AccountSuspended").data["suspension_id"]
    )


def test_an_overturned_suspension_gives_back_the_one_it_replaced(
    system: Container, clock: FakeClock
) -> None:
    """POLICY.md: "a longer suspension replaces a shorter one", and an overturned decision is
    reversed. Reversing the longer one leaves the shorter one, which no appeal touched, running
    to its own end: the account is not reinstated."""
    service = system.service
    first = report(system, "acct_two", "phishing")  # high, first: 7 days
    first_until = first.standing.suspension.until if first.standing.suspension else None
    assert first_until == clock() + 7 * DAY
    clock.advance(DAY)
    second = report(system, "acct_two", "phishing")  # high again: indefinitely
    assert second.standing.suspension is not None and second.standing.suspension.until is None
    clock.advance(DAY)
    decided = overturn(system, "acct_two", decision(second, "AccountSuspended"), "shared key")
    assert types_of(decided.events) == [
        "AppealDecided",
        "SuspensionEnded",
        "ViolationDismissed",
        "NoticeIssued",
    ]
    assert decided.events[1].data == {
        "suspension_id": suspension_of(second),
        "reason": "overturned",
    }
    reasons = decided.events[0].data["statement_of_reasons"]["decision"]
    assert f"stays suspended until {first_until:%Y-%m-%dT%H:%M:%S}" in reasons
    standing = service.standing("acct_two")
    assert standing.status == "suspended"
    assert standing.suspension is not None
    assert standing.suspension.suspension_id == suspension_of(first)
    assert standing.suspension.until == first_until
    assert standing.strikes == 1
    assert_account_consistent(system, "acct_two")

    clock.set(first_until)
    assert service.standing("acct_two").status != "suspended"
    ended = service.end_suspension("acct_two", standing.suspension.suspension_id, OPERATOR)
    assert types_of(ended.events) == ["SuspensionEnded"]
    assert ended.events[0].data["reason"] == "expired"
    assert_account_consistent(system, "acct_two")


def test_a_suspension_held_behind_a_longer_one_takes_over_when_that_one_is_overturned(
    system: Container, clock: FakeClock
) -> None:
    """POLICY.md: a remediation not completed by its due time suspends for 7 days. While a
    longer suspension is in force the shorter one is recorded held behind it; when an appeal
    overturns the longer one (for other violations), the held one runs to its own end instead
    of being lost with it."""
    service = system.service
    first = report(system, "acct_held", "spam")  # first minor: warning and remediation
    [remediation] = [e for e in first.events if e.type == "RemediationRequested"]
    due = clock() + 7 * DAY
    clock.advance(DAY)
    high = report(system, "acct_held", "phishing")  # high with a prior strike: indefinitely
    clock.set(due)
    expired = service.expire_remediation("acct_held", remediation.data["remediation_id"], OPERATOR)
    assert types_of(expired.events) == ["RemediationExpired", "AccountSuspended", "NoticeIssued"]
    held = expired.events[1]
    assert held.data["held_by"] == suspension_of(high)
    assert held.data["until"] == f"{due + 7 * DAY:%Y-%m-%dT%H:%M:%S}.000000Z"
    assert (
        "takes effect only if that suspension is overturned"
        in (held.data["statement_of_reasons"]["decision"])
    )
    # The indefinite suspension stays the one in force, for the gate too.
    assert expired.standing.suspension is not None
    assert expired.standing.suspension.suspension_id == suspension_of(high)
    assert expired.standing.suspension.until is None
    assert_account_consistent(system, "acct_held")

    clock.advance(DAY)
    decided = overturn(system, "acct_held", decision(high, "AccountSuspended"), "shared key")
    assert "SuspensionEnded" in types_of(decided.events)
    standing = service.standing("acct_held")
    assert standing.status == "suspended"
    assert standing.suspension is not None
    assert standing.suspension.suspension_id == held.data["suspension_id"]
    assert standing.suspension.until == due + 7 * DAY
    assert_account_consistent(system, "acct_held")

    clock.set(due + 7 * DAY)
    assert service.standing("acct_held").status != "suspended"


def test_a_held_suspension_that_ran_out_is_not_given_back(
    system: Container, clock: FakeClock
) -> None:
    """A minor third strike under an indefinite suspension is suspended for 30 days, held;
    overturning the indefinite one after those 30 days leaves the account unsuspended."""
    report(system, "acct_held2", "spam")
    clock.advance(DAY)
    high = report(system, "acct_held2", "phishing")  # indefinitely
    clock.advance(DAY)
    third = report(system, "acct_held2", "spam")  # two prior strikes: 30 days, held
    [held] = [e for e in third.events if e.type == "AccountSuspended"]
    assert held.data["held_by"] == suspension_of(high)
    assert third.standing.suspension is not None and third.standing.suspension.until is None
    filed = system.service.file_appeal(
        "acct_held2", decision(high, "AccountSuspended"), "not us", OPERATOR
    )
    clock.advance(31 * DAY)  # the appeal is decided after the held suspension ran out
    appeal_id = filed.events[0].data["appeal_id"]
    system.service.decide_appeal("acct_held2", appeal_id, "overturned", "shared key", OPERATOR)
    assert system.service.standing("acct_held2").status != "suspended"
    assert_account_consistent(system, "acct_held2")


def test_an_overturned_appeal_lifts_a_throttle_and_its_strike(
    system: Container, clock: FakeClock
) -> None:
    report(system, "acct_th2", "spam")
    second = report(system, "acct_th2", "spam")
    throttle = decision(second, "ThrottleApplied")
    assert second.standing.strikes == 2

    decided = overturn(system, "acct_th2", throttle, "shared IP")
    assert types_of(decided.events) == [
        "AppealDecided",
        "ThrottleLifted",
        "ViolationDismissed",
        "NoticeIssued",
    ]
    assert decided.standing.active_throttles == ()
    assert decided.standing.strikes == 1
    assert_account_consistent(system, "acct_th2")


def test_an_upheld_appeal_changes_nothing(system: Container, clock: FakeClock) -> None:
    service = system.service
    suspended = report(system, "acct_up", "phishing", "high")
    suspension = decision(suspended, "AccountSuspended")
    filed = service.file_appeal("acct_up", suspension, "please", OPERATOR)
    before = service.standing("acct_up").to_json()

    decided = service.decide_appeal(
        "acct_up", filed.events[0].data["appeal_id"], "upheld", "evidence is clear", OPERATOR
    )

    assert types_of(decided.events) == ["AppealDecided", "NoticeIssued"]
    assert decided.events[1].data["kind"] == "appeal_outcome"
    after = decided.standing.to_json()
    changed = {k for k in after if after[k] != before[k]}
    assert changed == {"open_appeals", "version"}
    assert before["open_appeals"] == 1 and after["open_appeals"] == 0
    assert after["status"] == "suspended"
    assert_account_consistent(system, "acct_up")


def test_an_appeal_must_be_filed_within_the_window_and_target_a_decision(
    system: Container, clock: FakeClock
) -> None:
    service = system.service
    window = system.policy.appeal_window
    first = report(system, "acct_w", "phishing", "high")
    suspension = decision(first, "AccountSuspended")
    reported = decision(first, "ViolationReported")

    refused(
        system,
        "acct_w",
        NotFound,
        lambda: service.file_appeal("acct_w", reported, "not a decision", OPERATOR),
    )
    refused(
        system,
        "acct_w",
        NotFound,
        lambda: service.file_appeal(
            "acct_w", "00000000-0000-0000-0000-000000000000", "x", OPERATOR
        ),
    )
    clock.advance(window + timedelta(microseconds=1))
    error = refused(
        system,
        "acct_w",
        InvalidTransition,
        lambda: service.file_appeal("acct_w", suspension, "late", OPERATOR),
    )
    assert isinstance(error, InvalidTransition) and error.code == "appeal_window_closed"

    second = report(system, "acct_w2", "phishing", "high")
    clock.advance(window)
    on_time = service.file_appeal(
        "acct_w2", decision(second, "AccountSuspended"), "in time", OPERATOR
    )
    assert types_of(on_time.events) == ["AppealFiled"]
    assert_account_consistent(system, "acct_w")
    assert_account_consistent(system, "acct_w2")


def test_a_notice_is_sent_again_only_from_its_account_and_a_key_answers_first(
    system: Container,
) -> None:
    """``resend_notice`` looks the notice up by its ``notice_id`` on the account's own stream
    (``NotFound`` otherwise, nothing recorded); a key used before answers its first result
    before any notice is looked up, as every command's does."""
    service = system.service
    [notice] = [e for e in report(system, "acct_n", "spam").events if e.type == "NoticeIssued"]
    notice_id = notice.data["notice_id"]
    report(system, "acct_o", "spam")  # an account with notices of its own, not this one

    unknown = refused(
        system, "acct_n", NotFound, lambda: service.resend_notice("acct_n", "ntc_x", "r", OPERATOR)
    )
    elsewhere = refused(
        system,
        "acct_o",
        NotFound,
        lambda: service.resend_notice("acct_o", notice_id, "r", OPERATOR),
    )
    for error, wanted in ((unknown, "ntc_x"), (elsewhere, notice_id)):
        assert isinstance(error, NotFound) and error.code == "notice_not_found"
        assert str(error) == f"no notice {wanted!r} on this account"

    def resend(wanted: str) -> Outcome:
        return service.resend_notice(
            "acct_n", wanted, "bounced", OPERATOR, idempotency_key="key-resend", fingerprint="f"
        )

    first = resend(notice_id)
    assert types_of(first.events) == ["NoticeIssued"] and not first.replayed
    again = resend("ntc_x")  # the key's first result, not a lookup of the notice named now
    assert again.replayed
    assert [e.event_id for e in again.events] == [e.event_id for e in first.events]
    assert_account_consistent(system, "acct_n")


def spy_appends(
    system: Container, monkeypatch: pytest.MonkeyPatch, seen: Callable[[Any], T]
) -> list[T]:
    """``seen(appends)`` of each ``append_streams`` call from now on."""
    calls: list[T] = []
    real = system.store.append_streams

    def spying(appends: Any, *args: Any, **kw: Any) -> Any:
        calls.append(seen(appends))
        return real(appends, *args, **kw)

    monkeypatch.setattr(system.store, "append_streams", spying)
    return calls


def count_appends(system: Container, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of streams of each ``append_streams`` call from now on."""
    return spy_appends(system, monkeypatch, len)


@pytest.mark.parametrize(
    ("failure", "status", "code", "says"),
    [
        (ConcurrencyError("acct_x3", 0, 9), 409, "concurrent_update", "not recorded: retry"),
        (
            OperationalError("INSERT", {}, Exception("database is locked")),
            503,
            "dependency_unavailable",
            "refused this item; it was not recorded",
        ),
        (
            AppendOutcomeUnknown("connection lost"),
            503,
            "dependency_unavailable",
            "may have been recorded: retry it with the same idempotency_key",
        ),
        (StoreError("disk on fire"), 500, "internal_error", "failed on this item; it was not"),
    ],
    ids=["lost-races", "database", "outcome-unknown", "store"],
)
def test_a_batch_item_that_fails_in_the_store_fails_alone(
    system: Container,
    monkeypatch: pytest.MonkeyPatch,
    failure: Exception,
    status: int,
    code: str,
    says: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The first items of new accounts are committed together before the others run one by
    one: an error of a later item must not fail the batch (which would say nothing was written,
    and a retry would record the committed ones again)."""
    now = system.clock()
    spam = ViolationReport("spam", now)
    fail_appending(monkeypatch, system.store, "acct_x3", failure)
    items = [
        ("acct_x1", spam, None, None),
        ("acct_x2", spam, None, None),
        ("acct_x3", spam, "key-x3", fingerprint(account_id="acct_x3", category="spam")),
        ("acct_x1", spam, None, None),
    ]

    results = system.service.report_batch(items, REPORTER)

    assert [r.status for r in results] == [201, 201, status, 201]
    error = results[2].error
    assert error is not None and error.code == code and says in error.message
    # A failure of the store (not a lost race) is logged with its traceback.
    logged = [
        r
        for r in caplog.records
        if (r.name, r.getMessage()) == ("enforcement.service", "a batch item failed in the store")
    ]
    assert len(logged) == (status >= 500)
    assert system.store.head("acct_x3").version == 0
    assert len(events_of(system, "acct_x1")) > len(events_of(system, "acct_x2"))
    for account in ("acct_x1", "acct_x2"):
        assert_account_consistent(system, account)


def test_a_batch_of_new_accounts_is_recorded_in_one_transaction(
    system: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = count_appends(system, monkeypatch)
    now = system.clock()
    items = [(f"acct_g{i}", ViolationReport("spam", now), None, None) for i in range(20)]
    items.append(("acct_g0", ViolationReport("spam", now), None, None))  # its second: after

    results = system.service.report_batch(items, REPORTER)

    assert [r.status for r in results] == [201] * 21
    assert calls[0] == 20 and len(calls) == 2  # one append for the 20 firsts, one for the 21st
    assert results[20].outcome is not None
    assert "ThrottleApplied" in types_of(results[20].outcome.events)  # acct_g0's second strike
    for i in range(20):
        assert_account_consistent(system, f"acct_g{i}")
        outcome = results[i].outcome
        assert outcome is not None and outcome.standing.strikes == 1


def test_a_batch_that_meets_a_concurrent_writer_goes_item_by_item(
    system: Container, database_url: str, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = system.clock()
    system.service.report_violation("acct_c1", ViolationReport("spam", now), REPORTER)
    real = system.store.append_streams
    raced: list[bool] = []

    with open_system(database_url, clock) as other:  # another process, with its own locks

        def racing(appends: Any, *args: Any, **kw: Any) -> Any:
            if len(appends) > 1 and not raced:  # the other reports on acct_c1 first
                raced.append(True)
                other.service.report_violation("acct_c1", ViolationReport("spam", now), REPORTER)
            return real(appends, *args, **kw)

        monkeypatch.setattr(system.store, "append_streams", racing)
        items = [(f"acct_c{i}", ViolationReport("spam", now), None, None) for i in range(4)]

        results = system.service.report_batch(items, REPORTER)

    assert raced and [r.status for r in results] == [201] * 4
    assert len(events_of(system, "acct_c0")) == 3  # recorded once, on its own
    # acct_c1's batch item was decided again after the race: its third strike.
    assert results[1].outcome is not None and results[1].outcome.standing.strikes == 3
    for i in range(4):
        assert_account_consistent(system, f"acct_c{i}")


def database_down(*_a: Any, **_k: Any) -> Any:
    raise OperationalError("INSERT", {}, Exception("database down"))


def test_a_batch_whose_first_items_are_all_refused_answers_each(system: Container) -> None:
    bogus = ViolationReport("spam", system.clock(), detection="bogus")
    items = [(a, bogus, None, None) for a in ("acct_b1", "acct_b2")]

    results = system.service.report_batch(items, REPORTER)

    assert [r.status for r in results] == [422, 422]  # nothing left to append together


def test_a_batch_of_one_item_whose_append_fails_answers_that_item(
    system: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(system.store, "append", database_down)
    monkeypatch.setattr(system.store, "append_streams", database_down)
    items = [("acct_o1", ViolationReport("spam", system.clock()), None, None)]

    assert [r.status for r in system.service.report_batch(items, REPORTER)] == [503]


@pytest.mark.parametrize("where", ["append", "after the commit"])
def test_a_batch_whose_shared_transaction_fails_raises_its_error(
    system: Container, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """The batch fails with the store's own error (the API answers it 503), not another."""
    target = system.store if where == "append" else system.standings
    name = "append_streams" if where == "append" else "remember_appended"
    monkeypatch.setattr(target, name, database_down)
    items = [
        (a, ViolationReport("spam", system.clock()), None, None) for a in ("acct_f1", "acct_f2")
    ]

    with pytest.raises(OperationalError, match="database down"):
        system.service.report_batch(items, REPORTER)


def _receipt(notice: str) -> Any:
    return ev.NoticeDelivered(f"notice-{notice}", notice, "webhook", 1)


def test_facts_of_many_accounts_are_recorded_in_one_transaction_once_per_key(
    system: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = system.clock()
    for i in range(3):
        system.service.report_violation(f"acct_f{i}", ViolationReport("spam", now), REPORTER)
    calls = count_appends(system, monkeypatch)
    facts = [Fact(f"acct_f{i}", _receipt(f"n{i}"), f"cause-{i}", f"key-{i}") for i in range(3)]
    facts.append(Fact("acct_f0", _receipt("n3"), "cause-3", "key-3"))  # its second: after

    recorded = system.service.record_facts(facts, REPORTER)

    assert calls == [3, 1]
    assert [[e.type for e in r] for r in recorded] == [["NoticeDelivered"]] * 4
    assert [r[0].metadata["causation_id"] for r in recorded] == [f"cause-{i}" for i in range(4)]
    for i in range(3):
        assert_account_consistent(system, f"acct_f{i}")

    # Again, with one key new: the group meets the used keys, nothing is recorded twice.
    calls.clear()
    again = system.service.record_facts(
        [*facts[:3], Fact("acct_f1", _receipt("n4"), "cause-4", "key-4")], REPORTER
    )
    assert calls[0] == 3  # the three accounts' first facts together: refused (keys used)
    assert [r[0].event_id for r in again[:3]] == [r[0].event_id for r in recorded[:3]]
    assert again[3][0].type == "NoticeDelivered"
    assert [
        types_of(events_of(system, f"acct_f{i}")).count("NoticeDelivered") for i in range(3)
    ] == [
        2,
        2,
        1,
    ]
    for i in range(3):
        assert_account_consistent(system, f"acct_f{i}")


def test_facts_of_many_accounts_are_appended_in_their_keys_order(
    system: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two processes recording the same facts insert their key rows in the same order (the
    other order could deadlock on PostgreSQL); each fact still gets its own events."""
    keys = spy_appends(system, monkeypatch, lambda appends: [a.idempotency_key for a in appends])
    facts = [Fact(f"acct_k{i}", _receipt(f"k{i}"), f"cause-{i}", f"kkey-{2 - i}") for i in range(3)]

    recorded = system.service.record_facts(facts, REPORTER)

    assert keys == [["kkey-0", "kkey-1", "kkey-2"]]
    assert [(r[0].account_id, r[0].metadata["causation_id"]) for r in recorded] == [
        (f"acct_k{i}", f"cause-{i}") for i in range(3)
    ]


def test_facts_that_meet_a_concurrent_writer_are_recorded_one_by_one(
    system: Container, database_url: str, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = system.clock()
    for i in range(2):
        system.service.report_violation(f"acct_w{i}", ViolationReport("spam", now), REPORTER)
    real = system.store.append_streams
    raced: list[bool] = []

    with open_system(database_url, clock) as other:

        def racing(appends: Any, *args: Any, **kw: Any) -> Any:
            if len(appends) > 1 and not raced:
                raced.append(True)
                other.service.report_violation("acct_w1", ViolationReport("spam", now), REPORTER)
            return real(appends, *args, **kw)

        monkeypatch.setattr(system.store, "append_streams", racing)
        facts = [Fact(f"acct_w{i}", _receipt(f"w{i}"), None, f"wkey-{i}") for i in range(2)]
        recorded = system.service.record_facts(facts, REPORTER)

    assert raced and [len(r) for r in recorded] == [1, 1]
    assert types_of(events_of(system, "acct_w1"))[-1] == "NoticeDelivered"
    for i in range(2):
        assert_account_consistent(system, f"acct_w{i}")


def test_a_fact_that_fails_gets_its_own_error_and_the_others_are_recorded(
    system: Container,
) -> None:
    now = system.clock()
    for i in range(3):
        system.service.report_violation(f"acct_e{i}", ViolationReport("spam", now), REPORTER)
    facts = [
        Fact("acct_e0", _receipt("e0"), None, "ekey-0"),
        Fact("acct_e1", object(), None, "ekey-1"),  # no event type: cannot be encoded
        Fact("acct_e2", _receipt("e2"), None, "ekey-2"),
    ]

    outcomes = system.service.record_facts(facts, REPORTER)

    assert isinstance(outcomes[1], Exception)
    assert [types_of(o) for o in (outcomes[0], outcomes[2])] == [["NoticeDelivered"]] * 2
    assert "NoticeDelivered" not in types_of(events_of(system, "acct_e1"))
    for i in range(3):
        assert_account_consistent(system, f"acct_e{i}")
