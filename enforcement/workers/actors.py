"""The Dramatiq actors: short functions that call a use case or an adapter.

Declared against an explicit broker (no global broker at import time). Retries and backoff are
declared on the actors; every actor is idempotent, keyed by the event id it was sent for.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dramatiq
from dramatiq.middleware import CurrentMessage, TimeLimitExceeded

from enforcement.notices.delivery import DeliveryFailed, NoticeDelivery
from enforcement.service import Actor, EnforcementService
from enforcement.workers.relay import Message, delay_ms

log = logging.getLogger("enforcement.workers")
SCHEDULER = Actor(name="scheduler", correlation_id="deadline", source="worker")
QUEUE = "enforcement"
# Deadline messages wait days in the broker's delay queue, and a consumer holds only so many
# delayed messages at a time (2 per worker thread in embedded mode): sharing a delay queue with
# notice retries, a handful of pending deadlines would hold every retry back until they fire.
# The sweep covers a deadline message that waits behind others on its own queue.
DEADLINE_QUEUE = "deadlines"
# How long a try to deliver a notice may run before Dramatiq cuts it off; well beyond the
# deadlines of an e-mail and a webhook attempt, which end a try first and record its failure.
# The workers give it more: room to wait for another copy's delivery (``runtime.build_actors``).
NOTICE_TIME_LIMIT_MS = 60_000


@dataclass
class Actors:
    broker: dramatiq.Broker
    by_name: dict[str, dramatiq.Actor[Any, Any]]
    clock: Any
    delivery: NoticeDelivery  # what ``deliver_notice`` delivers with

    def enqueue(self, message: Message) -> None:
        actor = self.by_name[message.actor]
        actor.send_with_options(args=message.args, delay=delay_ms(message.due_at, self.clock()))


def register_actors(
    broker: dramatiq.Broker,
    service: EnforcementService,
    delivery: NoticeDelivery,
    gate_applier: Any | None,
    *,
    notice_retries: int,
    min_backoff_ms: int,
    max_backoff_ms: int,
    notice_time_limit_ms: int = NOTICE_TIME_LIMIT_MS,
) -> Actors:
    """Declare the actors on ``broker`` and return them by name."""

    def deliver_notice(notice_event_id: str, channel: str) -> None:
        message = CurrentMessage.get_current_message()
        retries = int(message.options.get("retries", 0)) if message is not None else 0
        message_id = None if message is None else message.message_id
        try:
            # Numbered on from the failures recorded (``NoticeDelivery.deliver``); after a
            # final one (a second message for the notice, e.g. from a relay that had not yet
            # seen it lost the lead) nothing is sent.
            outcome = delivery.deliver(
                notice_event_id, channel, retries, notice_retries, message_id=message_id
            )
            log.info("notice %s via %s: %s", notice_event_id, channel, outcome)
        except DeliveryFailed as exc:
            # Recorded (NoticeDeliveryFailed) and expected: one line naming the notice, then
            # Dramatiq's Retry, which backs off as any failure does but is not logged as an
            # unhandled exception with a traceback for every refused or timed-out try.
            log.warning(
                "notice %s via %s: a try failed (%s); it is tried again",
                notice_event_id,
                channel,
                exc,
            )
            raise dramatiq.Retry(str(exc)) from exc
        except TimeLimitExceeded:
            # A BaseException, which ``except Exception`` misses. Dramatiq's time-limit line
            # names only the thread; say which notice and channel, and what comes of it.
            log.error(
                "notice %s via %s: %s was cut off at its time limit (%d ms) before it could "
                "record an outcome; %s",
                notice_event_id,
                channel,
                "its last try" if retries >= notice_retries else f"try {retries + 1}",
                notice_time_limit_ms,
                "the leader's lost-retry scan looks at it again"
                if retries >= notice_retries
                else "it is tried again",
            )
            raise
        except Exception:
            if retries >= notice_retries:
                # Dramatiq only says "Retries exceeded" with its message id: name the notice.
                log.error(
                    "notice %s via %s: its last try failed before it could record an "
                    "outcome; the leader's lost-retry scan looks at it again",
                    notice_event_id,
                    channel,
                )
            raise

    def expire_remediation(account_id: str, remediation_id: str) -> None:
        service.expire_remediation(account_id, remediation_id, SCHEDULER)

    def end_suspension(account_id: str, suspension_id: str) -> None:
        service.end_suspension(account_id, suspension_id, SCHEDULER)

    def apply_gate_state(event_id: str) -> None:
        if gate_applier is not None:
            gate_applier(event_id)

    def declare(fn: Callable[..., None], queue: str, **options: Any) -> dramatiq.Actor[Any, None]:
        decorate = dramatiq.actor(
            actor_name=fn.__name__, queue_name=queue, broker=broker, **options
        )
        return decorate(fn)

    notice_options = {
        "max_retries": notice_retries,
        "min_backoff": min_backoff_ms,
        "max_backoff": max_backoff_ms,
        "time_limit": notice_time_limit_ms,
    }
    declared = {
        actor.actor_name: actor
        for actor in (
            declare(deliver_notice, QUEUE, **notice_options),
            declare(expire_remediation, DEADLINE_QUEUE, max_retries=20, time_limit=60_000),
            declare(end_suspension, DEADLINE_QUEUE, max_retries=20, time_limit=60_000),
            declare(apply_gate_state, QUEUE, max_retries=20, time_limit=30_000),
        )
    }
    return Actors(broker, declared, service.clock, delivery)
