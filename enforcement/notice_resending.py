"""Notices sent again in bulk (``enforcement resend``): after a fault that failed many (a mail
server without STARTTLS, a webhook secret unset, contacts missing), each listed notice is sent
again as a copy (``EnforcementService.resend_notice``, as ``POST …/notices/{id}/resend``).

Which notices (``last_of_each``): of a notice and the copies made of it, only the last, and only
when it is in the state asked for; so a notice once copied is looked at through its copy, and a
run again sends only what is still failed. Which channels a copy goes out on (``planned``):
those asked for; else, for a notice a channel delivered (``partly_delivered``), the channels
that did not deliver it, so the account does not get the same notice twice by e-mail; for a
failed copy sent on some channels only, those again; else every channel of the contact as it
is now. A copy is refused, and nothing written for it, when the contact has no target on a
channel it would go out on (``missing_target``): sent to no target, it would only fail again,
and hide the notice it copies from the failed ones. A notice of a decision an appeal
overturned is never sent again, nor one copied since it was listed (another run, ``POST
…/resend``): both are passed over, not refused. A dry run asks the same questions, in the same
attempt (load, decide) as a copy would be written in, and writes nothing.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from enforcement.bootstrap import Container
from enforcement.errors import Conflict, DomainError
from enforcement.notices.delivery import Contact, contact_of
from enforcement.service_types import Actor
from projections.aup_events import first_notice_id
from projections.notices import NO_CHANNEL, NoticeDeliveries

# The states a bulk resend picks notices in: nothing will try them again, and no channel (or
# not every one) delivered them. Others are sent again only when named (``--notice``).
RESENDABLE_STATES: tuple[str, ...] = ("failed", "partly_delivered")
# How a notice ended: a copy sent, passed over (its decision overturned, or copied meanwhile),
# or refused; and what a dry run says of each.
RESENT_SENT, RESENT_SKIPPED, RESENT_REFUSED = "sent", "skipped", "refused"
WOULD: dict[str, str] = {
    RESENT_SENT: "would_send",
    RESENT_SKIPPED: "would_skip",
    RESENT_REFUSED: "would_refuse",
}
_SKIPPED_CODES = frozenset({"decision_overturned", "sent_again_meanwhile"})


class _WouldSend(Exception):
    """A dry run's copy passed every check: nothing is written."""


@dataclass(frozen=True, slots=True)
class PlannedResend:
    """A notice to send again, the channels its copy goes out on (None: the contact's), and
    how many copies had been made of it when it was listed."""

    account_id: str
    notice_id: str
    notice_event_id: str
    kind: str
    state: str
    channels: tuple[str, ...] | None
    copies: int


@dataclass(frozen=True, slots=True)
class ResendResult:
    """What became of a planned resend: the copy's notice id, or why there is none."""

    planned: PlannedResend
    outcome: str  # RESENT_SENT, RESENT_SKIPPED or RESENT_REFUSED (a dry run: ``WOULD``'s)
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


def last_of_each(notices: Sequence[NoticeDeliveries], state: str) -> list[NoticeDeliveries]:
    """Of each notice listed and the copies of it listed (``resend_of``: the first notice's
    id), the last, when it is in ``state``; in the order their first ones were listed."""
    last = {_family(n): n for n in notices}
    return [n for n in last.values() if n.state == state]


def _family(notice: NoticeDeliveries) -> tuple[str, str]:
    """A notice's family: its account, and the first notice it is (or is a copy of)."""
    return notice.account_id, notice.resend_of or notice.notice_id


def planned(
    notices: Sequence[NoticeDeliveries],
    listed: Sequence[NoticeDeliveries],
    channels: tuple[str, ...] | None = None,
) -> list[PlannedResend]:
    """A resend of each of ``notices`` (chosen from ``listed``, where the copies of each one's
    first notice made after it are counted), in their order, on ``channels`` when given; else
    a ``partly_delivered`` notice's on the channels that did not deliver it, a copy's sent on
    some channels on those, and any other's on the contact's (None)."""
    later = _later_of_family(listed)
    return [
        PlannedResend(
            n.account_id,
            n.notice_id,
            n.notice_event_id,
            n.kind,
            n.state,
            channels or _undelivered(n),
            later.get(n.notice_event_id, 0),
        )
        for n in notices
    ]


def _later_of_family(listed: Sequence[NoticeDeliveries]) -> dict[str, int]:
    """For each notice of ``listed`` (log order), how many copies of its first notice follow
    it in ``listed``."""
    members: dict[tuple[str, str], list[str]] = {}
    for n in listed:
        members.setdefault(_family(n), []).append(n.notice_event_id)
    return {e: len(ids) - i - 1 for ids in members.values() for i, e in enumerate(ids)}


def _undelivered(notice: NoticeDeliveries) -> tuple[str, ...] | None:
    if notice.state != "partly_delivered":
        return None if notice.chosen_channels is None else tuple(notice.chosen_channels)
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


def resend_each(
    container: Container,
    plan: Sequence[PlannedResend],
    reason: str,
    actor: Actor,
    dry_run: bool = False,
) -> Iterator[ResendResult]:
    """Send each of ``plan`` again, one transaction each, for ``reason`` as ``actor``, and
    yield what became of it; a refusal (``missing_target``, a copy of its family made since it
    was listed, or the service's) is its result and the next goes on. ``dry_run``: the same
    checks, in the same attempt, and nothing written (``WOULD``'s outcomes). An error of the
    database stops it, after the results of those already sent."""
    service, engine = container.service, container.engine
    for item in plan:

        def check(item: PlannedResend = item) -> None:
            issued = service.store.read_stream_of_type(item.account_id, "NoticeIssued")
            at = next(i for i, e in enumerate(issued) if e.event_id == item.notice_event_id)
            family = first_notice_id(issued[at].data)
            made = sum(first_notice_id(e.data) == family for e in issued[at + 1 :])
            if made > item.copies:
                raise Conflict(
                    "it was sent again since it was listed (by another run, or POST …/resend)",
                    code="sent_again_meanwhile",
                )
            missing = missing_target(contact_of(engine, item.account_id), item.channels)
            if missing is not None:
                raise Conflict(missing, code="no_target")
            if dry_run:
                raise _WouldSend

        try:
            outcome = service.resend_notice(
                item.account_id, item.notice_id, reason, actor, channels=item.channels, check=check
            )
        except _WouldSend:
            yield ResendResult(item, WOULD[RESENT_SENT])
        except DomainError as exc:
            kind = RESENT_SKIPPED if exc.code in _SKIPPED_CODES else RESENT_REFUSED
            yield ResendResult(item, WOULD[kind] if dry_run else kind, reason=exc.message)
        else:
            copy = outcome.events[0].data["notice_id"]
            yield ResendResult(item, RESENT_SENT, copy_notice_id=copy)
