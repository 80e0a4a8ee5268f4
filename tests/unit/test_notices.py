"""``projections.notices``: each notice of an account and how its delivery went on each channel,
folded from the notices and their outcome events (pure)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from events import RecordedEvent
from projections.notices import notice_deliveries

T0 = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)


class Log:
    """Events as the store records them (positions and times rising), of ``acct_1`` unless
    ``account`` says otherwise."""

    def __init__(self) -> None:
        self.events: list[RecordedEvent] = []
        self.ids = itertools.count(1)
        self.account = "acct_1"

    def add(self, event_type: str, data: dict[str, Any]) -> RecordedEvent:
        position = len(self.events) + 1
        version = 1 + sum(e.account_id == self.account for e in self.events)
        event = RecordedEvent(
            position,
            f"0190c0de-0000-7000-8000-{next(self.ids):012d}",
            self.account,
            version,
            event_type,
            1,
            data,
            {},
            T0,
            T0 + timedelta(minutes=position),
            "",
            "",
        )
        self.events.append(event)
        return event

    def notice(self, notice_id: str, resend_of: str | None = None) -> RecordedEvent:
        first = None
        if resend_of is not None:
            first = {"notice_id": resend_of, "notice_event_id": "e", "issued_at": "t"}
            first["reason"] = "r"
        data = {"notice_id": notice_id, "kind": "warning", "decision_event_id": "d"}
        return self.add("NoticeIssued", {**data, "resend_of": first})

    def delivered(self, notice: RecordedEvent, channel: str, attempt: int) -> None:
        self.add("NoticeDelivered", self._outcome(notice, channel, attempt))

    def failed(self, notice: RecordedEvent, channel: str, attempt: int, final: bool) -> None:
        data = {**self._outcome(notice, channel, attempt), "error": f"try {attempt}"}
        self.add("NoticeDeliveryFailed", {**data, "final": final})

    def _outcome(self, notice: RecordedEvent, channel: str, attempt: int) -> dict[str, Any]:
        return {
            "notice_id": notice.data["notice_id"],
            "notice_event_id": notice.event_id,
            "channel": channel,
            "attempt": attempt,
        }


def test_a_notice_without_an_outcome_is_pending() -> None:
    log = Log()
    notice = log.notice("ntc_1")
    log.add("ViolationReported", {"violation_id": "vio_1"})  # passed over

    [found] = notice_deliveries(log.events)

    assert found.to_json() == {
        "account_id": "acct_1",
        "notice_id": "ntc_1",
        "notice_event_id": notice.event_id,
        "kind": "warning",
        "decision_event_id": "d",
        "issued_at": "2026-12-07T10:01:00.000000Z",
        "resend_of": None,
        "state": "pending",
        "channels": [],
    }


def test_each_channel_says_what_its_outcomes_came_to() -> None:
    log = Log()
    notice = log.notice("ntc_1")
    log.failed(notice, "webhook", 1, final=False)
    log.failed(notice, "email", 1, final=False)
    log.delivered(notice, "email", 2)
    log.failed(notice, "webhook", 2, final=True)

    [found] = notice_deliveries(log.events)

    assert found.state == "delivered"  # on one channel: the account has it
    assert [c.to_json() for c in found.channels] == [
        {
            "channel": "webhook",
            "state": "failed_for_good",
            "attempts": 2,
            "last_error": "try 2",
            "last_outcome_at": "2026-12-07T10:05:00.000000Z",
        },
        {
            "channel": "email",
            "state": "delivered",
            "attempts": 2,
            "last_error": "try 1",
            "last_outcome_at": "2026-12-07T10:04:00.000000Z",
        },
    ]


def test_a_notice_is_pending_while_a_channel_retries_and_failed_when_all_failed_for_good() -> None:
    log = Log()
    notice = log.notice("ntc_1")
    log.delivered(notice, "email", 1)
    log.failed(notice, "webhook", 1, final=False)
    assert notice_deliveries(log.events)[0].state == "pending"

    nobody = log.notice("ntc_2")
    log.failed(nobody, "none", 1, final=True)  # no contact: undeliverable
    [first, second] = notice_deliveries(log.events)
    assert (first.state, second.state) == ("pending", "failed")
    assert [(c.channel, c.state) for c in second.channels] == [("none", "failed_for_good")]


def test_a_copy_names_the_first_notice_and_an_outcome_of_no_notice_is_passed_over() -> None:
    log = Log()
    first = log.notice("ntc_1")
    log.failed(first, "none", 1, final=True)
    copy = log.notice("ntc_2", resend_of="ntc_1")
    log.delivered(copy, "email", 1)
    elsewhere = Log()
    elsewhere.ids = itertools.count(100)
    stray = elsewhere.notice("ntc_9")  # of no notice among the events
    log.delivered(stray, "email", 1)

    found = notice_deliveries(log.events)

    assert [(n.notice_id, n.resend_of, n.state) for n in found] == [
        ("ntc_1", None, "failed"),
        ("ntc_2", "ntc_1", "delivered"),
    ]


def test_the_logs_notices_of_every_account_and_those_issued_since_an_instant() -> None:
    """Read from the whole log (``enforcement notices --all``): each notice names its account;
    ``issued_since`` keeps those recorded then or later, with their outcomes."""
    log = Log()
    early = log.notice("ntc_1")  # recorded at T0 + 1 min
    log.account = "acct_2"
    other = log.notice("ntc_2")  # + 2 min
    log.account = "acct_1"
    log.failed(early, "none", 1, final=True)  # + 3 min
    log.delivered(other, "email", 1)  # + 4 min

    every = notice_deliveries(log.events)
    assert [(n.account_id, n.notice_id, n.state) for n in every] == [
        ("acct_1", "ntc_1", "failed"),
        ("acct_2", "ntc_2", "delivered"),
    ]
    since = notice_deliveries(log.events, T0 + timedelta(minutes=2))
    assert [(n.notice_id, n.state) for n in since] == [("ntc_2", "delivered")]
    in_another_zone = (T0 + timedelta(minutes=2)).astimezone(timezone(timedelta(hours=-5)))
    assert notice_deliveries(log.events, in_another_zone) == since
    assert notice_deliveries(log.events, T0 + timedelta(minutes=2, microseconds=1)) == []


OUTCOMES = st.lists(
    st.tuples(
        st.sampled_from(["email", "webhook"]),
        st.sampled_from(["delivered", "failed", "final"]),
        st.integers(min_value=1, max_value=6),
    ),
    max_size=12,
)


@given(outcomes=OUTCOMES)
def test_a_delivery_wins_a_final_failure_ends_the_tries_and_attempts_are_the_highest(
    outcomes: list[tuple[str, str, int]],
) -> None:
    """Whatever order the outcomes come in (copies of a message may race): a channel with a
    delivery is delivered, else one with a final failure failed for good, else retrying; its
    attempts are the highest recorded, its error the last failure's."""
    log = Log()
    notice = log.notice("ntc_1")
    for channel, outcome, attempt in outcomes:
        if outcome == "delivered":
            log.delivered(notice, channel, attempt)
        else:
            log.failed(notice, channel, attempt, final=outcome == "final")

    [found] = notice_deliveries(log.events)

    seen = list(dict.fromkeys(channel for channel, _, _ in outcomes))
    assert [c.channel for c in found.channels] == seen
    for c in found.channels:
        mine = [(o, a) for ch, o, a in outcomes if ch == c.channel]
        kinds = {o for o, _ in mine}
        expected = (
            "delivered"
            if "delivered" in kinds
            else "failed_for_good"
            if "final" in kinds
            else "retrying"
        )
        assert c.state == expected
        assert c.attempts == max(a for _, a in mine)
        failures = [a for o, a in mine if o != "delivered"]
        assert c.last_error == (f"try {failures[-1]}" if failures else None)
    states = {c.state for c in found.channels}
    assert found.state == (
        "pending"
        if not states or "retrying" in states
        else "delivered"
        if "delivered" in states
        else "failed"
    )
