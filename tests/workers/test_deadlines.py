"""Deadlines: a remediation past due is expired through the use case (RemediationExpired, then
AccountSuspended and its notice), by its delayed message or, when that message is lost, by the
sweep alone; a completed remediation never is; a suspension with an end records SuspensionEnded.

Real-time tests shrink the policy's windows to a second or two with a policy file; the
injected-clock test moves a fake clock across the shipped default's days instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from enforcement import operator_decisions as ops
from enforcement.bootstrap import Container, bootstrap
from enforcement.service import Actor, Outcome
from enforcement.workers.sweep import sweep_once
from events import RecordedEvent
from events.timefmt import parse_time
from tests.workers.system import (
    OPERATOR,
    Receiver,
    System,
    delivered_once_each,
    fast_settings,
    report,
    wait_until,
    write_policy,
)

DEADLINE_ACTORS = ("expire_remediation", "end_suspension")


def one(events: list[RecordedEvent], type_: str) -> RecordedEvent:
    [event] = [e for e in events if e.type == type_]
    return event


def assert_escalated(system: System, account_id: str, scheduler: str) -> RecordedEvent:
    """The remediation's expiry, the suspension it caused and its notice, all by ``scheduler``;
    returns the suspension."""
    events = system.events(account_id=account_id)
    requested = one(events, "RemediationRequested")
    expired = one(events, "RemediationExpired")
    suspended = one(events, "AccountSuspended")
    notice = [e for e in events if e.type == "NoticeIssued"][-1]
    assert expired.data["remediation_id"] == requested.data["remediation_id"]
    assert expired.recorded_at >= parse_time(requested.data["due_at"])
    assert expired.metadata["actor"] == "policy"
    assert expired.metadata["correlation_id"] == (
        "deadline" if scheduler == "scheduler" else "deadline-sweep"
    )
    assert expired.metadata["causation_id"] == requested.event_id
    assert suspended.data["reason"] == "remediation_missed"
    assert suspended.metadata["causation_id"] == expired.event_id
    assert (notice.data["kind"], notice.data["decision_event_id"]) == (
        "suspension",
        suspended.event_id,
    )
    assert [e.type for e in events].index("RemediationExpired") < [e.type for e in events].index(
        "AccountSuspended"
    )
    return suspended


@pytest.fixture
def tiny_policy(tmp_path: Path) -> str:
    return write_policy(tmp_path, remediation_window="1s", missed_remediation_suspension="1s")


def test_a_missed_remediation_is_expired_by_its_delayed_message(
    sqlite_db: str, broker_url: str | None, tmp_path: Path, tiny_policy: str, receiver: Receiver
) -> None:
    # Given a 1 s remediation window, a 1 s missed-remediation suspension and no sweep to help
    settings = fast_settings(
        sqlite_db, tmp_path, redis_url=broker_url, policy_file=tiny_policy, sweep_seconds=3600
    )
    system = System(settings)
    try:
        system.contact("acct_late", webhook_url=receiver.url)

        # When a first-time minor violation's remediation is not completed
        system.report("acct_late", "spam")

        # Then its delayed message expires it and suspends the account, with a notice delivered
        wait_until(
            lambda: system.events("AccountSuspended", account_id="acct_late"),
            "the remediation to expire",
            timeout=15,
        )
        suspended = assert_escalated(system, "acct_late", "scheduler")
        suspension_notice = system.events("NoticeIssued", account_id="acct_late")[-1]
        wait_until(
            lambda: delivered_once_each(system.store, [suspension_notice.event_id], ["webhook"]),
            "the suspension notice to be delivered",
        )

        # and the suspension's own end is recorded by its delayed message
        wait_until(
            lambda: system.events("SuspensionEnded", account_id="acct_late"),
            "the suspension to end",
            timeout=15,
        )
        ended = one(system.events(account_id="acct_late"), "SuspensionEnded")
        assert ended.data["suspension_id"] == suspended.data["suspension_id"]
        assert ended.recorded_at >= parse_time(suspended.data["until"])
        assert ended.metadata["correlation_id"] == "deadline"
        assert system.container.service.standing("acct_late").to_json()["suspension"] is None
        # The recorder notes a message once its actor has returned, a moment after the event
        # it recorded is visible.
        wait_until(
            lambda: len([h for h in system.recorder.handled if h.actor in DEADLINE_ACTORS]) >= 2,
            "both deadline messages to be noted as handled",
        )
        assert [h.error for h in system.recorder.handled if h.actor in DEADLINE_ACTORS] == [
            None,
            None,
        ]
    finally:
        system.close()


def test_the_sweep_alone_expires_a_remediation_whose_message_was_lost(
    sqlite_db: str, tmp_path: Path, tiny_policy: str
) -> None:
    # Given a broker that loses every deadline message, and a sweep every second
    settings = fast_settings(sqlite_db, tmp_path, policy_file=tiny_policy, sweep_seconds=1)
    system = System(settings, drop=lambda message: message.actor in DEADLINE_ACTORS)
    try:
        # When a remediation passes its due time
        system.report("acct_lost", "spam")

        # Then the sweep expires it and suspends the account
        wait_until(
            lambda: system.events("AccountSuspended", account_id="acct_lost"),
            "the sweep to expire the remediation",
            timeout=15,
        )
        suspended = assert_escalated(system, "acct_lost", "sweep")
        # and ends that suspension once its end has passed
        wait_until(
            lambda: system.events("SuspensionEnded", account_id="acct_lost"),
            "the sweep to end the suspension",
            timeout=15,
        )
        ended = one(system.events(account_id="acct_lost"), "SuspensionEnded")
        assert ended.data["suspension_id"] == suspended.data["suspension_id"]
        assert ended.metadata["correlation_id"] == "deadline-sweep"
        assert sorted(m.actor for m in system.dropped) == sorted(DEADLINE_ACTORS)
        assert not any(h.actor in DEADLINE_ACTORS for h in system.recorder.handled)
    finally:
        system.close()


def test_a_completed_remediation_is_never_expired(
    sqlite_db: str, broker_url: str | None, tmp_path: Path
) -> None:
    # Given a 2 s remediation window, its delayed message and a sweep every second
    policy = write_policy(tmp_path, remediation_window="2s")
    settings = fast_settings(
        sqlite_db, tmp_path, redis_url=broker_url, policy_file=policy, sweep_seconds=1
    )
    system = System(settings)
    try:
        requested = one(system.report("acct_fixed", "spam").events, "RemediationRequested")
        remediation_id = requested.data["remediation_id"]

        # When the account completes it in time
        system.container.service.operator(
            "acct_fixed", ops.CompleteRemediation(remediation_id, "keys rotated"), OPERATOR
        )

        # Then neither the delayed message nor the sweep, both past the due time, expire it
        wait_until(
            lambda: system.recorder.of("expire_remediation", "acct_fixed", remediation_id),
            "the delayed message to be handled",
            timeout=15,
        )
        assert system.recorder.of("expire_remediation", "acct_fixed")[0].error is None
        assert sweep_once(system.container.service) == 0
        types = [e.type for e in system.events(account_id="acct_fixed")]
        assert "RemediationCompleted" in types
        assert "RemediationExpired" not in types
        assert "AccountSuspended" not in types
    finally:
        system.close()


@dataclass
class FakeClock:
    now: datetime

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **span: float) -> None:
        self.now += timedelta(**span)


@pytest.fixture
def clocked(sqlite_db: str, tmp_path: Path) -> Iterator[tuple[Container, FakeClock]]:
    clock = FakeClock(datetime(2026, 11, 24, 10, 0, tzinfo=UTC))
    container = bootstrap(fast_settings(sqlite_db, tmp_path), clock=clock)
    yield container, clock
    container.close()


def test_the_sweep_follows_an_injected_clock_across_the_default_windows(
    clocked: tuple[Container, FakeClock],
) -> None:
    container, clock = clocked
    service = container.service
    types = {
        account: (lambda a=account: [e.type for e in service.store.iter_stream(a)])
        for account in ("acct_late", "acct_fixed")
    }

    # Given two 7-day remediations, one of them completed on day 6
    report(container, "acct_late", "spam")
    fixed = one(report(container, "acct_fixed", "spam").events, "RemediationRequested")
    clock.advance(days=6)
    service.operator(
        "acct_fixed", ops.CompleteRemediation(fixed.data["remediation_id"], "done"), OPERATOR
    )

    # When the sweep runs a second before they are due, nothing happens
    clock.advance(days=1, seconds=-1)
    assert sweep_once(service) == 0

    # Then, once due (at its due instant itself), only the open one is expired, with its
    # suspension and notice, by the sweep
    clock.advance(seconds=1)
    assert sweep_once(service) == 1
    assert types["acct_late"]()[-3:] == ["RemediationExpired", "AccountSuspended", "NoticeIssued"]
    assert "RemediationExpired" not in types["acct_fixed"]()
    suspended = one(list(service.store.iter_stream("acct_late")), "AccountSuspended")
    assert suspended.data["until"] == "2026-12-08T10:00:00.000000Z"  # 7 days after the expiry
    expired = one(list(service.store.iter_stream("acct_late")), "RemediationExpired")
    assert (expired.metadata["correlation_id"], expired.metadata["source"]) == (
        "deadline-sweep",
        "worker",
    )

    # and running again changes nothing (a late delayed message would not either)
    assert sweep_once(service) == 0
    again = service.expire_remediation("acct_late", expired.data["remediation_id"], OPERATOR)
    assert again.events == []

    # The suspension ends by itself once its end has passed, recorded as SuspensionEnded
    clock.now = parse_time(suspended.data["until"]) - timedelta(seconds=1)
    assert sweep_once(service) == 0
    clock.advance(seconds=1)
    assert sweep_once(service) == 1
    assert types["acct_late"]()[-1] == "SuspensionEnded"
    ended = one(list(service.store.iter_stream("acct_late")), "SuspensionEnded")
    assert (ended.metadata["correlation_id"], ended.metadata["source"]) == (
        "deadline-sweep",
        "worker",
    )
    assert service.standing("acct_late").to_json()["status"] != "suspended"
    assert sweep_once(service) == 0


def test_a_deadline_whose_use_case_fails_is_logged_and_the_sweep_goes_on(
    clocked: tuple[Container, FakeClock],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    container, clock = clocked
    service = container.service
    failing = {"acct_a"}

    def fails_for(use_case: Callable[..., Outcome]) -> Callable[..., Outcome]:
        def run(account_id: str, ident: str, actor: Actor) -> Outcome:
            if account_id in failing:
                raise RuntimeError("the database went away")
            return use_case(account_id, ident, actor)

        return run

    monkeypatch.setattr(service, "expire_remediation", fails_for(service.expire_remediation))
    monkeypatch.setattr(service, "end_suspension", fails_for(service.end_suspension))

    # Given two remediations due, the first account's expiry failing
    [late_a, late_b] = [
        one(report(container, account, "spam").events, "RemediationRequested")
        for account in ("acct_a", "acct_b")
    ]
    clock.advance(days=7)

    # When the sweep runs, the failure is logged with its traceback, and the other still runs
    with caplog.at_level(logging.ERROR, logger="enforcement.sweep"):
        assert sweep_once(service) == 1
    [record] = caplog.records
    assert (record.name, record.getMessage()) == (
        "enforcement.sweep",
        f"sweep failed for remediation {late_a.data['remediation_id']} on acct_a",
    )
    assert record.exc_info is not None
    assert "RemediationExpired" not in [e.type for e in service.store.iter_stream("acct_a")]
    expired_b = one(list(service.store.iter_stream("acct_b")), "RemediationExpired")
    assert expired_b.data["remediation_id"] == late_b.data["remediation_id"]

    # and a suspension's end that fails is told as such
    suspended = one(list(service.store.iter_stream("acct_b")), "AccountSuspended")
    failing = {"acct_b"}
    clock.now = parse_time(suspended.data["until"])
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="enforcement.sweep"):
        assert sweep_once(service) == 1  # acct_a's remediation, still due, now expires
    assert [r.getMessage() for r in caplog.records] == [
        f"sweep failed for suspension {suspended.data['suspension_id']} on acct_b"
    ]
