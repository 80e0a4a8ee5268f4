"""Reading (operator, auditor; standing also gateway): standing, events, feed, verify, an
account's notices and their deliveries (every account's since an instant), and the policies
the deployment began with."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query

from enforcement import account_listing, policy_activations
from enforcement.account_listing import Awaiting, accounts_page
from enforcement.api.deps import ContainerDep, Reader, StandingReader
from enforcement.api.errors import READ_ERRORS
from enforcement.api.schemas import AccountId
from enforcement.api.shapes import parse_query_time
from enforcement.api.strict_json import StrictJsonRoute
from enforcement.notice_listing import listed_notices, listed_page
from events.wire import event_to_json
from projections.standing_view import Status

router = APIRouter(
    prefix="/v1", tags=["reading"], responses=READ_ERRORS, route_class=StrictJsonRoute
)
Account = Annotated[AccountId, Path()]
# The columns' ranges (version INTEGER, position BIGINT): a larger cursor is a 422, not a
# driver overflow.
MAX_VERSION = 2**31 - 1
MAX_POSITION = 2**63 - 1
# A notice's state, as ``projections.notices.NOTICE_STATES`` names them.
NoticeState = Literal["pending", "delivered", "partly_delivered", "failed", "sent_again"]


@router.get("/accounts/{account_id}/standing")
def get_standing(
    account_id: Account,
    container: ContainerDep,
    principal: StandingReader,
    as_of: str | None = None,
) -> dict[str, Any]:
    """The standing folded from the events recorded up to ``as_of`` (default now), its strikes
    counted as the policy of that instant did (``enforcement.policy_activations``)."""
    moment = parse_query_time(as_of, "as_of")
    return container.service.standing(account_id, moment).to_json()


@router.get("/accounts/{account_id}/notices")
def get_notices(
    account_id: Account,
    container: ContainerDep,
    principal: Reader,
    state: NoticeState | None = None,
    since: str | None = None,
) -> dict[str, Any]:
    """The account's notices, oldest first, each with how its delivery went on each channel
    (those of the contact without an outcome yet: ``awaiting``); ``state`` keeps those in that
    state (``failed``: nothing delivered it and nothing more is tried, to send again with
    ``POST …/notices/{notice_id}/resend`` once the cause is mended), ``since`` those issued
    then or later."""
    moment = parse_query_time(since, "since")
    notices = listed_notices(container, account_id, moment, state=state)
    return {"account_id": account_id, "notices": [n.to_json() for n in notices]}


@router.get("/notices")
def get_all_notices(
    container: ContainerDep,
    principal: Reader,
    since: str,
    state: NoticeState | None = None,
    after_position: Annotated[int, Query(ge=0, le=MAX_POSITION)] = 0,
    limit: Annotated[int | None, Query(ge=1, le=1000)] = None,
) -> dict[str, Any]:
    """Every account's notices issued ``since`` then or later (required: one pass over the
    log from the first event recorded then, as ``enforcement notices --all --since``), oldest
    first, each with how its delivery went on each channel; ``state`` keeps those in that
    state (``failed``, after a fault that failed many: those to send again). With ``limit``,
    a page: of the next ``limit`` notices after ``after_position``, those in ``state``, and
    ``next_after_position`` to ask the next page with (null: none follows); without, every
    one at once."""
    moment = parse_query_time(since, "since")
    if limit is None:
        notices = listed_notices(container, None, moment, state=state, after=after_position)
        return {"notices": [n.to_json() for n in notices], "next_after_position": None}
    page, following = listed_page(container, moment, after_position, limit, state)
    return {"notices": [n.to_json() for n in page], "next_after_position": following}


@router.get("/accounts")
def get_accounts(
    container: ContainerDep,
    principal: Reader,
    status: Status | None = None,
    has: Awaiting | None = None,
    after: Annotated[str, Query(max_length=128, pattern=r"^[A-Za-z0-9._:-]*$")] = "",
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """The accounts' standings now, in the database's order of account ids after ``after``:
    those in ``status``, with ``has`` (an open appeal or abuse report, a suspension without end
    pending review, a remediation past due), up to ``limit`` of them. A page looks at no more
    than 2,000 accounts, so it may hold fewer; ask the next with ``after=next_after`` until it
    is null."""
    page = accounts_page(
        container,
        status=status,
        has=has,
        after=after,
        limit=limit,
        scan_limit=account_listing.SCAN_LIMIT,
    )
    return {
        "accounts": [s.to_json() for s in page.accounts],
        "next_after": page.next_after,
    }


@router.get("/accounts/{account_id}/events")
def get_account_events(
    account_id: Account,
    container: ContainerDep,
    principal: Reader,
    after_version: Annotated[int, Query(ge=0, le=MAX_VERSION)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    events = container.store.read_stream(account_id, after_version, limit=limit)
    return {
        "events": [event_to_json(e) for e in events],
        "next_after_version": events[-1].version if len(events) == limit else None,
    }


@router.get("/events")
def get_events(
    container: ContainerDep,
    principal: Reader,
    after_position: Annotated[int, Query(ge=0, le=MAX_POSITION)] = 0,
    limit: Annotated[int, Query(ge=1, le=5000)] = 500,
) -> dict[str, Any]:
    """Every account's events in commit-safe position order."""
    events = container.store.read_all(after_position, limit)
    return {
        "events": [event_to_json(e) for e in events],
        "next_after_position": events[-1].position if len(events) == limit else None,
    }


@router.get("/accounts/{account_id}/verify")
def verify(account_id: Account, container: ContainerDep, principal: Reader) -> dict[str, Any]:
    result = container.store.verify(account_id)
    if result.ok:
        return {"ok": True, "events": result.events, "head_hash": result.head_hash}
    return {
        "ok": False,
        "events": result.events,
        "broken_at_version": result.broken_at_version,
        "reason": result.reason,
    }


@router.get("/policy-activations")
def get_policy_activations(
    container: ContainerDep,
    principal: Reader,
    after_position: Annotated[int, Query(ge=0, le=MAX_POSITION)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """Each start of a serving process with the policy it runs, oldest first: a standing
    ``as_of`` an instant counts strikes with the last one begun by then when it began after the
    account's last event (``enforcement.policy_activations``)."""
    rows = policy_activations.listed(container.engine, after_position, limit)
    return {
        "activations": [row.to_json() for row in rows],
        "next_after_position": rows[-1].position if len(rows) == limit else None,
    }
