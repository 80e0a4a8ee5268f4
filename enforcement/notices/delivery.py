"""One delivery attempt of one notice on one channel, with its outcome recorded as an event.

Idempotent by the notice's event id: an outcome is appended with an idempotency key derived
from (notice event, channel[, attempt]), so a redelivered message never records a second
``NoticeDelivered``, and a notice already delivered is not sent again. Two messages for the
same notice and channel that run at once take turns (``guard``): the second looks only once
the first recorded its outcome, so it does not send what the first delivered.
"""

from __future__ import annotations

import logging
import smtplib
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine

from enforcement.notices.email import EmailRefused, EmailSender, build_message
from enforcement.notices.guard import DeliveryGuard, LocalGuard
from enforcement.notices.templates import render
from enforcement.notices.webhook import WebhookRefused, WebhookSender
from enforcement.service import Actor, EnforcementService, Fact
from enforcement.settings import Settings
from enforcement.tables import contacts
from events import RecordedEvent, dialects
from events.groupcommit import GroupCommit
from projections import aup_events as ev

log = logging.getLogger("enforcement.notices")
WORKER = Actor(name="worker:notices", correlation_id="notice-delivery", source="worker")
CHANNELS = ("email", "webhook")
FAILED_FOR_GOOD = "failed_for_good"  # what a try answers after a final failure: nothing sent
_CONTACT_SQL = {
    name: f"SELECT email, webhook_url FROM {contacts.name} WHERE account_id = {mark}"
    for name, mark in (("sqlite", "?"), ("postgresql", "%s"))
}


class DeliveryFailed(Exception):
    """This attempt failed and another may succeed: the message is retried with backoff."""


@dataclass(frozen=True, slots=True)
class Contact:
    email: str | None
    webhook_url: str | None

    @property
    def channels(self) -> tuple[str, ...]:
        """The channels a notice goes out on: each with a target; e-mail when there is none
        (``attempt`` then records the notice undeliverable, on the channel "none")."""
        with_target = [c for c in ("email", "webhook") if self.target(c) is not None]
        return tuple(with_target) or ("email",)

    def target(self, channel: str) -> str | None:
        """Where ``channel`` goes: the e-mail address or the webhook URL, if set."""
        return self.email if channel == "email" else self.webhook_url


def contact_of(engine: Engine, account_id: str) -> Contact:
    """The account's contact as it is now (no target on either channel when it has none)."""
    rows = dialects.fetch_all(engine, _CONTACT_SQL[engine.dialect.name], (account_id,))
    return Contact(None, None) if not rows else Contact(rows[0][0], rows[0][1])


def hold_seconds(email: EmailSender, webhook: WebhookSender, record_seconds: float) -> float:
    """How long one delivery may hold its guard: the longer of the senders' deadlines, then
    ``record_seconds`` to record its outcome (the database's timeout)."""
    return max(email.deadline, webhook.deadline) + record_seconds


class NoticeDelivery:
    def __init__(
        self,
        service: EnforcementService,
        email: EmailSender,
        webhook: WebhookSender,
        guard: DeliveryGuard | None = None,
    ):
        self.service = service
        self.store = service.store
        self.email = email
        self.webhook = webhook
        # Within this process when not given (the embedded mode's workers are its threads),
        # held for the default database timeout to record.
        if guard is None:
            guard = LocalGuard(hold_seconds(email, webhook, Settings.database_timeout_ms / 1000))
        self.guard = guard
        # Outcomes of concurrent attempts (worker threads) are recorded in one transaction.
        self.outcomes: GroupCommit[Fact, list[RecordedEvent] | Exception] = GroupCommit(
            lambda facts: service.record_facts(facts, WORKER)
        )

    def contact(self, account_id: str) -> Contact:
        return contact_of(self.store.engine, account_id)

    def delivered(self, notice_event_id: str, channel: str) -> bool:
        """Whether the notice's ``NoticeDelivered`` on ``channel`` is recorded."""
        key = delivered_key(notice_event_id, channel)
        return self.store.recorded_for_key(key, key) is not None

    def failed_attempts(self, notice_event_id: str, channel: str) -> int:
        """How many failed attempts on ``channel`` are recorded for the notice, by any message
        (a notice re-sent after its broker lost it counts on from its earlier attempts)."""
        count = 0
        while self.store.key_used(failed_key(notice_event_id, channel, count + 1)):
            count += 1
        return count

    def failed_for_good(self, notice_event_id: str, channel: str, failed: int) -> bool:
        """Whether the last of the ``failed`` recorded failures on ``channel`` was final (its
        retries were spent, or the target refused): no attempt follows one."""
        if failed == 0:
            return False
        key = failed_key(notice_event_id, channel, failed)
        recorded = self.store.recorded_for_key(key, key)
        return recorded is not None and any(e.data.get("final") for e in recorded)

    def attempt(
        self,
        notice_event_id: str,
        channel: str,
        attempt: int,
        final: bool,
        message_id: str | None = None,
    ) -> str:
        """Try once, as attempt ``attempt``. Returns what happened; raises ``DeliveryFailed``
        when a retry may help. ``message_id``, the broker's message this try is of, holds the
        guard (``guard``)."""
        return self._attempt(notice_event_id, channel, lambda: (attempt, final), message_id)

    def deliver(
        self,
        notice_event_id: str,
        channel: str,
        retries: int,
        max_retries: int,
        message_id: str | None = None,
    ) -> str:
        """``attempt``, numbered on from the failures recorded on ``channel`` by any message (a
        notice sent again after its broker lost the first counts on from its earlier attempts,
        and the limit holds for the notice, not for each message), counted while the guard is
        held: a copy that waited for another's failed try is numbered after it (counted before,
        both had one number, and the second's failure was recorded as the first's).
        ``"failed_for_good"`` when the last failure recorded was final: none follows one."""

        def numbered() -> tuple[int, bool] | None:
            failed = self.failed_attempts(notice_event_id, channel)
            if self.failed_for_good(notice_event_id, channel, failed):
                return None
            attempt = max(retries, failed) + 1
            return attempt, attempt > max_retries

        return self._attempt(notice_event_id, channel, numbered, message_id)

    def _attempt(
        self,
        notice_event_id: str,
        channel: str,
        numbered: Callable[[], tuple[int, bool] | None],
        message_id: str | None,
    ) -> str:
        """One try; ``numbered`` gives its number and whether it is the last (None: the
        notice failed for good on the channel already)."""
        notice = self.store.get_event(notice_event_id)
        if notice is None or notice.type != "NoticeIssued":
            log.warning("no NoticeIssued event %s", notice_event_id)
            return "unknown_notice"
        chosen = ev.resend_channels(notice.data)
        if chosen is not None and channel not in chosen:
            return "not_chosen"  # a copy an operator sent on its other channels only
        contact = self.contact(notice.account_id)
        notice_id = notice.data["notice_id"]
        if channel == "email" and contact.email is None and contact.webhook_url is None:
            number = numbered()
            if number is None:
                return FAILED_FOR_GOOD
            self._record(
                notice.account_id,
                notice_event_id,
                ev.NoticeDeliveryFailed(
                    notice_id,
                    notice_event_id,
                    "none",
                    number[0],
                    "undeliverable: the account has no contact data",
                    True,
                ),
                undeliverable_key(notice_event_id),
            )
            return "undeliverable"
        target = contact.target(channel)
        if target is None:
            return self._without_target(notice, channel, numbered, message_id, chosen is not None)
        # Held from the look at what was delivered to the outcome's record: a second copy that
        # ran at the same time would see no delivery yet and send again.
        with self.guard.held(f"{notice_event_id}:{channel}", message_id):
            number = numbered()
            if number is None:
                return FAILED_FOR_GOOD
            return self._send(notice, target, channel, *number)

    def _without_target(
        self,
        notice: RecordedEvent,
        channel: str,
        numbered: Callable[[], tuple[int, bool] | None],
        message_id: str | None,
        chosen: bool,
    ) -> str:
        """Nothing to send: the contact had no target on ``channel`` when first read. A channel
        whose tries are not over is closed with a final failure that says so when it was tried
        before (this try's number is above 1: a retry, its target removed since; a failure
        that could not be recorded counts, as the number does) or was ``chosen`` for a copy
        (the contact had it when the copy was asked for): nothing would ever try it again, and
        the notice would wait on it for good. Before closing it, the contact is read again
        under the channel's guard: a target set again meanwhile is sent to. A channel never
        tried, that the contact had no target for when the notice went out, records nothing
        (and reads nothing more)."""
        event_id = notice.event_id
        with self.guard.held(f"{event_id}:{channel}", message_id):
            number = numbered()
            if number is None:
                return FAILED_FOR_GOOD
            attempt = number[0]
            if attempt == 1 and not chosen:
                return "no_target"
            # Before closing it, read again under the guard: a target set again while another
            # try held it (or since the first read) is sent to, not closed.
            target = self.contact(notice.account_id).target(channel)
            if target is not None:
                return self._send(notice, target, channel, *number)
            if self.delivered(event_id, channel):
                return "already_delivered"
            field = "an e-mail address" if channel == "email" else "a webhook_url"
            error = f"the account's contact no longer has {field}: no try follows"
            notice_id = notice.data["notice_id"]
            self._failed(
                notice.account_id, event_id, notice_id, channel, attempt, error, final=True
            )
            return "target_removed"

    def _send(
        self, notice: RecordedEvent, target: str, channel: str, attempt: int, final: bool
    ) -> str:
        """Send unless delivered already, and record the outcome."""
        notice_event_id, notice_id = notice.event_id, notice.data["notice_id"]
        if self.delivered(notice_event_id, channel):
            return "already_delivered"
        rendered = render(notice)
        try:
            if channel == "email":
                self.email.send(
                    build_message(notice, rendered, target, self.email.sender), notice_event_id
                )
            else:
                self.webhook.send(target, notice_event_id, notice.account_id, rendered.body)
        except Exception as exc:
            # A refused target never becomes valid: a webhook the checks refuse, or an address
            # that is not ASCII on a mail server without SMTPUTF8; nor does a retry change the
            # configuration (no webhook secret, a mail server that would take a cleartext login).
            refused = isinstance(exc, (WebhookRefused, EmailRefused, smtplib.SMTPNotSupportedError))
            plain = isinstance(exc, (WebhookRefused, EmailRefused))
            error = str(exc) if plain else f"{type(exc).__name__}: {exc}"
            self._failed(
                notice.account_id,
                notice_event_id,
                notice_id,
                channel,
                attempt,
                error,
                final=final or refused,
            )
            if refused:
                return "refused"
            if final:
                return "failed"
            raise DeliveryFailed(str(exc)) from exc
        self._record(
            notice.account_id,
            notice_event_id,
            ev.NoticeDelivered(notice_id, notice_event_id, channel, attempt),
            delivered_key(notice_event_id, channel),
        )
        return "delivered"

    def _failed(
        self,
        account_id: str,
        notice_event_id: str,
        notice_id: str,
        channel: str,
        attempt: int,
        error: str,
        final: bool,
    ) -> None:
        payload = ev.NoticeDeliveryFailed(
            notice_id, notice_event_id, channel, attempt, error[:500], final
        )
        self._record(
            account_id,
            notice_event_id,
            payload,
            failed_key(notice_event_id, channel, attempt),
        )

    def _record(self, account_id: str, notice_event_id: str, payload: object, key: str) -> None:
        outcome = self.outcomes.submit(Fact(account_id, payload, notice_event_id, key))
        if isinstance(outcome, Exception):
            raise outcome


def delivered_key(notice_event_id: str, channel: str) -> str:
    """The idempotency key of a notice's ``NoticeDelivered`` on ``channel``."""
    return f"notice-delivered:{notice_event_id}:{channel}"


def undeliverable_key(notice_event_id: str) -> str:
    """The idempotency key of a notice recorded undeliverable (no contact data)."""
    return f"notice-undeliverable:{notice_event_id}"


def failed_key(notice_event_id: str, channel: str, attempt: int) -> str:
    """The idempotency key of a failed attempt's ``NoticeDeliveryFailed``."""
    return f"notice-failed:{notice_event_id}:{channel}:{attempt}"
