"""An account's webhook key (operator, admin): what its owner checks
``X-Enforcement-Account-Signature`` with (``enforcement.notices.webhook.account_key``)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Response

from enforcement.api.deps import ContainerDep, Operator
from enforcement.api.errors import READ_ERRORS, ApiError, ErrorBody
from enforcement.api.schemas import AccountId
from enforcement.api.strict_json import StrictJsonRoute
from enforcement.notices.webhook import account_key

router = APIRouter(
    prefix="/v1/accounts/{account_id}",
    tags=["webhooks"],
    responses=READ_ERRORS,
    route_class=StrictJsonRoute,
)
Account = Annotated[AccountId, Path()]
_UNSET = (
    "ENFORCEMENT_WEBHOOK_SECRET is unset on the server: webhooks are not signed, so no account "
    "has a key."
)


@router.get(
    "/webhook-key",
    # 409, not 503: nothing is down, and asking again changes nothing until the server is
    # configured (a client that retries a 503 would keep asking).
    responses={409: {"model": ErrorBody, "description": _UNSET}},
)
def get_webhook_key(
    account_id: Account, container: ContainerDep, principal: Operator, response: Response
) -> dict[str, Any]:
    """The account's webhook key, to hand to its owner: the key of the
    `X-Enforcement-Account-Signature` header of its notices (docs/operations.md gives the
    derivation). Secret: it is not cached, and only operators and admins may read it."""
    secret = container.settings.webhook_secret
    if secret is None:
        raise ApiError(409, "webhook_secret_unset", _UNSET)
    response.headers["Cache-Control"] = "no-store"
    return {"account_id": account_id, "webhook_key": account_key(secret, account_id)}
