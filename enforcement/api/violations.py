"""``POST /v1/violations``'s work in a worker thread: the report from the request body, the use
case, and the answer as the contract shapes it (``violation_json``, also the batch's items)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import Response

from enforcement.api.errors import ApiError
from enforcement.api.responses import json_response
from enforcement.api.schemas import ViolationIn
from enforcement.api.shapes import FUTURE_TOLERANCE
from enforcement.bootstrap import Container
from enforcement.policy import ViolationReport
from enforcement.service import Actor, Outcome, request_fingerprint
from events.timefmt import to_utc
from events.wire import event_to_json


def report_of(body: ViolationIn, now: datetime) -> ViolationReport:
    occurred = to_utc(body.occurred_at) if body.occurred_at is not None else now
    if occurred > now + FUTURE_TOLERANCE:
        raise ApiError(
            422,
            "validation_failed",
            "The occurred_at time is more than 5 minutes in the future.",
            [{"field": "occurred_at", "message": "more than 5 minutes in the future"}],
        )
    return ViolationReport(
        category=body.category,
        occurred_at=occurred,
        severity=body.severity,
        key_id=body.key_id,
        source=body.source,
        detection=body.detection,
        evidence_ref=body.evidence_ref,
        description=body.description,
    )


def violation_json(account_id: str, outcome: Outcome) -> dict[str, Any]:
    reported = next((e for e in outcome.events if e.type == "ViolationReported"), None)
    events = [event_to_json(e) for e in outcome.events]  # each event's JSON made once
    return {
        "violation_id": reported.data["violation_id"] if reported else None,
        "account_id": account_id,
        "decisions": [
            j for e, j in zip(outcome.events, events, strict=True) if e.type != "ViolationReported"
        ],
        "events": events,
        "standing": outcome.standing.to_json(),
    }


def prepared(body: ViolationIn, now: datetime) -> tuple[ViolationReport, str]:
    """The use case's report of ``body`` (``report_of``) and the body's idempotency fingerprint."""
    fingerprint = request_fingerprint(body.model_dump(mode="json", exclude_unset=True))
    return report_of(body, now), fingerprint


def answer_of(account_id: str, outcome: Outcome) -> Response:
    """The route's response: 201, or 200 on an idempotent replay."""
    return json_response(violation_json(account_id, outcome), 200 if outcome.replayed else 201)


def record_violation(
    body: ViolationIn, container: Container, actor: Actor, idempotency_key: str | None
) -> Response:
    report, fingerprint = prepared(body, to_utc(container.clock()))
    outcome = container.service.report_violation(
        body.account_id, report, actor, idempotency_key, fingerprint
    )
    return answer_of(body.account_id, outcome)
