"""Each notice of an account and how its delivery went, folded from its events (pure).

A notice (``NoticeIssued``) is tried on each channel of the account's contact; every try ends in
an outcome event naming the notice's event id: ``NoticeDelivered``, or ``NoticeDeliveryFailed``
with ``final`` when no try follows (its retries spent, a refused target, no contact: channel
``none``). Per channel, what holds after its outcomes so far:

- ``delivered``: a try delivered it (a later failure, from a copy of a message that raced it,
  changes nothing: the account has it);
- ``failed_for_good``: a final failure and no delivery: nothing more is tried (send the notice
  again, ``POST …/notices/{notice_id}/resend``, once its cause is mended);
- ``retrying``: failures only, none final: another try is due.

A notice is ``pending`` while it has no outcome or a channel is still ``retrying``,
``delivered`` once every channel with an outcome has one and one of them delivered it, and
``failed`` when every channel failed for good.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from events import RecordedEvent
from events.timefmt import format_time, to_utc

NOTICE_TYPES: tuple[str, ...] = ("NoticeIssued", "NoticeDelivered", "NoticeDeliveryFailed")
CHANNEL_STATES: tuple[str, ...] = ("delivered", "failed_for_good", "retrying")
NOTICE_STATES: tuple[str, ...] = ("pending", "delivered", "failed")


@dataclass(slots=True)
class ChannelDelivery:
    """One channel's outcomes so far."""

    channel: str
    state: str
    attempts: int  # the highest attempt number recorded
    last_error: str | None  # the last failure's error, None when none failed
    last_outcome_at: str  # when the last outcome was recorded

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
    """A notice and its channels' outcomes, in the order their first outcome was recorded."""

    account_id: str
    notice_id: str
    notice_event_id: str
    kind: str
    decision_event_id: str
    issued_at: str
    resend_of: str | None  # the first notice's id, for a copy an operator sent again
    channels: list[ChannelDelivery] = field(default_factory=list)

    @property
    def state(self) -> str:
        states = {c.state for c in self.channels}
        if not states or "retrying" in states:
            return "pending"
        return "delivered" if "delivered" in states else "failed"

    def to_json(self) -> dict[str, Any]:
        return {
            "account_id": self.account_id,
            "notice_id": self.notice_id,
            "notice_event_id": self.notice_event_id,
            "kind": self.kind,
            "decision_event_id": self.decision_event_id,
            "issued_at": self.issued_at,
            "resend_of": self.resend_of,
            "state": self.state,
            "channels": [c.to_json() for c in self.channels],
        }


def notice_deliveries(
    events: Iterable[RecordedEvent], issued_since: datetime | None = None
) -> list[NoticeDeliveries]:
    """The notices among ``events`` (one account's in version order, or the log's in position
    order) with their channels' outcomes, oldest notice first; with ``issued_since``, only
    those recorded then or later. Other events, and an outcome of a notice not among them,
    are passed over."""
    since = None if issued_since is None else to_utc(issued_since)
    notices: dict[str, NoticeDeliveries] = {}
    for event in events:
        data = event.data
        if event.type == "NoticeIssued":
            if since is not None and to_utc(event.recorded_at) < since:
                continue
            first = data.get("resend_of")
            notices[event.event_id] = NoticeDeliveries(
                event.account_id,
                data["notice_id"],
                event.event_id,
                data["kind"],
                data["decision_event_id"],
                format_time(event.recorded_at),
                None if not isinstance(first, dict) else first.get("notice_id"),
            )
        elif event.type in ("NoticeDelivered", "NoticeDeliveryFailed"):
            notice = notices.get(data["notice_event_id"])
            if notice is not None:
                _apply_outcome(notice, event)
    return list(notices.values())


def _apply_outcome(notice: NoticeDeliveries, event: RecordedEvent) -> None:
    data = event.data
    channel = next((c for c in notice.channels if c.channel == data["channel"]), None)
    if channel is None:
        channel = ChannelDelivery(data["channel"], "retrying", 0, None, "")
        notice.channels.append(channel)
    channel.attempts = max(channel.attempts, data["attempt"])
    channel.last_outcome_at = format_time(event.recorded_at)
    if event.type == "NoticeDelivered":
        channel.state = "delivered"
        return
    channel.last_error = data["error"]
    if channel.state == "delivered":
        return
    if data["final"]:
        channel.state = "failed_for_good"
