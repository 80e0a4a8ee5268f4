"""``projections.notices``: each notice of an account and how its delivery went on each channel,
folded from the notices and their outcome events (pure)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from events import RecordedEvent
from projections.notices import CHANNEL_STATES, NOTICE_STATES, notice_deliveries, with_awaited

T0 = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)


class Log:
    """Events as the store records them (positions and times rising), of ``acct_1`` unless
    ``account`` says otherwise."""

    def __init__(self) -> None:
        self.events: list[RecordedEvent] = []
        self.ids = itertools.count(1)
        self.account = "acct_1"

    def add(self, event_type: str, data: dict[str, Any], cause: str | None = None) -> RecordedEvent:
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
            {"causation_id": cause},
            T0,
            T0 + timedelta(minutes=position),
            "",
            "",
        )
        self.events.append(event)
        return event

    def notice(self, notice_id: str, copy_of: RecordedEvent | None = None) -> RecordedEvent:
        """A notice of the policy's (caused by its decision), or an operator's copy of
        ``copy_of`` (caused by it, naming the first notice)."""
        data = {"notice_id": notice_id, "kind": "warning", "decision_event_id": "d"}
        if copy_of is None:
            return self.add("NoticeIssued", {**data, "resend_of": None}, cause="d")
        first = copy_of.data["resend_of"] or {
            "notice_id": copy_of.data["notice_id"],
            "notice_event_id": copy_of.event_id,
            "issued_at": "t",
        }
        resend_of = {**first, "reason": "r", "channels": None}
        return self.add("NoticeIssued", {**data, "resend_of": resend_of}, cause=copy_of.event_id)

    def delivered(self, notice: RecordedEvent, channel: str, attempt: int) -> None:
        self.add("NoticeDelivered", self._outcome(notice, channel, attempt), notice.event_id)

    def failed(self, notice: RecordedEvent, channel: str, attempt: int, final: bool) -> None:
        data = {**self._outcome(notice, channel, attempt), "error": f"try {attempt}"}
        self.add("NoticeDeliveryFailed", {**data, "final": final}, notice.event_id)

    def _outcome(self, notice: RecordedEvent, channel: str, attempt: int) -> dict[str, Any]:
        return {
            "notice_id": notice.data["notice_id"],
            "notice_event_id": notice.event_id,
            "channel": channel,
            "attempt": attempt,
        }


def states(log: Log) -> list[tuple[str, str]]:
    return [(n.notice_id, n.state) for n in notice_deliveries(log.events)]


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
        "chosen_channels": None,
        "sent_again_as": [],
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
    log.failed(notice, "email", 3, final=False)  # a racing copy's, after the delivery

    [found] = notice_deliveries(log.events)

    assert found.state == "partly_delivered"  # the account has it, on one channel
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
            "attempts": 3,
            "last_error": "try 1",  # the failure after the delivery changes nothing
            "last_outcome_at": "2026-12-07T10:06:00.000000Z",
        },
    ]


def test_a_notice_is_pending_while_a_channel_retries_and_failed_when_all_failed_for_good() -> None:
    log = Log()
    notice = log.notice("ntc_1")
    log.delivered(notice, "email", 1)
    log.failed(notice, "webhook", 1, final=False)
    assert states(log) == [("ntc_1", "pending")]
    log.delivered(notice, "webhook", 2)
    assert states(log) == [("ntc_1", "delivered")]

    nobody = log.notice("ntc_2")
    log.failed(nobody, "none", 1, final=True)  # no contact: undeliverable
    refused = log.notice("ntc_3")
    log.failed(refused, "webhook", 1, final=True)
    assert states(log) == [("ntc_1", "delivered"), ("ntc_2", "failed"), ("ntc_3", "failed")]


def test_no_contact_ends_a_notice_whose_channel_was_retrying() -> None:
    """A contact removed while a try was due: the next try finds none, recorded on the channel
    "none", and no channel is tried again (the re-send passes such a notice over)."""
    log = Log()
    notice = log.notice("ntc_1")
    log.failed(notice, "email", 1, final=False)
    log.failed(notice, "none", 2, final=True)

    [found] = notice_deliveries(log.events)
    assert found.state == "failed"
    assert [(c.channel, c.state) for c in found.channels] == [
        ("email", "retrying"),
        ("none", "failed_for_good"),
    ]


def test_a_failed_notice_sent_again_says_so_and_names_its_copies() -> None:
    log = Log()
    first = log.notice("ntc_1")
    log.failed(first, "none", 1, final=True)
    copy = log.notice("ntc_2", copy_of=first)
    log.failed(copy, "webhook", 1, final=True)
    again = log.notice("ntc_3", copy_of=copy)  # a copy of the copy: it names the first
    delivered = log.notice("ntc_4")
    log.delivered(delivered, "email", 1)
    log.notice("ntc_5", copy_of=delivered)  # the account said it never arrived

    found = {n.notice_id: n for n in notice_deliveries(log.events)}

    assert [(n, f.state, f.sent_again_as, f.resend_of) for n, f in found.items()] == [
        ("ntc_1", "sent_again", ["ntc_2"], None),
        ("ntc_2", "sent_again", ["ntc_3"], "ntc_1"),
        ("ntc_3", "pending", [], "ntc_1"),
        ("ntc_4", "delivered", ["ntc_5"], None),
        ("ntc_5", "pending", [], "ntc_4"),
    ]
    assert again.metadata["causation_id"] == copy.event_id


def test_a_copy_sent_on_some_channels_awaits_only_those() -> None:
    log = Log()
    first = log.notice("ntc_1")
    log.delivered(first, "email", 1)
    log.failed(first, "webhook", 1, final=True)
    copy = log.notice("ntc_2", copy_of=first)
    copy.data["resend_of"]["channels"] = ["webhook"]

    found = with_awaited(notice_deliveries(log.events), lambda *_: ("email", "webhook"))

    assert [(n.notice_id, n.state, n.chosen_channels) for n in found] == [
        ("ntc_1", "partly_delivered", None),
        ("ntc_2", "pending", ["webhook"]),
    ]
    assert [(c.channel, c.state) for c in found[1].channels] == [("webhook", "awaiting")]
    assert found[1].to_json()["chosen_channels"] == ["webhook"]


def test_an_outcome_of_no_notice_among_the_events_is_passed_over() -> None:
    log = Log()
    log.notice("ntc_1")
    elsewhere = Log()
    elsewhere.ids = itertools.count(100)
    stray = elsewhere.notice("ntc_9")
    log.delivered(stray, "email", 1)

    assert states(log) == [("ntc_1", "pending")]


def test_the_channels_without_an_outcome_are_awaited() -> None:
    """Which channels a notice goes out on is not in the log: ``channels_for`` (the contact)
    tells; one without an outcome keeps the notice pending. A notice whose account had no
    contact awaits nothing."""
    log = Log()
    half = log.notice("ntc_1")
    log.failed(half, "email", 1, final=True)
    nobody = log.notice("ntc_2")
    log.failed(nobody, "none", 1, final=True)
    log.account = "acct_2"
    log.notice("ntc_3")
    asked: list[tuple[str, datetime, bool]] = []

    def channels_for(account: str, issued: datetime, settled: bool) -> tuple[str, ...]:
        asked.append((account, issued, settled))
        return ("email", "webhook") if account == "acct_1" else ("email",)

    found = with_awaited(notice_deliveries(log.events), channels_for)

    assert [(n.notice_id, n.state) for n in found] == [
        ("ntc_1", "pending"),
        ("ntc_2", "failed"),
        ("ntc_3", "pending"),
    ]
    assert [(c.channel, c.state) for c in found[0].channels] == [
        ("email", "failed_for_good"),
        ("webhook", "awaiting"),
    ]
    assert found[0].channels[1].to_json() == {
        "channel": "webhook",
        "state": "awaiting",
        "attempts": 0,
        "last_error": None,
        "last_outcome_at": None,
    }
    assert [(c.channel, c.state) for c in found[2].channels] == [("email", "awaiting")]
    assert asked == [
        ("acct_1", T0 + timedelta(minutes=1), False),
        ("acct_2", T0 + timedelta(minutes=5), False),
    ]


def test_a_notice_delivered_on_a_channel_or_sent_again_is_asked_for_as_settled() -> None:
    """A notice a channel delivered, or that an operator sent a copy of, is settled: the
    contact's channels set after it (``channels_for`` as the contact reckons them) are not
    awaited for it; one failed on every channel and not copied is not settled."""
    log = Log()
    reached = log.notice("ntc_1")
    log.failed(reached, "webhook", 1, final=False)
    log.delivered(reached, "webhook", 2)
    failed = log.notice("ntc_2")
    log.failed(failed, "webhook", 5, final=True)
    copied = log.notice("ntc_3")
    log.failed(copied, "webhook", 5, final=True)
    log.notice("ntc_4", copy_of=copied)
    asked: list[bool] = []

    def channels_for(account: str, issued: datetime, settled: bool) -> tuple[str, ...]:
        asked.append(settled)
        return () if settled else ("email",)  # the webhook replaced by an e-mail address since

    found = with_awaited(notice_deliveries(log.events), channels_for)

    assert [(n.notice_id, n.state) for n in found] == [
        ("ntc_1", "delivered"),
        ("ntc_2", "pending"),
        ("ntc_3", "sent_again"),
        ("ntc_4", "pending"),
    ]
    assert [c.channel for c in found[1].channels] == ["webhook", "email"]
    assert [c.channel for c in found[2].channels] == ["webhook"]
    assert asked == [True, False, True, False]


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
    log.notice("ntc_3", copy_of=early)  # + 5 min

    every = notice_deliveries(log.events)
    assert [(n.account_id, n.notice_id, n.state) for n in every] == [
        ("acct_1", "ntc_1", "sent_again"),
        ("acct_2", "ntc_2", "delivered"),
        ("acct_1", "ntc_3", "pending"),
    ]
    since = notice_deliveries(log.events, T0 + timedelta(minutes=2))
    assert [(n.notice_id, n.state) for n in since] == [("ntc_2", "delivered"), ("ntc_3", "pending")]
    in_another_zone = (T0 + timedelta(minutes=2)).astimezone(timezone(timedelta(hours=-5)))
    assert notice_deliveries(log.events, in_another_zone) == since
    later = T0 + timedelta(minutes=2, microseconds=1)
    assert [n.notice_id for n in notice_deliveries(log.events, later)] == ["ntc_3"]


OUTCOMES = st.lists(
    st.tuples(
        st.sampled_from(["email", "webhook", "none"]),
        st.sampled_from(["delivered", "failed", "final"]),
        st.integers(min_value=1, max_value=6),
    ),
    max_size=12,
)


@given(outcomes=OUTCOMES, awaited=st.sets(st.sampled_from(["email", "webhook"])))
def test_a_delivery_wins_a_final_failure_ends_the_tries_and_attempts_are_the_highest(
    outcomes: list[tuple[str, str, int]], awaited: set[str]
) -> None:
    """Whatever order the outcomes come in (copies of a message may race): a channel with a
    delivery is delivered, else one with a final failure failed for good, else retrying; its
    attempts are the highest recorded, its error the last failure's before any delivery. The
    notice is pending while a channel retries or awaits, unless the account had no contact."""
    log = Log()
    notice = log.notice("ntc_1")
    for channel, outcome, attempt in outcomes:
        if outcome == "delivered":
            log.delivered(notice, channel, attempt)
        else:
            log.failed(notice, channel, attempt, final=outcome == "final")

    [found] = with_awaited(notice_deliveries(log.events), lambda *_: tuple(sorted(awaited)))

    seen = list(dict.fromkeys(channel for channel, _, _ in outcomes))
    over = "none" in seen
    waiting = [] if over else sorted(awaited - set(seen))
    assert [c.channel for c in found.channels] == seen + waiting
    for c in found.channels[len(seen) :]:
        assert (c.state, c.attempts, c.last_error, c.last_outcome_at) == ("awaiting", 0, None, None)
    for c in found.channels[: len(seen)]:
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
        before = list(itertools.takewhile(lambda oa: oa[0] != "delivered", mine))
        assert c.last_error == (f"try {before[-1][1]}" if before else None)
    states = {c.state for c in found.channels}
    assert states <= set(CHANNEL_STATES) and found.state in NOTICE_STATES
    if not over and (not states or states & {"retrying", "awaiting"}):
        assert found.state == "pending"
    elif "delivered" in states:
        partly = "failed_for_good" in states
        assert found.state == ("partly_delivered" if partly else "delivered")
    else:
        assert found.state == "failed"
