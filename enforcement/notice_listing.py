"""Notices as operators and auditors list them (``GET …/notices``, ``enforcement notices``): the
log's fold (``projections.notices``) with each notice's channels that have no outcome yet, which
only the contact tells (``workers.recovery.notice_channels``)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from itertools import islice

from enforcement.bootstrap import Container
from enforcement.workers.recovery import notice_channels
from projections.notices import NoticeDeliveries, with_awaited


def listed_notices(
    container: Container,
    account_id: str | None,
    issued_since: datetime | None = None,
    progress: Callable[[int], None] | None = None,
    state: str | None = None,
    after: int = 0,
) -> list[NoticeDeliveries]:
    """The notices of ``account_id`` (None: of every account at a position past ``after``,
    one pass over the log, telling ``progress`` the position reached) issued since
    ``issued_since``, oldest first; with ``state``, those in that state (known only once the
    awaited channels are added)."""
    service = container.service
    if account_id is None:
        found = service.all_notices(issued_since, progress, after)
    else:
        found = service.notices(account_id, issued_since)
    if not found:
        return found
    accounts = {n.account_id for n in found}
    listed = with_awaited(found, notice_channels(container.engine, accounts))
    return [n for n in listed if state is None or n.state == state]


def listed_page(
    container: Container,
    issued_since: datetime | None,
    after_position: int,
    limit: int,
    state: str | None = None,
) -> tuple[list[NoticeDeliveries], int | None]:
    """A page of ``listed_notices(container, None, issued_since, state=state)``: of the first
    ``limit`` notices issued since ``issued_since`` at a position after ``after_position``,
    those in ``state``, and the position to ask the next page after (None: the last page).
    Each account's notices are folded from its own notice events past the page's start (its
    outcomes and copies come after a notice, anywhere later in the log), the page's accounts
    read together: a page reads its ``limit`` notices and those accounts' notice events, not
    the whole log past them. The pages in turn list what one pass lists."""
    store = container.store
    since = 0 if issued_since is None else store.position_before(issued_since)
    start = max(after_position, since)
    # One query: as many rows as the page holds.
    issued = list(islice(store.iter_all_of_types(("NoticeIssued",), start, limit), limit))
    accounts = list(dict.fromkeys(e.account_id for e in issued))
    found = container.service.accounts_notices(accounts, issued_since, start)
    listed = with_awaited(found, notice_channels(container.engine, set(accounts)))
    by_event = {n.notice_event_id: n for n in listed}
    page = [by_event[e.event_id] for e in issued if e.event_id in by_event]
    following = issued[-1].position if len(issued) == limit else None
    return [n for n in page if state is None or n.state == state], following
