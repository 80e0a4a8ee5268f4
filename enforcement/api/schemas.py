"""Request bodies, validated at the edge: unknown input never reaches the domain."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StringConstraints,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError

from enforcement.policy import CATEGORIES
from events.timefmt import LEAP_SECOND_MESSAGE, is_leap_second

AccountId = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")
]
Text = Annotated[str, StringConstraints(max_length=4000)]
Severity = Literal["low", "medium", "high", "critical"]


# RFC 3339 with an offset (CONTRACT.md: UTC with a ``Z``): a time without one is refused, as
# everywhere else (``events.timefmt.parse_time``), so an ambiguous time never enters the log.
def _in_utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError:  # e.g. 9999-12-31T23:59:59-01:00
        raise ValueError("is out of range in UTC") from None


# Pydantic would also read a number, or a string of digits, as Unix seconds: a reporter sending
# epoch seconds would record 1970 without a word. A time is text in RFC 3339's shape.
_RFC3339_START = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]")


def _rfc3339_text(value: object) -> object:
    if isinstance(value, str) and is_leap_second(value):
        raise PydanticCustomError("time_leap_second", LEAP_SECOND_MESSAGE)
    if isinstance(value, datetime) or (isinstance(value, str) and _RFC3339_START.match(value)):
        return value
    raise PydanticCustomError(
        "time_format", "must be an RFC 3339 time with a UTC offset, e.g. 2026-11-24T10:00:00Z"
    )


Moment = Annotated[AwareDatetime, BeforeValidator(_rfc3339_text), AfterValidator(_in_utc)]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _not_before_1970(value: datetime) -> datetime:
    # No violation of this service predates the Unix epoch; and times are compared as their
    # RFC 3339 text, which orders correctly only for four-digit years.
    if value < _EPOCH:
        raise ValueError("must not be before 1970-01-01T00:00:00Z")
    return value


Occurred = Annotated[Moment, AfterValidator(_not_before_1970)]
Detection = Literal["automated", "human_review", "user_report"]


def _no_nul(value: str | None) -> str | None:
    # PostgreSQL's JSONB cannot hold U+0000; refuse it on every backend alike.
    if value is not None and "\x00" in value:
        raise ValueError("must not contain the NUL character")
    return value


NoNul = AfterValidator(_no_nul)
SafeText = Annotated[Text, NoNul]


# The service's own idempotency keys (a notice's delivery outcomes, the gate's reports, a
# batch's items under its header) share the one key space with the callers': a caller's key of
# one of their shapes could take a key the service will need (a NoticeDelivered that could then
# never be recorded), so it is refused. Only those shapes: a caller's ``batch:2026-12-05`` or
# ``gate:42`` stays a key like any other.
RESERVED_KEY_SHAPES = (
    "starting notice-delivered:, notice-failed:, notice-undeliverable:, gate:sustained_abuse: or "
    "gate:rate_limit_circumvention:, or batch: and 64 hex digits"
)
RESERVED_KEY = re.compile(
    r"notice-(delivered|failed|undeliverable):"
    r"|gate:(sustained_abuse|rate_limit_circumvention):"
    r"|batch:[0-9a-f]{64}\Z"
)


def is_reserved_key(value: str) -> bool:
    """Whether ``value`` has the shape of one of the service's own idempotency keys."""
    return RESERVED_KEY.match(value) is not None


def _not_reserved(value: str | None) -> str | None:
    if value is not None and is_reserved_key(value):
        raise ValueError(
            f"has the shape of the service's own idempotency keys ({RESERVED_KEY_SHAPES})"
        )
    return value


NotReserved = AfterValidator(_not_reserved)


def _usable_key_id(value: str) -> str:
    # A control character cannot be routed in a path (Starlette's matcher stops at a newline),
    # and a client resolves "." and ".." in a path as steps before sending it
    # (``…/keys/../limits`` would reach the account-wide limits).
    if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in value):
        raise ValueError("must not contain control characters")
    if value in (".", ".."):
        raise ValueError('must not be "." or ".."')
    return value


# The contract gives an API key id no alphabet (a gateway's ids may be base64, with ``/+=``):
# any text but control characters, of at most 200 characters (what a stored standing's record
# key holds: ``projections.tables``).
KeyId = Annotated[
    str, StringConstraints(min_length=1, max_length=200), AfterValidator(_usable_key_id)
]


def _known_category(value: str) -> str:
    if value not in CATEGORIES:
        # Shown as text that can be answered: JSON's "\\udc80" is a lone surrogate, which no
        # UTF-8 answer can hold (it would be a 500, not this 422).
        shown = value.encode("utf-8", "backslashreplace").decode("utf-8")
        raise PydanticCustomError(
            "unknown_category",
            "unknown category '{category}'",
            {"category": shown, "allowed": sorted(CATEGORIES)},
        )
    return value


# Validated by hand (so that a 422 lists the allowed ones), documented as the enum it is.
Category = Annotated[
    str,
    AfterValidator(_known_category),
    WithJsonSchema({"type": "string", "enum": sorted(CATEGORIES)}),
]


def _json_integer(value: object) -> object:
    # JSON has one number type: 600.0 is the integer 600 (a float-only client sends it so);
    # text ("600") and booleans are no numbers at all, and 600.5 is no integer.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PydanticCustomError("int_type", "Input should be a valid integer")
    if isinstance(value, float):
        if not value.is_integer():
            raise PydanticCustomError("int_from_float", "Input should be a whole number")
        return int(value)
    return value


JsonInt = Annotated[int, BeforeValidator(_json_integer)]


class Strict(BaseModel):
    """A request body: no unknown field. Flags and counts are strict (``StrictBool``,
    ``JsonInt``, a factor a JSON number): ``"notify": "no"`` or ``"600"`` is refused, not
    read as false or 600."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class ViolationIn(Strict):
    account_id: AccountId
    category: Category
    severity: Severity | None = None
    key_id: KeyId | None = None
    occurred_at: Occurred | None = None
    source: Annotated[str, StringConstraints(max_length=200), NoNul] | None = None
    detection: Detection = "automated"
    evidence_ref: Annotated[str, StringConstraints(max_length=2048), NoNul] | None = None
    description: SafeText | None = None


class BatchItemIn(ViolationIn):
    idempotency_key: (
        Annotated[str, StringConstraints(min_length=1, max_length=200), NoNul, NotReserved] | None
    ) = None


class AbuseReportIn(Strict):
    reported_account_id: AccountId
    category: Category
    description: SafeText | None = None
    reporter_contact: Annotated[str, StringConstraints(max_length=320), NoNul] | None = None
    evidence_ref: Annotated[str, StringConstraints(max_length=2048), NoNul] | None = None


class ReasonIn(Strict):
    reason: SafeText = ""


def _each_once(value: list[str]) -> list[str]:
    if len(set(value)) != len(value):
        raise PydanticCustomError("channels_repeated", "each channel at most once")
    return value


class ResendIn(Strict):
    """``channels``: those of the contact's the copy goes out on (null: every one)."""

    reason: SafeText = ""
    channels: (
        Annotated[
            list[Literal["email", "webhook"]], Field(min_length=1), AfterValidator(_each_once)
        ]
        | None
    ) = None


class NoteIn(Strict):
    note: SafeText = ""


class SuspendIn(Strict):
    reason: SafeText = ""
    until: Moment | None = None
    notify: StrictBool = True


class TerminateIn(Strict):
    reason: SafeText = ""
    notify: StrictBool = True


class ThrottleIn(Strict):
    key_id: KeyId | None = None
    factor: Annotated[StrictFloat, Field(gt=0, le=1)] = 0.25
    expires_at: Moment | None = None
    reason: SafeText = ""
    # POLICY.md: every restriction has a notice unless the operator asks none.
    notify: StrictBool = True


class AdultContentIn(Strict):
    approved: StrictBool
    reason: SafeText = ""


class LimitsIn(Strict):
    requests_per_minute: Annotated[JsonInt, Field(gt=0, le=10_000_000)]
    tokens_per_day: Annotated[JsonInt, Field(gt=0, le=10**15)]


class TriageIn(Strict):
    outcome: Literal["confirmed", "rejected"]
    severity: Severity | None = None


class AppealIn(Strict):
    decision_event_id: Annotated[str, StringConstraints(min_length=1, max_length=64), NoNul]
    statement: SafeText = ""


class AppealDecisionIn(Strict):
    outcome: Literal["upheld", "overturned"]
    reason: SafeText = ""


# One address, local@domain: no space, control character, or character that separates or
# quotes addresses in a header (``x,other@evil.example`` put a second recipient in To).
_ADDRESS_PART = r'[^@\s,;:<>"()\[\]\\\x00-\x1f\x7f-\x9f]+'


class ContactIn(Strict):
    email: (
        Annotated[
            str,
            StringConstraints(max_length=320, pattern=f"^{_ADDRESS_PART}@{_ADDRESS_PART}$"),
            NoNul,
        ]
        | None
    ) = None
    webhook_url: (
        Annotated[
            str,
            # Printable ASCII only: http.client refuses a space or control character with the
            # URL (and any credentials in its query) in an error the log would keep for good,
            # and cannot send a host or path of other characters (an IDN host goes in
            # punycode, a path percent-encoded), so such a notice would only be retried.
            StringConstraints(max_length=2048, pattern=r"^https?://[\x21-\x7e]+$"),
            NoNul,
        ]
        | None
    ) = None


class GateCheckIn(Strict):
    account_id: AccountId
    key_id: KeyId
    tokens: Annotated[JsonInt, Field(ge=0, le=10**12)] = 0
