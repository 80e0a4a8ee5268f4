"""``POST /v1/violations``'s work in a worker thread: the report from the request body, the use
case, and the answer as the contract shapes it (``violation_json``, also the batch's items)."""

from __future__ import annotations

import functools
import itertools
from datetime import datetime
from typing import Any

from fastapi import Response

from enforcement.api.errors import ApiError
from enforcement.api.responses import json_response
from enforcement.api.schemas import ViolationIn
from enforcement.api.shapes import FUTURE_TOLERANCE
from enforcement.bootstrap import Container
from enforcement.policy import ViolationReport
from enforcement.service import Actor, Fingerprint, Outcome, request_fingerprint
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


# Each optional field of a report and its default (each already a JSON value: none or text).
_DEFAULTS: dict[str, Any] = {
    name: field.default
    for name, field in ViolationIn.model_fields.items()
    if not field.is_required()
}


def report_fingerprint(body: ViolationIn) -> Fingerprint:
    """The idempotency fingerprint of a report, alike for ``POST /v1/violations`` and a batch
    item (whose key, if any, is not part of it): the hash of its validated fields, those at
    their default left out. The same report gives the same hash however it was written (key
    order, whitespace, a field written out at its default or ``null`` for one that defaults to
    none, a time in another offset); another value of any field gives another. It is the hash
    a batch's ``Idempotency-Key`` header always derived its items' keys from.

    Before, a single report and a batch item with its own key hashed the fields the body wrote
    out (a default written out made another hash): a key recorded so still replays its report
    (``Fingerprint.earlier``)."""
    fields = body.model_dump(mode="json", exclude_defaults=True, exclude={"idempotency_key"})
    return Fingerprint(request_fingerprint(fields), functools.partial(_written_earlier, fields))


def _written_earlier(fields: dict[str, Any], recorded: str) -> bool:
    """Whether ``recorded`` is the earlier fingerprint of the report of ``fields`` (its fields
    not at their default) written some way: those fields and any of the others written out at
    their default. At most 2**7 hashes, and only for a key recorded with another fingerprint."""
    at_default = [name for name in _DEFAULTS if name not in fields]
    for count in range(1, len(at_default) + 1):
        for names in itertools.combinations(at_default, count):
            spelled = {**fields, **{name: _DEFAULTS[name] for name in names}}
            if request_fingerprint(spelled) == recorded:
                return True
    return False


def prepared(body: ViolationIn, now: datetime) -> tuple[ViolationReport, Fingerprint]:
    """The use case's report of ``body`` (``report_of``) and its idempotency fingerprint."""
    return report_of(body, now), report_fingerprint(body)


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
