"""Notices sent again in bulk (``enforcement resend``): after a fault that failed many (a mail
server without STARTTLS, a webhook secret unset, contacts missing), each listed notice is sent
again as a copy (``EnforcementService.resend_notice``, as ``POST …/notices/{id}/resend``).

Which channels a copy goes out on (``planned``): those asked for; else, for a notice a channel
delivered (``partly_delivered``), the channels that did not deliver it, so the account does not
get the same notice twice by e-mail; else every channel of the contact as it is now. A copy is
refused, and nothing written for it, when the contact has no target on a channel it would go out
on (``missing_target``): sent to no target, it would only fail again, and hide the notice it
copies from the failed ones. A notice of a decision an appeal overturned is never sent again:
it is passed over (``RESENT_SKIPPED``), not refused.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from enforcement.bootstrap import Container
from enforcement.errors import Conflict, DomainError
from enforcement.notices.delivery import Contact, contact_of
from enforcement.service_types import Actor
from projections.notices import NO_CHANNEL, NoticeDeliveries

# The states a bulk resend picks notices in: nothing will try them again, and no channel (or
# not every one) delivered them. Others are sent again only when named (``--notice``).
RESENDABLE_STATES: tuple[str, ...] = ("failed", "partly_delivered")
# How a notice ended: a copy sent, passed over (its decision overturned), or refused.
RESENT_SENT, RESENT_SKIPPED, RESENT_REFUSED = "sent", "skipped", "refused"
_SKIPPED_CODES = frozenset({"decision_overturned"})


@dataclass(frozen=True, slots=True)
class PlannedResend:
    """A notice to send again, and the channels its copy goes out on (None: the contact's)."""

    account_id: str
    notice_id: str
    kind: str
    state: str
    channels: tuple[str, ...] | None


@dataclass(frozen=True, slots=True)
class ResendResult:
    """What became of a planned resend: the copy's notice id, or why there is none."""

    planned: PlannedResend
    outcome: str  # RESENT_SENT, RESENT_SKIPPED or RESENT_REFUSED
    copy_notice_id: str | None = None
    reason: str | None = None

    def to_json(self) -> dict[str, object]:
        p = self.planned
        return {
            "account_id": p.account_id,
            "notice_id": p.notice_id,
            "kind": p.kind,
            "state": p.state,
            "channels": None if p.channels is None else list(p.channels),
            "outcome": self.outcome,
            "copy_notice_id": self.copy_notice_id,
            "reason": self.reason,
        }


def planned(
    notices: Sequence[NoticeDeliveries], channels: tuple[str, ...] | None = None
) -> list[PlannedResend]:
    """A resend of each of ``notices``, in their order, on ``channels`` when given; else a
    ``partly_delivered`` notice's on the channels that did not deliver it, and any other's on
    the contact's (None)."""
    return [
        PlannedResend(n.account_id, n.notice_id, n.kind, n.state, channels or _undelivered(n))
        for n in notices
    ]


def _undelivered(notice: NoticeDeliveries) -> tuple[str, ...] | None:
    if notice.state != "partly_delivered":
        return None
    return tuple(
        c.channel for c in notice.channels if c.state != "delivered" and c.channel != NO_CHANNEL
    )


def missing_target(contact: Contact, channels: tuple[str, ...] | None) -> str | None:
    """Why a copy on ``channels`` (None: the contact's) would reach no one, or None: the first
    channel asked for without a target, or a contact with no target at all."""
    if channels is None:
        if contact.email is None and contact.webhook_url is None:
            return "the account has no contact: set it with PUT …/contact first"
        return None
    for channel in channels:
        if contact.target(channel) is None:
            field = "e-mail address" if channel == "email" else "webhook_url"
            return f"the account's contact has no {field}: set it with PUT …/contact first"
    return None


def resend_all(
    container: Container,
    plan: Sequence[PlannedResend],
    reason: str,
    actor: Actor,
    progress: Callable[[int], None] | None = None,
) -> list[ResendResult]:
    """Send each of ``plan`` again, one transaction each, for ``reason`` as ``actor``; a
    refusal (``missing_target``, or the service's) is recorded in its result and the next goes
    on. ``progress`` is told how many are done."""
    service, engine = container.service, container.engine
    results: list[ResendResult] = []
    for done, item in enumerate(plan, 1):

        def check(item: PlannedResend = item) -> None:
            missing = missing_target(contact_of(engine, item.account_id), item.channels)
            if missing is not None:
                raise Conflict(missing, code="no_target")

        try:
            outcome = service.resend_notice(
                item.account_id, item.notice_id, reason, actor, channels=item.channels, check=check
            )
        except DomainError as exc:
            kind = RESENT_SKIPPED if exc.code in _SKIPPED_CODES else RESENT_REFUSED
            results.append(ResendResult(item, kind, reason=exc.message))
        else:
            copy = outcome.events[0].data["notice_id"]
            results.append(ResendResult(item, RESENT_SENT, copy_notice_id=copy))
        if progress is not None:
            progress(done)
    return results
