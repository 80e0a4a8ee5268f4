"""The relay: a checkpointed, gap-safe subscription that turns decision events into messages.

It reads the log by position after its checkpoint (position order is commit order, see
``events.write_locks.take_append_lock``), enqueues what each event calls for, and only then
advances the checkpoint. A crash between the two re-enqueues some messages: delivery is at least
once and every actor is idempotent, keyed by the event id. If the broker is down, the relay
stops advancing and catches up when it returns; nothing is lost, and none of the messages it
enqueued before the failure is sent again (``run_once``).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from enforcement.workers.retrying import CameBack, log_failure, retry_delay, wait_to_retry
from events import EventStore, RecordedEvent
from events.dialects import write_connection
from events.timefmt import parse_time, to_utc
from projections.aup_events import resend_channels

log = logging.getLogger("enforcement.relay")
CHECKPOINT = "relay"

GATE_EVENTS = frozenset(
    {
        "RateLimitsConfigured",
        "ThrottleApplied",
        "ThrottleLifted",
        "AccountSuspended",
        "SuspensionEnded",
        "AccountReinstated",
        "AccountTerminated",
    }
)


@dataclass(frozen=True, slots=True)
class Message:
    """What to enqueue: an actor, its arguments, and an optional due time."""

    actor: str
    args: tuple[Any, ...]
    due_at: datetime | None = None


def messages_for(event: RecordedEvent, channels: tuple[str, ...]) -> list[Message]:
    """The messages an event calls for (pure)."""
    out: list[Message] = []
    if event.type == "NoticeIssued":
        # A copy an operator sent on some channels only goes out on those.
        chosen = resend_channels(event.data)
        out += [
            Message("deliver_notice", (event.event_id, channel))
            for channel in channels
            if chosen is None or channel in chosen
        ]
    elif event.type == "RemediationRequested":
        out.append(
            Message(
                "expire_remediation",
                (event.account_id, event.data["remediation_id"]),
                parse_time(event.data["due_at"]),
            )
        )
    elif event.type == "AccountSuspended" and event.data.get("until"):
        out.append(
            Message(
                "end_suspension",
                (event.account_id, event.data["suspension_id"]),
                parse_time(event.data["until"]),
            )
        )
    if event.type in GATE_EVENTS:
        out.append(Message("apply_gate_state", (event.event_id,)))
    return out


Enqueue = Callable[[Message], None]


class Relay:
    """Follows the log from its checkpoint and enqueues messages; one leader at a time."""

    def __init__(
        self,
        store: EventStore,
        enqueue: Enqueue,
        channels: tuple[str, ...],
        page_size: int = 500,
        checkpoint: str = CHECKPOINT,
    ):
        self.store = store
        self.enqueue = enqueue
        self.channels = channels
        self.page_size = page_size
        self.checkpoint = checkpoint
        # Asked before a page is enqueued: whether this relay may still send (it still leads).
        self.guard: Callable[[], bool] | None = None
        self._begun = 0  # the last position of the last page this relay began to enqueue
        # The messages the broker took past the checkpoint: every message of the events before
        # this position, and the first ``n`` of the event at it, whose id is the third
        # (``run_once``, ``_taken_in``).
        self._taken: tuple[int, int, str] = (0, 0, "")

    def reached(self) -> int:
        """The position up to which this relay sent, or began to send, every message: its
        checkpoint, or past it the end of the page it is enqueueing (or failed to)."""
        return max(self.position(), self._begun)

    def position(self) -> int:
        with self.store.engine.connect() as conn:
            return self.store.get_checkpoint(conn, self.checkpoint)

    def run_once(self) -> int:
        """Relay one page; returns how many events it passed over. After a failure (the broker
        or the database away) the page is relayed again from the checkpoint, but a message
        the broker took (its enqueue returned) is not sent again by this relay: only the one
        whose enqueue failed may be sent twice, when the broker took it after all (a timeout:
        it reached Redis, or reaches it once a partition heals)."""
        after = self.position()
        page = self.store.read_all(after, self.page_size)
        if not page:
            return 0
        if self.guard is not None and not self.guard():
            return 0  # another process may lead now: it sends these
        self._begun = max(self._begun, page[-1].position)
        taken = self._taken_in(page)
        for event in page:
            for n, message in enumerate(messages_for(event, self.channels)):
                if (event.position, n) < taken:
                    continue  # taken by the broker before a failure ended the last attempt
                self.enqueue(message)
                self._taken = (event.position, n + 1, event.event_id)
        with write_connection(self.store.engine) as conn, conn.begin():
            self.store.advance_checkpoint(conn, self.checkpoint, page[-1].position)
        return len(page)

    def _taken_in(self, page: list[RecordedEvent]) -> tuple[int, int]:
        """(position, n): the broker took every message of ``page`` before the ``n``-th of the
        event at that position; (0, 0): none of them. Only if that event is still in the page
        as it was enqueued: a log that lost its last commits (a failover to a replica that had
        not received them) gives their positions to other events, whose messages nobody sent."""
        position, n, event_id = self._taken
        if page[0].position <= position <= page[-1].position:
            for event in page:
                if event.position == position:
                    return (position, n) if event.event_id == event_id else (0, 0)
        return (0, 0)

    def run(
        self,
        stop: threading.Event,
        idle_seconds: float = 0.05,
        error_seconds: float = 1.0,
        answers_again: Callable[[BaseException], bool | None] | None = None,
        probe_seconds: float = 1.0,
    ) -> None:
        """Relay until ``stop``; after a failure (broker or database down) it retries from the
        checkpoint, which does not move past what the broker could not take. (A broker that
        lost what it held is the leader's look to see: ``redis_watch.RedisWatch``.) The retries back
        off (``retrying``); with ``answers_again`` (asked every ``probe_seconds`` while one
        waits: whether what raised the failure answers again), one is made as soon as what
        failed comes back (``CameBack``: it answers after a probe saw it away): a gate change
        committed during an outage waits for the relay (``runtime``), and a backoff of up to
        15 s would outlast the outage by as much."""
        came_back = None if answers_again is None else CameBack(answers_again)
        failures = 0
        while not stop.is_set():
            try:
                moved = self.run_once()
            except Exception as exc:
                failures += 1
                delay = retry_delay(failures, first=error_seconds)
                log_failure(log, "relay failed", exc, failures, delay)  # from the checkpoint
                wait_to_retry(stop, delay, exc, came_back, probe_seconds)
                continue
            failures = 0
            if came_back is not None:
                came_back.succeeded()
            if moved < self.page_size:
                stop.wait(idle_seconds)


def delay_ms(due_at: datetime | None, now: datetime) -> int | None:
    """Milliseconds until ``due_at``, rounded up: a delayed message must never arrive before its
    deadline (the use case would find it not yet due and do nothing). The extra millisecond
    covers the broker truncating its own clock to whole milliseconds when it sets the eta."""
    if due_at is None:
        return None
    return max(0, math.ceil((to_utc(due_at) - to_utc(now)) / timedelta(milliseconds=1)) + 1)
