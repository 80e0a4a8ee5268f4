"""Each notice of an account and how its delivery went, folded from its events (pure).

A notice (``NoticeIssued``) goes out on each channel of the account's contact; every try ends in
an outcome event naming the notice's event id: ``NoticeDelivered``, or ``NoticeDeliveryFailed``
with ``final`` when no try follows (its retries spent, a refused target, a target removed from
the contact since a failed try; no contact at all: channel ``none``, which ends the notice).
Per channel, what holds after its outcomes so far:

- ``delivered``: a try delivered it (a later failure, from a copy of a message that raced it,
  changes nothing: the account has it);
- ``failed_for_good``: a final failure and no delivery: nothing more is tried;
- ``retrying``: failures only, none final: another try is due;
- ``awaiting``: no outcome yet on a channel the notice goes out on (``with_awaited``: which
  channels those are is not in the log; the contact tells, as the re-send of the notices
  without an outcome reckons them, and whether the notice is settled: delivered on a
  channel, or copied by a copy that will reach the account in its place).

A notice is ``pending`` while a channel is ``retrying`` or ``awaiting`` (or it has no channel
at all), unless its account had no contact (``none``): then it is over. Once over, it is
``delivered`` when every channel with an outcome delivered it, ``partly_delivered`` when one
did and another failed for good, ``failed`` when none did, and ``sent_again`` when it failed
and an operator sent a copy of it since (``POST …/notices/{notice_id}/resend``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from events import RecordedEvent
from events.timefmt import format_time, parse_time, to_utc
from projections.aup_events import resend_channels

# A delivery try's outcome names the notice's event id (``notice_event_id``).
OUTCOME_TYPES: tuple[str, ...] = ("NoticeDelivered", "NoticeDeliveryFailed")
NOTICE_TYPES: tuple[str, ...] = ("NoticeIssued", *OUTCOME_TYPES)
CHANNEL_STATES: tuple[str, ...] = ("delivered", "failed_for_good", "retrying", "awaiting")
NOTICE_STATES: tuple[str, ...] = (
    "pending",
    "delivered",
    "partly_delivered",
    "failed",
    "sent_again",
)
# The channel of an outcome recorded when the account had no contact data at all.
NO_CHANNEL = "none"


@dataclass(slots=True)
class ChannelDelivery:
    """One channel's outcomes so far."""

    channel: str
    state: str
    attempts: int  # the highest attempt number recorded (0: none yet)
    last_error: str | None  # the last failure's error, None when none failed
    last_outcome_at: str | None  # when the last outcome was recorded (None: none yet)

    def to_json(self) -> dict[str, Any]:
        return {
            "channel": self.channel,
            "state": self.state,
            "attempts": self.attempts,
            "last_error": self.last_error,
            "last_outcome_at": self.last_outcome_at,
        }


@dataclass(slots=True)
class NoticeDeliveries:
    """A notice and its channels, in the order of their first outcome (those ``awaiting``
    last)."""

    account_id: str
    notice_id: str
    notice_event_id: str
    kind: str
    decision_event_id: str
    issued_at: str
    resend_of: str | None  # the first notice's id, for a copy an operator sent again
    chosen_channels: list[str] | None = None  # a copy's, when sent on some channels only
    channels: list[ChannelDelivery] = field(default_factory=list)
    sent_again_as: list[str] = field(default_factory=list)  # the copies made of this one

    @property
    def state(self) -> str:
        states = {c.state for c in self.channels}
        over = any(c.channel == NO_CHANNEL for c in self.channels)
        if not over and (not states or states & {"retrying", "awaiting"}):
            return "pending"
        if "delivered" in states:
            return "partly_delivered" if "failed_for_good" in states else "delivered"
        return "sent_again" if self.sent_again_as else "failed"

    def to_json(self) -> dict[str, Any]:
        return {
            "account_id": self.account_id,
            "notice_id": self.notice_id,
            "notice_event_id": self.notice_event_id,
            "kind": self.kind,
            "decision_event_id": self.decision_event_id,
            "issued_at": self.issued_at,
            "resend_of": self.resend_of,
            "chosen_channels": self.chosen_channels,
            "sent_again_as": list(self.sent_again_as),
            "state": self.state,
            "channels": [c.to_json() for c in self.channels],
        }


def notice_deliveries(
    events: Iterable[RecordedEvent], issued_since: datetime | None = None
) -> list[NoticeDeliveries]:
    """The notices among ``events`` (one account's in version order, or the log's in position
    order) with their channels' outcomes, oldest notice first; with ``issued_since``, only
    those recorded then or later. Other events, and an outcome of a notice not among them,
    are passed over. A copy (``resend_of``) is named among the copies of the notice it was
    made from (its ``causation_id``)."""
    since = None if issued_since is None else to_utc(issued_since)
    notices: dict[str, NoticeDeliveries] = {}
    for event in events:
        data = event.data
        if event.type == "NoticeIssued":
            first = data.get("resend_of")
            source = notices.get(str(event.metadata.get("causation_id")))
            if isinstance(first, dict) and source is not None:
                source.sent_again_as.append(data["notice_id"])
            if since is not None and to_utc(event.recorded_at) < since:
                continue
            notices[event.event_id] = NoticeDeliveries(
                event.account_id,
                data["notice_id"],
                event.event_id,
                data["kind"],
                data["decision_event_id"],
                format_time(event.recorded_at),
                None if not isinstance(first, dict) else first.get("notice_id"),
                resend_channels(data),
            )
        elif event.type in OUTCOME_TYPES:
            notice = notices.get(data["notice_event_id"])
            if notice is not None:
                _apply_outcome(notice, event)
    return list(notices.values())


def with_awaited(
    notices: list[NoticeDeliveries],
    channels_for: Callable[[str, datetime, bool], tuple[str, ...]],
) -> list[NoticeDeliveries]:
    """``notices``, each with an ``awaiting`` channel for every channel it goes out on
    (``channels_for(account, when it was issued, whether it is settled)``, of a copy's chosen
    ones) that has no outcome yet; none for a notice whose account had no contact (``none``:
    it is over). A settled notice (``settled_notices``) gets none from a contact whose
    channels all replaced its own since."""
    settled = _settled(notices)
    for notice in notices:
        named = {c.channel for c in notice.channels}
        if NO_CHANNEL in named:
            continue
        chosen = notice.chosen_channels
        issued = parse_time(notice.issued_at)
        for channel in channels_for(notice.account_id, issued, notice.notice_id in settled):
            if channel not in named and (chosen is None or channel in chosen):
                notice.channels.append(ChannelDelivery(channel, "awaiting", 0, None, None))
    return notices


def _settled(notices: list[NoticeDeliveries]) -> set[str]:
    """The notice ids of ``notices`` (in log order) that are settled (``with_awaited``)."""
    delivered = {n.notice_id for n in notices if any(c.state == "delivered" for c in n.channels)}
    copies = [(n.resend_of, n.notice_id, n.chosen_channels) for n in notices if n.resend_of]
    return settled_notices(delivered, copies)


def settled_notices(delivered: set[str], copies: Iterable[Sequence[Any]]) -> set[str]:
    """The ids of the notices that are settled: a contact whose channels all replaced theirs
    since is not sent them again (``with_awaited`` here, the re-send's reckoning in
    ``workers.recovery``). A notice is settled once a channel delivered it (``delivered``), or
    a later copy of the same first notice (``copies``: first notice, copy, its chosen
    channels, in log order) will reach the account in its place: one sent on every channel
    (it goes out on the new ones itself) or one delivered. That settles the first notice and
    every copy of it made before; so after a contact change the account gets the last such
    copy, once. A copy sent on some channels only that none delivered settles nothing: it
    goes out on no new channel, so the notice it copies does."""
    found = set(delivered)
    made: dict[str, list[str]] = {}  # the copies of each first notice so far
    for first, copy, chosen in copies:
        family = made.setdefault(str(first), [])
        if chosen is None or str(copy) in delivered:
            found.add(str(first))
            found.update(family)
        family.append(str(copy))
    return found


def _apply_outcome(notice: NoticeDeliveries, event: RecordedEvent) -> None:
    data = event.data
    channel = next((c for c in notice.channels if c.channel == data["channel"]), None)
    if channel is None:
        channel = ChannelDelivery(data["channel"], "retrying", 0, None, None)
        notice.channels.append(channel)
    channel.attempts = max(channel.attempts, data["attempt"])
    channel.last_outcome_at = format_time(event.recorded_at)
    if event.type == "NoticeDelivered":
        channel.state = "delivered"
        return
    if channel.state == "delivered":
        return  # a racing copy's failure: the account has it
    channel.last_error = data["error"]
    if data["final"]:
        channel.state = "failed_for_good"
