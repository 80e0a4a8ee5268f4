"""The gate (role gateway): ``POST /v1/gate/check``, the hottest path there is."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from enforcement.api.deps import ContainerDep, Gateway
from enforcement.api.errors import ApiError, ErrorBody, error_responses
from enforcement.api.schemas import GateCheckIn
from enforcement.api.strict_json import StrictJsonRoute
from enforcement.gate import GateUnavailable


class GateDecisionOut(BaseModel):
    """The gate's answer (CONTRACT.md, "Gate"), allowed or not."""

    allowed: bool
    reason: Literal["ok", "rate_limited", "token_quota_exceeded", "suspended", "terminated"]
    limit_requests: int
    remaining_requests: int
    reset_requests_s: float
    limit_tokens: int
    remaining_tokens: int
    reset_tokens_s: float
    retry_after_s: float


router = APIRouter(prefix="/v1/gate", tags=["gate"], route_class=StrictJsonRoute)
_UNAVAILABLE = (
    "The gate's store, or the database it learns an account's standing from, is unavailable."
)
_DENIED = "Denied: 429 for rate or token quota, 403 when the account is suspended or terminated."


@router.post(
    "/check",
    response_model=None,
    responses={
        200: {"model": GateDecisionOut, "description": "Allowed (and counted)."},
        **error_responses(400, 401, 413, 415, 422, 503),
        403: {
            "model": ErrorBody | GateDecisionOut,
            "description": "The token's role may not check, or " + _DENIED,
        },
        429: {"model": GateDecisionOut, "description": _DENIED},
    },
)
def check(body: GateCheckIn, container: ContainerDep, principal: Gateway) -> Any:
    """Allow and count one request, or refuse it: 429 for rate/quota, 403 when suspended or
    terminated, with the rate-limit headers either way."""
    try:
        decision = container.gate_check(body.account_id, body.key_id, body.tokens)
    except GateUnavailable as exc:
        raise ApiError(503, "dependency_unavailable", _UNAVAILABLE) from exc
    if decision.allowed:
        status = 200
    else:
        status = 403 if decision.reason in ("suspended", "terminated") else 429
    return JSONResponse(decision.to_json(), status_code=status, headers=decision.headers())
