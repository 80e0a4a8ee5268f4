"""What the API answers, as models for the OpenAPI document (``/docs``, ``/openapi.json``).

Documentation only: the routes build their answers as plain JSON (``Standing.to_json``,
``event_to_json``, ``violation_json``) and declare these through ``responses``, so nothing is
validated or copied on the way out. CONTRACT.md gives the shapes; the tests hold the answers to
these schemas (``tests/integration/test_api_schema.py``, Schemathesis).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, Field

from enforcement.roles import Permission, Role, allows
from projections.standing import Status


class EventOut(BaseModel):
    """An event of the log, as CONTRACT.md gives it; ``hash`` recomputes from the others."""

    position: int
    event_id: str
    account_id: str
    version: int
    type: str
    schema_version: int
    data: dict[str, Any]
    metadata: dict[str, Any] = Field(
        description=(
            "actor, source, policy_version, strike_lookback (the policy's, as its file writes"
            " it; events before 2026-12-07 have none), causation_id, correlation_id"
        )
    )
    occurred_at: str
    recorded_at: str
    prev_hash: str
    hash: str


class OpenRemediationOut(BaseModel):
    remediation_id: str
    due_at: str
    violation_ids: list[str]


class ActiveThrottleOut(BaseModel):
    throttle_id: str
    key_id: str | None
    factor: float
    expires_at: str | None


class SuspensionOut(BaseModel):
    suspension_id: str
    since: str
    until: str | None = Field(description="null: indefinitely")
    reason: str


class StandingOut(BaseModel):
    """An account's standing at ``as_of``, folded from the events recorded up to then (strikes
    counted with the lookback of the policy that last acted on the account or began, whichever
    came later: ``GET /v1/policy-activations``)."""

    account_id: str
    status: Status
    strikes: int
    open_violations: list[str]
    open_remediations: list[OpenRemediationOut]
    active_throttles: list[ActiveThrottleOut]
    suspension: SuspensionOut | None
    terminated: bool
    adult_content_approved: bool
    open_abuse_reports: int
    open_appeals: int
    version: int
    as_of: str


class AccountsOut(BaseModel):
    """A page of the accounts' standings (``GET /v1/accounts``); the next is asked with
    ``after=next_after`` (null: none follows)."""

    accounts: list[StandingOut]
    next_after: str | None


class ViolationRecordedOut(BaseModel):
    """``POST /v1/violations``: the violation, the decisions the policy took on it, and the
    standing after them. ``events`` (an addition to the contract) is every event recorded, the
    violation's own first."""

    violation_id: str | None
    account_id: str
    decisions: list[EventOut]
    events: list[EventOut]
    standing: StandingOut


class AccountEventsOut(BaseModel):
    events: list[EventOut]
    next_after_version: int | None


class FeedOut(BaseModel):
    events: list[EventOut]
    next_after_position: int | None


class VerifyOut(BaseModel):
    """``ok`` with ``head_hash``, or not ``ok`` with ``broken_at_version`` and ``reason``."""

    ok: bool
    events: int
    head_hash: str | None = None
    broken_at_version: int | None = None
    reason: str | None = None


class PolicyActivationOut(BaseModel):
    """A policy a serving process began with: in force from ``activated_at`` on (when the start
    was recorded)."""

    position: int
    policy_version: str
    strike_lookback: str = Field(description='as the policy file writes it ("90d")')
    activated_at: str


class PolicyActivationsOut(BaseModel):
    """Each start of a serving process, oldest first (in ``activated_at`` order too). A standing
    ``as_of`` an instant counts strikes with the last policy begun by then when it began after
    the account's last event; else with the ``strike_lookback`` that event's metadata records."""

    activations: list[PolicyActivationOut]
    next_after_position: int | None


class AccountCommandOut(BaseModel):
    """Every account command: the events it recorded and the standing after them (filing an
    appeal adds ``appeal_id``; setting the contact adds the contact as stored)."""

    events: list[EventOut]
    standing: StandingOut


class AppealFiledOut(AccountCommandOut):
    appeal_id: str


class ChannelDeliveryOut(BaseModel):
    """One channel's outcomes so far: ``delivered``, ``failed_for_good`` (nothing more is
    tried), ``retrying``, or ``awaiting`` (a channel of the contact without an outcome yet:
    ``attempts`` 0, ``last_outcome_at`` null); channel ``none`` when the account had no
    contact."""

    channel: str
    state: Literal["delivered", "failed_for_good", "retrying", "awaiting"]
    attempts: int
    last_error: str | None
    last_outcome_at: str | None


class NoticeDeliveriesOut(BaseModel):
    """A notice and its channels, in the order of their first outcome (those awaiting one
    last). ``state``: ``pending`` (a channel retrying or awaiting), ``delivered`` (every channel
    with an outcome delivered it), ``partly_delivered`` (one did, another failed for good),
    ``failed`` (none did, and nothing more is tried), ``sent_again`` (failed, and a copy was
    sent since: ``sent_again_as``). ``resend_of``: for a copy, the first notice's id;
    ``chosen_channels``: a copy's channels when it was sent on some only."""

    account_id: str
    notice_id: str
    notice_event_id: str
    kind: str
    decision_event_id: str
    issued_at: str
    resend_of: str | None
    chosen_channels: list[str] | None
    sent_again_as: list[str]
    state: Literal["pending", "delivered", "partly_delivered", "failed", "sent_again"]
    channels: list[ChannelDeliveryOut]


class NoticesOut(BaseModel):
    account_id: str
    notices: list[NoticeDeliveriesOut]


class AllNoticesOut(BaseModel):
    """Every account's notices issued since the instant asked (``GET /v1/notices``), or a page
    of them (``limit``): the next is asked with ``after_position=next_after_position`` (null:
    the last page, or no page asked)."""

    notices: list[NoticeDeliveriesOut]
    next_after_position: int | None


class NoticeResentOut(AccountCommandOut):
    """The copy's ``notice_id`` (its event, a ``NoticeIssued`` with ``resend_of``, is the one of
    ``events``)."""

    notice_id: str


class ContactOut(AccountCommandOut):
    """The contact as stored (not an event: ``events`` is empty)."""

    account_id: str
    email: str | None
    webhook_url: str | None


class BatchItemOut(BaseModel):
    """One item's result: with ``status`` 201 or 200, the fields of ``ViolationRecordedOut``;
    otherwise ``error`` (the error body's object) and a null ``violation_id``."""

    violation_id: str | None
    account_id: str | None
    status: int
    error: dict[str, Any] | None = None


class BatchOut(BaseModel):
    results: list[BatchItemOut]


class AbuseReportOut(BaseModel):
    report_id: str


class WebhookKeyOut(BaseModel):
    """The account's webhook key: the HMAC-SHA256 key, as its 64 hex characters, of the
    ``X-Enforcement-Account-Signature`` header of the account's notices."""

    account_id: str
    webhook_key: str


# (path, method, status) → the model of that answer's body.
ANSWERS: dict[tuple[str, str, str], type[BaseModel]] = {
    ("/v1/violations:batch", "post", "200"): BatchOut,
    ("/v1/abuse-reports", "post", "202"): AbuseReportOut,
    ("/v1/abuse-reports", "post", "200"): AbuseReportOut,
    ("/v1/accounts/{account_id}/appeals", "post", "200"): AppealFiledOut,
    ("/v1/accounts/{account_id}/contact", "put", "200"): ContactOut,
    ("/v1/accounts/{account_id}/notices/{notice_id}/resend", "post", "200"): NoticeResentOut,
    ("/v1/violations", "post", "201"): ViolationRecordedOut,
    ("/v1/violations", "post", "200"): ViolationRecordedOut,
    ("/v1/accounts", "get", "200"): AccountsOut,
    ("/v1/accounts/{account_id}/standing", "get", "200"): StandingOut,
    ("/v1/accounts/{account_id}/events", "get", "200"): AccountEventsOut,
    ("/v1/accounts/{account_id}/notices", "get", "200"): NoticesOut,
    ("/v1/notices", "get", "200"): AllNoticesOut,
    ("/v1/events", "get", "200"): FeedOut,
    ("/v1/accounts/{account_id}/verify", "get", "200"): VerifyOut,
    ("/v1/policy-activations", "get", "200"): PolicyActivationsOut,
    ("/v1/accounts/{account_id}/webhook-key", "get", "200"): WebhookKeyOut,
}
ACCOUNT_COMMANDS = "/v1/accounts/{account_id}/"


def document_answers(document: dict[str, Any]) -> dict[str, Any]:
    """``document`` (FastAPI's OpenAPI) with the answers' schemas in place of the generic
    object FastAPI gives a route that returns plain JSON."""
    from pydantic.json_schema import models_json_schema

    models: list[type[BaseModel]] = list(dict.fromkeys([*ANSWERS.values(), AccountCommandOut]))
    refs, definitions = models_json_schema(
        [(model, "serialization") for model in models],
        ref_template="#/components/schemas/{model}",
    )
    document.setdefault("components", {}).setdefault("schemas", {}).update(
        definitions.get("$defs", {})
    )
    for path, methods in document.get("paths", {}).items():
        for method, operation in methods.items():
            for status, answer in operation.get("responses", {}).items():
                model = ANSWERS.get((path, method, status))
                if model is None and path.startswith(ACCOUNT_COMMANDS) and status == "200":
                    model = AccountCommandOut if method in ("post", "put", "delete") else None
                if model is not None:
                    content = answer.setdefault("content", {})
                    content.setdefault("application/json", {})["schema"] = refs[
                        (model, "serialization")
                    ]
    return document


BEARER = "bearerAuth"


def document_auth(
    document: dict[str, Any], needs: Mapping[tuple[str, str], tuple[bool, Permission | None]]
) -> dict[str, Any]:
    """``document`` with the bearer token declared (so ``/docs`` offers "Authorize" and clients
    generated from it send the token) on each operation that ``needs`` (by path and method)
    says asks for one, and the roles that may call it added to its description."""
    document.setdefault("components", {})["securitySchemes"] = {
        BEARER: {
            "type": "http",
            "scheme": "bearer",
            "description": "A token from `enforcement tokens create --role R --name N`.",
        }
    }
    for path, methods in document.get("paths", {}).items():
        for method, operation in methods.items():
            token, permission = needs.get((path, method), (False, None))
            if not token:
                continue
            operation["security"] = [{BEARER: []}]
            roles = [r.value for r in Role if permission is None or allows(r, permission)]
            text = operation.get("description", "").rstrip()
            operation["description"] = f"{text}\n\nRoles: {', '.join(roles)}.".lstrip()
    return document
