"""The gate (role gateway): ``POST /v1/gate/check``, the hottest path there is."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from enforcement.api.deps import ContainerDep, Gateway
from enforcement.api.errors import ApiError
from enforcement.api.schemas import GateCheckIn
from enforcement.gate import GateUnavailable

router = APIRouter(prefix="/v1/gate", tags=["gate"])


@router.post("/check", response_model=None)
def check(body: GateCheckIn, container: ContainerDep, principal: Gateway) -> Any:
    """Allow and count one request, or refuse it: 429 for rate/quota, 403 when suspended or
    terminated, with the rate-limit headers either way."""
    try:
        decision = container.gate.check(body.account_id, body.key_id, body.tokens)
    except GateUnavailable as exc:
        raise ApiError(503, "dependency_unavailable", "The gate store is unavailable.") from exc
    if decision.allowed:
        status = 200
    else:
        status = 403 if decision.reason in ("suspended", "terminated") else 429
        container.abuse.observe(body.account_id, body.key_id, decision)
    return JSONResponse(decision.to_json(), status_code=status, headers=decision.headers())
