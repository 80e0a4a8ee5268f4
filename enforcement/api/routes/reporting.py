"""Reporting (role reporter): violations, batches, abuse reports."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from typing import Annotated, Any

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from enforcement.api.coalesce import report_violation_answer
from enforcement.api.deps import ContainerDep, Reporter, actor_of
from enforcement.api.errors import WRITE_ERRORS, ApiError, validation_details
from enforcement.api.idempotency import (
    RESERVED_NOTE,
    HeaderText,
    IdempotencyKey,
    Idempotent,
    key_header,
)
from enforcement.api.responses import encode_json, json_array_response
from enforcement.api.schemas import (
    AbuseReportIn,
    BatchItemIn,
    NotReserved,
    ViolationIn,
)
from enforcement.api.strict_json import StrictJsonRoute
from enforcement.api.violations import report_fingerprint, report_of, violation_json
from enforcement.service import Outcome
from events.timefmt import to_utc

router = APIRouter(
    prefix="/v1", tags=["reporting"], responses=WRITE_ERRORS, route_class=StrictJsonRoute
)


class BatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # Items are validated one by one (a bad one, even one that is no object, stops no other);
    # the schema still documents them as objects.
    violations: Annotated[
        list[Any],
        Field(min_length=1, max_length=1000, json_schema_extra={"items": {"type": "object"}}),
    ]


@router.post(
    "/violations",
    status_code=201,
    response_model=dict[str, Any],
    responses={200: {"description": "The same Idempotency-Key and body again: nothing new."}},
)
async def report_violation(
    body: ViolationIn,
    container: ContainerDep,
    principal: Reporter,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Record a violation; the policy decides at once. 200 on an idempotent replay."""
    return await report_violation_answer(container, body, actor_of(principal), idempotency_key)


def batch_item_key(header: str, fingerprint: str, occurrence: int) -> str:
    """The key a batch's ``Idempotency-Key`` gives an item without one of its own: the same
    header, the same item (its fingerprint) and the same count of identical items before it in
    the batch give the same key, wherever the item stands (a retry may drop or fix other
    items). 70 characters whatever the header's length, prefixed ``batch:``: a client's own
    key meets one only if it is that very text (a hash of another caller's header).
    """
    text = json.dumps([header, fingerprint, occurrence], separators=(",", ":"))
    return "batch:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


@router.post("/violations:batch", response_model=dict[str, Any])
def report_batch(
    body: BatchIn,
    container: ContainerDep,
    principal: Reporter,
    idempotency_key: Annotated[
        str | None,
        key_header(
            "Makes each item without its own idempotency_key idempotent: sent again "
            "under the same header, an item already recorded replays (200), wherever it stands "
            "in the batch; a new or changed item is recorded. " + RESERVED_NOTE
        ),
        HeaderText,
        NotReserved,
    ] = None,
) -> Response:
    """Up to 1000 violations; each item has its own status and one bad item stops no other."""
    now = to_utc(container.clock())
    # An item's answer, or what it is made of: each carries the account's whole standing, so
    # the documents are made one by one as the answer is sent (``json_array_response``).
    results: list[dict[str, Any] | tuple[int, str, Outcome] | None] = [None] * len(body.violations)
    items, positions = [], []
    seen: Counter[str] = Counter()  # identical items so far (each is a violation of its own)
    for index, raw in enumerate(body.violations):
        try:
            item = BatchItemIn.model_validate(raw)
            report = report_of(item, now)
        except ValidationError as exc:
            results[index] = _item_error(
                raw,
                422,
                "validation_failed",
                "The item has invalid fields.",
                validation_details(exc.errors(), whole="item"),
            )
            continue
        except ApiError as exc:
            results[index] = _item_error(raw, exc.status, exc.code, exc.message, exc.details)
            continue
        key = item.idempotency_key
        # The same item however written (a field written out at its default is the field left
        # out), as for a single report: the same key with it replays, on either endpoint.
        fingerprint = report_fingerprint(item)
        if key is None and idempotency_key is not None:  # an item's own key comes first
            key = batch_item_key(idempotency_key, fingerprint.value, seen[fingerprint.value])
            seen[fingerprint.value] += 1
        items.append((item.account_id, report, key, fingerprint))
        positions.append(index)
    outcomes = container.service.report_batch(items, actor_of(principal))
    for index, (account_id, *_), result in zip(positions, items, outcomes, strict=True):
        if result.outcome is not None:
            results[index] = (result.status, account_id, result.outcome)
        else:
            err = result.error
            code = getattr(err, "code", "idempotency_key_reused")
            message = getattr(err, "message", None) or (
                "This item's idempotency_key was already used with a different item."
            )
            results[index] = _item_error(
                {"account_id": account_id},
                result.status,
                code,
                message,
                getattr(err, "details", None),
            )
    return json_array_response("results", map(_item_answer, results))


def _item_answer(result: dict[str, Any] | tuple[int, str, Outcome] | None) -> dict[str, Any]:
    if isinstance(result, tuple):
        status, account_id, outcome = result
        return {"status": status, **violation_json(account_id, outcome)}
    assert result is not None  # every item has its result by now
    return result


def _item_error(raw: Any, status: int, code: str, message: str, details: Any) -> dict[str, Any]:
    account = raw.get("account_id") if isinstance(raw, dict) else None
    if not _answerable(account):
        account = None
    return {
        "violation_id": None,
        "account_id": account,
        "status": status,
        "error": {"code": code, "message": message, "details": details},
    }


def _answerable(value: Any) -> bool:
    """Whether ``value`` can be part of an answer as the answer is encoded (``encode_json``):
    JSON's ``"\\udc80"`` is a lone surrogate, which no UTF-8 text holds (echoing one would be a
    500)."""
    try:
        encode_json(value)
    except ValueError:  # UnicodeEncodeError among them
        return False
    return True


@router.post(
    "/abuse-reports",
    status_code=202,
    responses={200: {"description": "The same Idempotency-Key and body again: nothing new."}},
)
def file_abuse_report(
    body: AbuseReportIn,
    container: ContainerDep,
    principal: Reporter,
    key: Idempotent,
    response: Response,
) -> dict[str, Any]:
    """A third party reports another account (AUP §7): recorded, no strike until triaged.
    200 and the first answer's ``report_id`` on an idempotent replay."""
    outcome = container.service.file_abuse_report(
        body.reported_account_id,
        body.category,
        body.description or "",
        body.reporter_contact,
        body.evidence_ref,
        actor_of(principal),
        idempotency_key=key.key,
        fingerprint=key.fingerprint(body),
    )
    if outcome.replayed:
        response.status_code = 200
    return {"report_id": outcome.events[0].data["report_id"]}
