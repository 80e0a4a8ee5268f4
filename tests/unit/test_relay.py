"""The relay: which messages each event calls for (``messages_for``), when a delayed message is
due (``delay_ms``), and how the checkpoint moves (only after the enqueue; a failed enqueue leaves
it where it was, and the retry sends the page again from the message the broker did not take).

The relay runs unchanged against an in-memory stand-in for the event store's read and checkpoint
API, so these tests need no database.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from enforcement.policy import DEFAULT_POLICY, Context, ViolationReport, decide_violation
from enforcement.workers.leader import LEADER_CHECK_SECONDS, still_leads, watch_leader
from enforcement.workers.relay import GATE_EVENTS, Message, Relay, delay_ms, messages_for
from events import NewEvent, RecordedEvent
from events.timefmt import parse_time
from projections.standing import StandingState

T0 = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
CHANNELS = ("email", "webhook")


def recorded(new: NewEvent, position: int, account_id: str = "acct_1") -> RecordedEvent:
    return RecordedEvent(
        position, new.event_id, account_id, position, new.type, new.schema_version, new.data,
        new.metadata, new.occurred_at, T0, "", "",
    )  # fmt: skip


def event(type_: str, position: int, **data: Any) -> RecordedEvent:
    return recorded(NewEvent(type_, data, T0, event_id=f"evt-{position}"), position)


def decided(category: str, severity: str | None = None) -> list[RecordedEvent]:
    """What the policy records for a violation on a clean account, as recorded events."""
    ctx = Context(now=T0, actor="reporter", correlation_id="req_1")
    report = ViolationReport(category, T0, severity)
    new = decide_violation(DEFAULT_POLICY, StandingState.empty("acct_1"), report, ctx)
    return [recorded(e, i) for i, e in enumerate(new, start=1)]


# ------------------------------------------------------------------ messages_for


def test_a_notice_calls_for_one_delivery_per_channel() -> None:
    events = decided("spam")
    [notice] = [e for e in events if e.type == "NoticeIssued"]
    assert messages_for(notice, CHANNELS) == [
        Message("deliver_notice", (notice.event_id, "email")),
        Message("deliver_notice", (notice.event_id, "webhook")),
    ]
    assert messages_for(notice, ("webhook",)) == [
        Message("deliver_notice", (notice.event_id, "webhook"))
    ]


def test_a_copy_sent_on_some_channels_calls_for_those_only() -> None:
    [notice] = [e for e in decided("spam") if e.type == "NoticeIssued"]
    first = {"notice_id": "ntc_1", "notice_event_id": "e", "issued_at": "t", "reason": ""}
    for chosen, expected in (
        (None, CHANNELS),
        (["webhook"], ("webhook",)),
        (["email"], ("email",)),
    ):
        data = {**notice.data, "resend_of": {**first, "channels": chosen}}
        copy = replace(notice, data=data)
        assert messages_for(copy, CHANNELS) == [
            Message("deliver_notice", (notice.event_id, channel)) for channel in expected
        ]
    only_webhook = replace(
        notice, data={**notice.data, "resend_of": {**first, "channels": ["webhook"]}}
    )
    assert messages_for(only_webhook, ("email",)) == []  # the contact has no webhook


def test_a_remediation_calls_for_its_expiry_at_its_due_time() -> None:
    [requested] = [e for e in decided("spam") if e.type == "RemediationRequested"]
    [message] = messages_for(requested, CHANNELS)
    assert message == Message(
        "expire_remediation",
        ("acct_1", requested.data["remediation_id"]),
        parse_time(requested.data["due_at"]),
    )
    assert message.due_at == T0 + DEFAULT_POLICY.remediation_window


def test_a_timed_suspension_calls_for_its_end_and_a_gate_update() -> None:
    [suspended] = [e for e in decided("phishing", "high") if e.type == "AccountSuspended"]
    assert messages_for(suspended, CHANNELS) == [
        Message(
            "end_suspension",
            ("acct_1", suspended.data["suspension_id"]),
            T0 + DEFAULT_POLICY.first_high_suspension,
        ),
        Message("apply_gate_state", (suspended.event_id,)),
    ]


def test_an_indefinite_suspension_has_no_end_to_schedule() -> None:
    suspended = event("AccountSuspended", 7, suspension_id="sus_1", until=None)
    assert messages_for(suspended, CHANNELS) == [Message("apply_gate_state", ("evt-7",))]


@pytest.mark.parametrize("type_", sorted(GATE_EVENTS - {"AccountSuspended"}))
def test_gate_state_events_call_for_a_gate_update(type_: str) -> None:
    assert messages_for(event(type_, 3), CHANNELS) == [Message("apply_gate_state", ("evt-3",))]


@pytest.mark.parametrize(
    "type_",
    ["ViolationReported", "NoticeDelivered", "NoticeDeliveryFailed", "RemediationExpired",
     "RemediationCompleted", "AuthorityReferralOpened", "AppealFiled", "AbuseReportReceived"],
)  # fmt: skip
def test_other_events_call_for_nothing(type_: str) -> None:
    assert messages_for(event(type_, 1), CHANNELS) == []


def test_a_critical_violation_calls_for_the_gate_and_the_termination_notice() -> None:
    events = decided("csam")
    messages = [m for e in events for m in messages_for(e, CHANNELS)]
    termination = next(e for e in events if e.type == "AccountTerminated")
    notice = next(e for e in events if e.type == "NoticeIssued")
    assert messages == [
        Message("apply_gate_state", (termination.event_id,)),
        Message("deliver_notice", (notice.event_id, "email")),
        Message("deliver_notice", (notice.event_id, "webhook")),
    ]


# ------------------------------------------------------------------ delay_ms


def test_delay_of_an_immediate_message_is_none_and_of_a_past_deadline_zero() -> None:
    assert delay_ms(None, T0) is None
    assert delay_ms(T0 - timedelta(days=1), T0) == 0


@given(st.integers(min_value=0, max_value=30 * 86_400 * 1_000_000))
def test_a_delayed_message_is_never_due_before_its_deadline(micros: int) -> None:
    # The broker adds the delay to its clock truncated to whole milliseconds, so the delay must
    # cover the true interval rounded up plus that lost millisecond, and not much more.
    delay = delay_ms(T0 + timedelta(microseconds=micros), T0)
    assert delay is not None
    assert delay * 1000 >= micros + 1000
    assert delay * 1000 < micros + 2000


# ------------------------------------------------------------------ the checkpoint


class MemoryStore:
    """The store's read and checkpoint API over a list; ``journal`` records every enqueue and
    every checkpoint write in order."""

    def __init__(self, events: Sequence[RecordedEvent]) -> None:
        self.events = list(events)
        self.checkpoints: dict[str, int] = {}
        self.journal: list[tuple[str, Any]] = []
        self.fail_checkpoint_writes = 0
        self.engine = self
        self.dialect = SimpleNamespace(name="memory")  # what ``write_connection`` asks

    @contextmanager
    def connect(self) -> Iterator[MemoryStore]:
        yield self

    begin = connect

    def read_all(self, after_position: int = 0, limit: int = 500) -> list[RecordedEvent]:
        return [e for e in self.events if e.position > after_position][:limit]

    def get_checkpoint(self, conn: object, name: str) -> int:
        return self.checkpoints.get(name, 0)

    def set_checkpoint(self, conn: object, name: str, position: int) -> None:
        if self.fail_checkpoint_writes:
            self.fail_checkpoint_writes -= 1
            raise ConnectionError("database went away")
        self.journal.append(("checkpoint", position))
        self.checkpoints[name] = position

    def advance_checkpoint(self, conn: object, name: str, position: int) -> None:
        self.set_checkpoint(conn, name, max(position, self.checkpoints.get(name, 0)))


class Broker:
    """Accepts messages, or refuses the next ``failures`` of them."""

    def __init__(self, store: MemoryStore, failures: int = 0, fail_at: int = 0) -> None:
        self.store = store
        self.failures = failures
        self.fail_at = fail_at  # how many messages succeed before the failures start
        self.sent: list[Message] = []

    def __call__(self, message: Message) -> None:
        if self.failures and len(self.sent) >= self.fail_at:
            self.failures -= 1
            raise ConnectionError("broker down")
        self.sent.append(message)
        self.store.journal.append(("enqueue", message))


def notices(count: int) -> list[RecordedEvent]:
    """``count`` NoticeIssued events at positions 1..count (two messages each)."""
    return [event("NoticeIssued", p) for p in range(1, count + 1)]


def test_the_checkpoint_advances_after_every_message_of_the_page_is_enqueued() -> None:
    store = MemoryStore(notices(3))
    broker = Broker(store)
    relay = Relay(store, broker, CHANNELS)  # type: ignore[arg-type]

    assert relay.run_once() == 3

    assert [kind for kind, _ in store.journal] == ["enqueue"] * 6 + ["checkpoint"]
    assert store.journal[-1] == ("checkpoint", 3)
    assert relay.position() == 3
    assert [m.args for m in broker.sent] == [
        (f"evt-{p}", channel) for p in (1, 2, 3) for channel in CHANNELS
    ]
    # nothing new: nothing sent, the checkpoint is not rewritten
    assert relay.run_once() == 0
    assert len(store.journal) == 7


@pytest.mark.parametrize("fail_at", [1, 3], ids=["first event of the page", "a later event"])
def test_an_enqueue_failure_leaves_the_checkpoint_and_the_retry_sends_what_was_not_taken(
    fail_at: int,
) -> None:
    store = MemoryStore(notices(3))
    broker = Broker(store, failures=1, fail_at=fail_at)  # the 2nd or the 4th message fails
    relay = Relay(store, broker, CHANNELS)  # type: ignore[arg-type]

    with pytest.raises(ConnectionError):
        relay.run_once()
    assert relay.position() == 0
    assert ("checkpoint", 3) not in store.journal
    assert len(broker.sent) == fail_at

    # the retry starts again from the checkpoint (never a gap), and sends from the message the
    # broker did not take: none of the three it took goes twice
    assert relay.run_once() == 3
    assert relay.position() == 3
    assert [m.args for m in broker.sent] == [
        (f"evt-{p}", channel) for p in (1, 2, 3) for channel in CHANNELS
    ]


def test_a_new_relay_after_a_failure_sends_the_page_again_from_the_checkpoint() -> None:
    """What this relay took is known to it alone: another (a restart, another leader) starts
    from the checkpoint and sends the page again, at least once."""
    store = MemoryStore(notices(2))
    broker = Broker(store, failures=1, fail_at=3)
    with pytest.raises(ConnectionError):
        Relay(store, broker, CHANNELS).run_once()  # type: ignore[arg-type]

    assert Relay(store, broker, CHANNELS).run_once() == 2  # type: ignore[arg-type]
    assert [m.args for m in broker.sent[3:]] == [
        (f"evt-{p}", channel) for p in (1, 2) for channel in CHANNELS
    ]


def test_a_log_that_lost_what_the_broker_took_has_its_new_events_relayed() -> None:
    """A failover to a replica that had not received the last commits gives their positions to
    new events: what the broker took for the lost ones says nothing of these."""
    store = MemoryStore(notices(2))
    store.fail_checkpoint_writes = 1
    broker = Broker(store)
    relay = Relay(store, broker, CHANNELS)  # type: ignore[arg-type]
    with pytest.raises(ConnectionError):
        relay.run_once()  # the broker took all four messages; the checkpoint was not written
    # Given a log without those two events, whose positions went to two others
    store.events = [
        recorded(NewEvent("NoticeIssued", {}, T0, event_id=f"new-{p}"), p) for p in (1, 2)
    ]

    assert relay.run_once() == 2
    assert [m.args for m in broker.sent[4:]] == [
        (f"new-{p}", channel) for p in (1, 2) for channel in CHANNELS
    ]


def test_reached_counts_a_page_begun_whose_checkpoint_is_not_written() -> None:
    """What a broker that lost its data may have lost is every message up to ``reached``: the
    messages of a page already enqueued count before its checkpoint is written."""
    store = MemoryStore(notices(3))
    broker = Broker(store, failures=1, fail_at=3)  # the 4th message fails
    relay = Relay(store, broker, CHANNELS)  # type: ignore[arg-type]
    assert relay.reached() == 0

    with pytest.raises(ConnectionError):
        relay.run_once()
    assert (relay.position(), relay.reached()) == (0, 3)

    store.checkpoints[relay.checkpoint] = 7  # another leader went further meanwhile
    assert relay.reached() == 7


def test_a_relay_overtaken_during_its_page_does_not_move_the_checkpoint_back() -> None:
    """A leader that lost the lock while it enqueued a page (its session ended after it asked)
    finishes that page; the process that took the lead meanwhile may have relayed further. The
    late checkpoint write leaves the further one: moved back, the new leader sent again every
    page it had passed."""
    store = MemoryStore(notices(4))
    new_leader = Relay(store, Broker(store), CHANNELS, page_size=2)  # type: ignore[arg-type]
    sent: list[Message] = []

    def overtaken(message: Message) -> None:
        if not sent:
            assert new_leader.run_once() == 2 and new_leader.run_once() == 2
        sent.append(message)

    late = Relay(store, overtaken, CHANNELS, page_size=2)  # type: ignore[arg-type]
    assert late.run_once() == 2

    assert late.position() == new_leader.position() == 4
    assert new_leader.run_once() == 0  # nothing to send again


def test_a_failed_checkpoint_write_is_written_again_without_sending_again() -> None:
    store = MemoryStore(notices(2))
    store.fail_checkpoint_writes = 1
    broker = Broker(store)
    relay = Relay(store, broker, CHANNELS)  # type: ignore[arg-type]

    with pytest.raises(ConnectionError):
        relay.run_once()
    assert relay.position() == 0
    assert relay.run_once() == 2
    assert relay.position() == 2
    assert len(broker.sent) == 4  # the broker took all 4 the first time


def test_the_relay_pages_and_a_new_relay_resumes_from_the_stored_checkpoint() -> None:
    store = MemoryStore(notices(5))
    broker = Broker(store)
    relay = Relay(store, broker, CHANNELS, page_size=2)  # type: ignore[arg-type]

    assert relay.run_once() == 2
    assert relay.position() == 2

    restarted = Relay(store, broker, CHANNELS, page_size=2)  # type: ignore[arg-type]
    assert [restarted.run_once() for _ in range(3)] == [2, 1, 0]
    assert [position for kind, position in store.journal if kind == "checkpoint"] == [2, 4, 5]
    assert [m.args[0] for m in broker.sent[::2]] == [f"evt-{p}" for p in range(1, 6)]


def test_the_running_relay_retries_through_a_broker_outage_and_catches_up() -> None:
    store = MemoryStore(notices(4))
    broker = Broker(store, failures=5)  # down for the first five attempts
    relay = Relay(store, broker, CHANNELS)  # type: ignore[arg-type]
    stop = threading.Event()
    thread = threading.Thread(
        target=relay.run, args=(stop,), kwargs={"idle_seconds": 0.01, "error_seconds": 0.01}
    )
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while relay.position() < 4:
            assert time.monotonic() < deadline, "the relay did not catch up"
            time.sleep(0.01)
    finally:
        stop.set()
        thread.join(timeout=5)
    assert not thread.is_alive()
    assert store.journal[-1] == ("checkpoint", 4)
    assert [kind for kind, _ in store.journal] == ["enqueue"] * 8 + ["checkpoint"]
    assert {m.args for m in broker.sent} == {
        (f"evt-{p}", channel) for p in range(1, 5) for channel in CHANNELS
    }


def test_a_relay_that_no_longer_leads_sends_nothing_and_keeps_the_checkpoint() -> None:
    store = MemoryStore(notices(2))
    broker = Broker(store)
    relay = Relay(store, broker, CHANNELS)  # type: ignore[arg-type]
    asked: list[bool] = []
    leads = [True]

    def guard() -> bool:
        asked.append(leads[0])
        return leads[0]

    relay.guard = guard
    leads[0] = False
    assert relay.run_once() == 0
    assert broker.sent == [] and relay.position() == 0  # the new leader sends these
    leads[0] = True
    assert relay.run_once() == 2
    assert relay.run_once() == 0  # nothing new: not asked (no query per idle poll)
    assert asked == [False, True]


class FakeLeader:
    def __init__(self, holds: bool) -> None:
        self._holds = holds

    def holds(self) -> bool:
        return self._holds


def test_still_leads_steps_down_at_once_when_the_lock_is_lost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    kept, lost = threading.Event(), threading.Event()

    with caplog.at_level(logging.WARNING, logger="enforcement.workers"):
        assert still_leads(FakeLeader(True), kept) is True  # type: ignore[arg-type]
        assert not kept.is_set()
        assert still_leads(FakeLeader(False), lost) is False  # type: ignore[arg-type]
        assert lost.is_set()  # the sweep and the gate keeper stop with the relay
        assert still_leads(FakeLeader(True), lost) is False  # once stepped down, stays so
    # told once, in the workers' log
    assert [(r.name, r.getMessage()) for r in caplog.records] == [
        ("enforcement.workers", "the relay's leader lock was lost; stepping down")
    ]


class Looks:
    """A leader lock that holds at the first ``looks`` looks, then is lost."""

    def __init__(self, looks: int) -> None:
        self.looks = looks
        self.asked = 0

    def holds(self) -> bool:
        self.asked += 1
        return self.asked <= self.looks


class WaitsThenStop:
    """A stop event that records the waits and stops after ``limit`` of them."""

    def __init__(self, limit: int) -> None:
        self.waits: list[float] = []
        self.limit = limit

    def is_set(self) -> bool:
        return len(self.waits) >= self.limit

    def wait(self, seconds: float) -> bool:
        self.waits.append(seconds)
        return self.is_set()


def test_the_watch_looks_every_few_seconds_and_steps_down_once_stopped() -> None:
    leader, stop, stepping_down = Looks(100), WaitsThenStop(limit=3), threading.Event()
    watch_leader(leader, stop, stepping_down)  # type: ignore[arg-type]
    assert (stop.waits, leader.asked) == ([LEADER_CHECK_SECONDS] * 3, 2)
    assert stepping_down.is_set()  # the relay, the sweep and the gate keeper stop with it


def test_the_watch_steps_down_at_the_first_look_that_finds_the_lock_lost() -> None:
    leader, stop, stepping_down = Looks(2), WaitsThenStop(limit=101), threading.Event()
    watch_leader(leader, stop, stepping_down)  # type: ignore[arg-type]
    assert (stop.waits, leader.asked) == ([LEADER_CHECK_SECONDS] * 3, 3)
    assert stepping_down.is_set()
