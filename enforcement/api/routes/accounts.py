"""Account commands (role operator): each answers ``{"events", "standing"}``; 409 when the
account's state does not allow the transition."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import unquote_to_bytes

import sqlalchemy as sa
from fastapi import APIRouter, Path, Request
from pydantic import BaseModel

from enforcement import operator_decisions as ops
from enforcement.api.deps import ContainerDep, Operator, actor_of
from enforcement.api.errors import WRITE_ERRORS, ApiError
from enforcement.api.idempotency import Idempotent, RequestKey
from enforcement.api.schemas import (
    AccountId,
    AdultContentIn,
    AppealDecisionIn,
    AppealIn,
    ContactIn,
    KeyId,
    LimitsIn,
    NoteIn,
    ReasonIn,
    ResendIn,
    SuspendIn,
    TerminateIn,
    ThrottleIn,
    TriageIn,
)
from enforcement.api.shapes import outcome_json
from enforcement.api.strict_json import StrictJsonRoute
from enforcement.bootstrap import Container
from enforcement.notice_resending import missing_target
from enforcement.notices.delivery import contact_of
from enforcement.tables import contacts
from enforcement.tokens import Principal
from events.dialects import conflict_insert, write_connection
from events.timefmt import to_utc

router = APIRouter(
    prefix="/v1/accounts/{account_id}",
    tags=["account commands"],
    responses=WRITE_ERRORS,
    route_class=StrictJsonRoute,
)
Account = Annotated[AccountId, Path()]
Id = Annotated[str, Path(min_length=1, max_length=128)]


def _operate(
    container: Container,
    principal: Principal,
    account_id: str,
    command: ops.Command,
    key: RequestKey,
    body: BaseModel | None = None,
) -> dict[str, Any]:
    """Run ``command``, once per Idempotency-Key (a replay answers the first run's events)."""
    outcome = container.service.operator(
        account_id,
        command,
        actor_of(principal),
        idempotency_key=key.key,
        fingerprint=key.fingerprint(body),
    )
    return outcome_json(outcome)


@router.post("/violations/{violation_id}/dismiss")
def dismiss(
    account_id: Account,
    violation_id: Id,
    body: ReasonIn,
    container: ContainerDep,
    principal: Operator,
    key: Idempotent,
) -> dict[str, Any]:
    command = ops.DismissViolation(violation_id, body.reason)
    return _operate(container, principal, account_id, command, key, body)


@router.post("/remediations/{remediation_id}/complete")
def complete_remediation(
    account_id: Account,
    remediation_id: Id,
    body: NoteIn,
    container: ContainerDep,
    principal: Operator,
    key: Idempotent,
) -> dict[str, Any]:
    command = ops.CompleteRemediation(remediation_id, body.note)
    return _operate(container, principal, account_id, command, key, body)


@router.post("/suspend")
def suspend(
    account_id: Account,
    body: SuspendIn,
    container: ContainerDep,
    principal: Operator,
    key: Idempotent,
) -> dict[str, Any]:
    command = ops.Suspend(body.reason, body.until, body.notify)
    return _operate(container, principal, account_id, command, key, body)


@router.post("/reinstate")
def reinstate(
    account_id: Account,
    body: ReasonIn,
    container: ContainerDep,
    principal: Operator,
    key: Idempotent,
) -> dict[str, Any]:
    command = ops.Reinstate(body.reason)
    return _operate(container, principal, account_id, command, key, body)


@router.post("/terminate")
def terminate(
    account_id: Account,
    body: TerminateIn,
    container: ContainerDep,
    principal: Operator,
    key: Idempotent,
) -> dict[str, Any]:
    command = ops.Terminate(body.reason, body.notify)
    return _operate(container, principal, account_id, command, key, body)


@router.post("/throttles")
def apply_throttle(
    account_id: Account,
    body: ThrottleIn,
    container: ContainerDep,
    principal: Operator,
    key: Idempotent,
) -> dict[str, Any]:
    command = ops.ApplyThrottle(body.factor, body.reason, body.key_id, body.expires_at, body.notify)
    return _operate(container, principal, account_id, command, key, body)


@router.delete("/throttles/{throttle_id}")
def lift_throttle(
    account_id: Account,
    throttle_id: Id,
    container: ContainerDep,
    principal: Operator,
    key: Idempotent,
) -> dict[str, Any]:
    command = ops.LiftThrottle(throttle_id)
    return _operate(container, principal, account_id, command, key)


@router.put("/adult-content-approval")
def adult_content_approval(
    account_id: Account,
    body: AdultContentIn,
    container: ContainerDep,
    principal: Operator,
    key: Idempotent,
) -> dict[str, Any]:
    command = ops.SetAdultContentApproval(body.approved, body.reason)
    return _operate(container, principal, account_id, command, key, body)


def _path_is_text(request: Request) -> bool:
    """Whether the request's path, percent-decoded, is UTF-8 text.

    The server decodes an escape that is not UTF-8 (``%FF``) to U+FFFD, silently, so only the
    raw path tells such a key id from one that holds U+FFFD itself (sent as ``%EF%BF%BD``).
    """
    raw = request.scope.get("raw_path")
    if not isinstance(raw, bytes):
        return True  # (optional in ASGI: without it, the decoded path is all there is)
    try:
        unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@router.put("/keys/{key_id:path}/limits")  # a key id may hold "/" (sent as %2F)
def key_limits(
    account_id: Account,
    key_id: Annotated[KeyId, Path()],
    body: LimitsIn,
    container: ContainerDep,
    principal: Operator,
    request: Request,
    key: Idempotent,
) -> dict[str, Any]:
    # The account id is ASCII (validated): an escape that is not UTF-8 is in the key id.
    if "\ufffd" in key_id and not _path_is_text(request):
        raise ApiError(
            422,
            "validation_failed",
            "The request has invalid fields.",
            [{"field": "path.key_id", "message": "must be percent-encoded UTF-8 text"}],
        )
    command = ops.ConfigureLimits(body.requests_per_minute, body.tokens_per_day, key_id)
    return _operate(container, principal, account_id, command, key, body)


@router.put("/limits")
def account_limits(
    account_id: Account,
    body: LimitsIn,
    container: ContainerDep,
    principal: Operator,
    key: Idempotent,
) -> dict[str, Any]:
    command = ops.ConfigureLimits(body.requests_per_minute, body.tokens_per_day, None)
    return _operate(container, principal, account_id, command, key, body)


@router.post("/abuse-reports/{report_id}/triage")
def triage(
    account_id: Account,
    report_id: Id,
    body: TriageIn,
    container: ContainerDep,
    principal: Operator,
    key: Idempotent,
) -> dict[str, Any]:
    outcome = container.service.triage_abuse_report(
        account_id,
        report_id,
        body.outcome,
        body.severity,
        actor_of(principal),
        idempotency_key=key.key,
        fingerprint=key.fingerprint(body),
    )
    return outcome_json(outcome)


@router.post("/appeals")
def file_appeal(
    account_id: Account,
    body: AppealIn,
    container: ContainerDep,
    principal: Operator,
    key: Idempotent,
) -> dict[str, Any]:
    outcome = container.service.file_appeal(
        account_id,
        body.decision_event_id,
        body.statement,
        actor_of(principal),
        idempotency_key=key.key,
        fingerprint=key.fingerprint(body),
    )
    return {"appeal_id": outcome.events[0].data["appeal_id"], **outcome_json(outcome)}


@router.post("/appeals/{appeal_id}/decide")
def decide_appeal(
    account_id: Account,
    appeal_id: Id,
    body: AppealDecisionIn,
    container: ContainerDep,
    principal: Operator,
    key: Idempotent,
) -> dict[str, Any]:
    outcome = container.service.decide_appeal(
        account_id,
        appeal_id,
        body.outcome,
        body.reason,
        actor_of(principal),
        idempotency_key=key.key,
        fingerprint=key.fingerprint(body),
    )
    return outcome_json(outcome)


@router.post("/notices/{notice_id}/resend")
def resend_notice(
    account_id: Account,
    notice_id: Id,
    body: ResendIn,
    container: ContainerDep,
    principal: Operator,
    key: Idempotent,
) -> dict[str, Any]:
    """Send notice ``notice_id`` again: a copy under a new ``notice_id`` (``NoticeIssued``
    with ``resend_of``), delivered to the account's contact as it is now, like any notice, on
    every channel or on ``channels`` (the webhook alone when only it had failed). For a notice
    whose delivery failed for good (no contact then, a refused target) once the contact is
    corrected, or one the account says it never received. 404 when the account has no such
    notice; 409 ``no_target`` when a channel asked for has no target in the contact."""
    channels = None if body.channels is None else tuple(body.channels)
    outcome = container.service.resend_notice(
        account_id,
        notice_id,
        body.reason,
        actor_of(principal),
        channels=channels,
        check=None if channels is None else lambda: _has_targets(container, account_id, channels),
        idempotency_key=key.key,
        fingerprint=key.fingerprint(body),
    )
    return {"notice_id": outcome.events[0].data["notice_id"], **outcome_json(outcome)}


def _has_targets(container: Container, account_id: str, channels: tuple[str, ...]) -> None:
    """409 ``no_target`` unless the account's contact has a target on each of ``channels``."""
    missing = missing_target(contact_of(container.engine, account_id), channels)
    if missing is not None:
        raise ApiError(409, "no_target", missing)


def _since(
    target: sa.Column[Any], stored: sa.Column[Any], given: sa.ColumnElement[Any]
) -> sa.ColumnElement[Any]:
    """A channel's time as an upsert sets it: the one ``given`` (now, or NULL when the channel
    is cleared) if the stored row has no ``target`` for it, else the ``stored`` one (NULL when
    the channel was set before the column existed: "since always")."""
    return sa.case((given.is_(None), sa.null()), (target.is_(None), given), else_=stored)


@router.put("/contact")
def set_contact(
    account_id: Account, body: ContactIn, container: ContainerDep, principal: Operator
) -> dict[str, Any]:
    """Mutable contact data for notices (not an event): the contact as stored, and, as every
    account command answers, ``events`` (none) and the account's ``standing``.

    Each channel keeps since when it has been set (``tables.contacts``): a channel set now
    starts now, one whose target changes keeps its time, one cleared loses it."""
    now = to_utc(container.clock())
    values = {
        "account_id": account_id,
        "email": body.email,
        "webhook_url": body.webhook_url,
        "updated_at": now,
        "email_since": None if body.email is None else now,
        "webhook_since": None if body.webhook_url is None else now,
    }
    with write_connection(container.engine) as conn, conn.begin():
        insert = conflict_insert(conn, contacts).values(**values)
        conn.execute(
            insert.on_conflict_do_update(
                index_elements=[contacts.c.account_id],
                set_={
                    "email": insert.excluded.email,
                    "webhook_url": insert.excluded.webhook_url,
                    "updated_at": insert.excluded.updated_at,
                    "email_since": _since(
                        contacts.c.email, contacts.c.email_since, insert.excluded.email_since
                    ),
                    "webhook_since": _since(
                        contacts.c.webhook_url,
                        contacts.c.webhook_since,
                        insert.excluded.webhook_since,
                    ),
                },
            )
        )
        row = conn.execute(sa.select(contacts).where(contacts.c.account_id == account_id)).one()
    return {
        "account_id": row.account_id,
        "email": row.email,
        "webhook_url": row.webhook_url,
        "events": [],
        "standing": container.service.standing(account_id).to_json(),
    }
