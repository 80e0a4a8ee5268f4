"""The AUP's event payloads: one frozen dataclass per fact, all at schema version 1.

Payloads hold JSON-ready values only (str, int, float, bool, None, lists, dicts); times are
RFC 3339 strings from ``events.timefmt.format_time``. A payload refuses values outside its
vocabulary (``__post_init__``), so a malformed fact cannot be encoded. ``CODEC`` knows every type;
when a shape changes, bump its ``schema_version`` in ``build_codec`` and add an upcaster there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from events import Codec
from projections.frozen import fast_init

JSON = dict[str, Any]

SEVERITIES: tuple[str, ...] = ("low", "medium", "high", "critical")
DETECTIONS: tuple[str, ...] = ("automated", "human_review", "user_report")
# The ``source`` of what the gate detects from its denials (AUP §3): an automated detection.
GATE_SOURCE = "gate"
NOTICE_KINDS: tuple[str, ...] = (
    "warning",
    "remediation",
    "throttle",
    "suspension",
    "termination",
    "reinstatement",
    "appeal_outcome",
    "dismissal",
)
TRIAGE_OUTCOMES: tuple[str, ...] = ("confirmed", "rejected")
APPEAL_OUTCOMES: tuple[str, ...] = ("upheld", "overturned")
REINSTATEMENT_SCOPES: tuple[str, ...] = ("all", "termination", "suspension")
# What a notice sent again (``NoticeIssued.resend_of``) says of the notice it copies.
RESEND_FIELDS: tuple[str, ...] = ("notice_id", "notice_event_id", "issued_at", "reason", "channels")
# The channels a notice goes out on (a copy may be sent on some of them only).
NOTICE_CHANNELS: tuple[str, ...] = ("email", "webhook")


def _one_of(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, not {value!r}")


def _factor(value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise ValueError(f"factor must be a number in (0, 1], not {value!r}")


@fast_init
@dataclass(frozen=True, slots=True)
class ViolationReported:
    """A violation of the AUP was reported. ``severity`` is the effective one (after the floor).

    ``strike`` is false for violations that never count towards the ladder (sustained abuse).
    """

    violation_id: str
    category: str
    severity: str
    reported_severity: str | None
    key_id: str | None
    source: str | None
    detection: str
    evidence_ref: str | None
    description: str | None
    abuse_report_id: str | None
    strike: bool = True

    def __post_init__(self) -> None:
        _one_of("severity", self.severity, SEVERITIES)
        if self.reported_severity is not None:
            _one_of("reported_severity", self.reported_severity, SEVERITIES)
        _one_of("detection", self.detection, DETECTIONS)


@fast_init
@dataclass(frozen=True, slots=True)
class ViolationDismissed:
    """A violation no longer counts: it gives no strike and keeps nothing open."""

    violation_id: str
    reason: str
    statement_of_reasons: JSON | None = None


@fast_init
@dataclass(frozen=True, slots=True)
class AbuseReportReceived:
    """A third party reported this account (AUP §7), or the gate filed its suspicion for an
    operator (``source`` ``GATE_SOURCE``; None: received through the API). No strike until
    triaged ``confirmed``.

    ``source`` is schema version 2; events stored before it read as None (``_report_v1_to_v2``).
    """

    report_id: str
    category: str
    description: str
    reporter_contact: str | None
    evidence_ref: str | None
    source: str | None = None


@fast_init
@dataclass(frozen=True, slots=True)
class AbuseReportTriaged:
    """An operator triaged an abuse report; a confirmed one names the violation it became."""

    report_id: str
    outcome: str
    severity: str | None
    violation_id: str | None

    def __post_init__(self) -> None:
        _one_of("outcome", self.outcome, TRIAGE_OUTCOMES)
        if self.severity is not None:
            _one_of("severity", self.severity, SEVERITIES)


@fast_init
@dataclass(frozen=True, slots=True)
class NoticeIssued:
    """The account is to be told of a decision (``decision_event_id``); delivery follows.

    ``resend_of``: None, or for a notice an operator sent again (a copy of an earlier one, under
    its own ``notice_id``), the notice it copies: ``{"notice_id", "notice_event_id",
    "issued_at", "reason", "channels"}``; a copy of a copy names the first notice.
    ``channels``: those the copy goes out on (of the contact's), None for all of them.
    """

    notice_id: str
    kind: str
    decision_event_id: str
    violation_ids: list[str]
    statement_of_reasons: JSON
    deadline: str | None
    resend_of: JSON | None = None

    def __post_init__(self) -> None:
        _one_of("kind", self.kind, NOTICE_KINDS)
        if self.resend_of is not None:
            if set(self.resend_of) != set(RESEND_FIELDS):
                raise ValueError(f"resend_of must have the keys {', '.join(RESEND_FIELDS)}")
            channels = self.resend_of["channels"]
            if channels is not None and (
                not channels
                or len(set(channels)) != len(channels)
                or not set(channels) <= set(NOTICE_CHANNELS)
            ):
                raise ValueError(
                    "resend_of.channels must be null or some of email, webhook, each once"
                )


@fast_init
@dataclass(frozen=True, slots=True)
class NoticeDelivered:
    """One delivery attempt of a notice succeeded."""

    notice_id: str
    notice_event_id: str
    channel: str
    attempt: int


@fast_init
@dataclass(frozen=True, slots=True)
class NoticeDeliveryFailed:
    """One delivery attempt of a notice failed; ``final`` means no further attempt follows."""

    notice_id: str
    notice_event_id: str
    channel: str
    attempt: int
    error: str
    final: bool


@fast_init
@dataclass(frozen=True, slots=True)
class RemediationRequested:
    """The account must remedy the violations by ``due_at``; it stays open until closed."""

    remediation_id: str
    violation_ids: list[str]
    due_at: str
    statement_of_reasons: JSON


@fast_init
@dataclass(frozen=True, slots=True)
class RemediationCompleted:
    """A remediation was completed; it is no longer open."""

    remediation_id: str
    note: str


@fast_init
@dataclass(frozen=True, slots=True)
class RemediationExpired:
    """A remediation passed its due time uncompleted; it is no longer open."""

    remediation_id: str
    statement_of_reasons: JSON


@fast_init
@dataclass(frozen=True, slots=True)
class ThrottleApplied:
    """Limits of one key (or, with ``key_id`` None, every key) are multiplied by ``factor``.

    Active until lifted or until ``expires_at`` (None: until lifted).
    """

    throttle_id: str
    key_id: str | None
    factor: float
    expires_at: str | None
    reason: str
    statement_of_reasons: JSON
    violation_ids: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _factor(self.factor)


@fast_init
@dataclass(frozen=True, slots=True)
class ThrottleLifted:
    """A throttle ends before its expiry."""

    throttle_id: str
    reason: str


@fast_init
@dataclass(frozen=True, slots=True)
class AccountSuspended:
    """The account is suspended until ``until`` (None: indefinitely); it replaces any other.

    With ``held_by``, a suspension the ladder decided while suspension ``held_by``, lasting at
    least as long, was in force: that one stays in force, and this one takes over only if an
    appeal overturns it (POLICY.md: "a longer suspension replaces a shorter one"; the shorter
    one is still the decision on its violations). Events recorded before ``held_by`` existed
    have none."""

    suspension_id: str
    until: str | None
    reason: str
    statement_of_reasons: JSON
    violation_ids: list[str] = field(default_factory=list)
    held_by: str | None = None


SUSPENSION_OVERTURNED = "overturned"


@fast_init
@dataclass(frozen=True, slots=True)
class SuspensionEnded:
    """The named suspension ended: ``"expired"`` (its ``until`` passed; the account is no longer
    suspended) or ``SUSPENSION_OVERTURNED`` (an appeal reversed it: only it ends, and a
    suspension it had replaced that is still running is in force again)."""

    suspension_id: str
    reason: str


@fast_init
@dataclass(frozen=True, slots=True)
class AccountReinstated:
    """The account is reinstated from what ``ends`` names: ``"all"`` (neither suspended nor
    terminated any more), only ``"termination"`` (an overturned termination: a suspension still
    in force stays) or only ``"suspension"``. Events recorded before ``ends`` existed mean
    ``"all"``."""

    reason: str
    statement_of_reasons: JSON | None = None
    ends: str = "all"

    def __post_init__(self) -> None:
        _one_of("ends", self.ends, REINSTATEMENT_SCOPES)


@fast_init
@dataclass(frozen=True, slots=True)
class AccountTerminated:
    """The account is terminated; only an overturned appeal reinstates it."""

    reason: str
    statement_of_reasons: JSON
    violation_ids: list[str] = field(default_factory=list)


@fast_init
@dataclass(frozen=True, slots=True)
class AuthorityReferralOpened:
    """The violations are to be reported to the relevant authorities (AUP §6)."""

    referral_id: str
    violation_ids: list[str]
    category: str
    statement_of_reasons: JSON


@fast_init
@dataclass(frozen=True, slots=True)
class AppealFiled:
    """The account appealed one decision event."""

    appeal_id: str
    decision_event_id: str
    statement: str


@fast_init
@dataclass(frozen=True, slots=True)
class AppealDecided:
    """An appeal was decided; ``overturned`` is followed by the events that reverse the decision."""

    appeal_id: str
    decision_event_id: str
    outcome: str
    reason: str
    statement_of_reasons: JSON

    def __post_init__(self) -> None:
        _one_of("outcome", self.outcome, APPEAL_OUTCOMES)


@fast_init
@dataclass(frozen=True, slots=True)
class AdultContentApprovalChanged:
    """The account is (or is no longer) approved for adult content (AUP §4)."""

    approved: bool
    reason: str


@fast_init
@dataclass(frozen=True, slots=True)
class RateLimitsConfigured:
    """Limits of one key, or with ``key_id`` None the account-wide ceiling across its keys."""

    key_id: str | None
    requests_per_minute: int
    tokens_per_day: int


EVENT_CLASSES: tuple[type[Any], ...] = (
    ViolationReported,
    ViolationDismissed,
    AbuseReportReceived,
    AbuseReportTriaged,
    NoticeIssued,
    NoticeDelivered,
    NoticeDeliveryFailed,
    RemediationRequested,
    RemediationCompleted,
    RemediationExpired,
    ThrottleApplied,
    ThrottleLifted,
    AccountSuspended,
    SuspensionEnded,
    AccountReinstated,
    AccountTerminated,
    AuthorityReferralOpened,
    AppealFiled,
    AppealDecided,
    AdultContentApprovalChanged,
    RateLimitsConfigured,
)


def build_codec() -> Codec:
    """A codec that knows every AUP event type at its current schema version."""
    codec = Codec()
    for payload_class in EVENT_CLASSES:
        if payload_class is AccountSuspended:
            # 2: ``held_by``. A process of an earlier release refuses such an event as newer
            # than its code instead of failing on the unknown field.
            codec.register(payload_class, schema_version=2, upcasters={1: _suspended_v1_to_v2})
        elif payload_class is AbuseReportReceived:
            # 2: ``source`` (who filed it), refused by an earlier release likewise.
            codec.register(payload_class, schema_version=2, upcasters={1: _report_v1_to_v2})
        elif payload_class is NoticeIssued:
            # 2: ``resend_of`` (a notice an operator sent again). No earlier release decodes a
            # notice (the fold passes over them; its delivery reads the fields it knows).
            codec.register(payload_class, schema_version=2, upcasters={1: _notice_v1_to_v2})
        else:
            codec.register(payload_class, schema_version=1)
    return codec


def _suspended_v1_to_v2(data: JSON) -> JSON:
    """``AccountSuspended`` before ``held_by``: none of them was held (a few development
    builds recorded ``held_by`` at version 1: kept)."""
    data.setdefault("held_by", None)
    return data


def _report_v1_to_v2(data: JSON) -> JSON:
    """``AbuseReportReceived`` before ``source``: read as received through the API. (The gate
    filed some of them too, which only their metadata's ``source`` tells: ``source`` is None.)"""
    data.setdefault("source", None)
    return data


def resend_channels(notice_data: JSON) -> list[str] | None:
    """The channels a ``NoticeIssued`` (its data) goes out on, of its contact's: a copy's
    chosen ones (``resend_of.channels``), or None for every one."""
    first = notice_data.get("resend_of")
    return first.get("channels") if isinstance(first, dict) else None


def first_notice_id(notice_data: JSON) -> str:
    """The id of the first notice of a ``NoticeIssued``'s family (its data): the one a copy
    copies (``resend_of.notice_id``), else its own."""
    first = notice_data.get("resend_of")
    return str(first["notice_id"]) if isinstance(first, dict) else str(notice_data["notice_id"])


def _notice_v1_to_v2(data: JSON) -> JSON:
    """``NoticeIssued`` before ``resend_of``: each was the first of its decision's notices."""
    data.setdefault("resend_of", None)
    return data


CODEC = build_codec()
