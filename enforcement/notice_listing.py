"""Notices as operators and auditors list them (``GET …/notices``, ``enforcement notices``): the
log's fold (``projections.notices``) with each notice's channels that have no outcome yet, which
only the contact tells (``workers.recovery.notice_channels``)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from enforcement.bootstrap import Container
from enforcement.workers.recovery import notice_channels
from projections.notices import NoticeDeliveries, with_awaited


def listed_notices(
    container: Container,
    account_id: str | None,
    issued_since: datetime | None = None,
    progress: Callable[[int], None] | None = None,
    state: str | None = None,
) -> list[NoticeDeliveries]:
    """The notices of ``account_id`` (None: of every account, one pass over the log, telling
    ``progress`` the position reached) issued since ``issued_since``, oldest first; with
    ``state``, those in that state (known only once the awaited channels are added)."""
    service = container.service
    if account_id is None:
        found = service.all_notices(issued_since, progress)
    else:
        found = service.notices(account_id, issued_since)
    if not found:
        return found
    accounts = {n.account_id for n in found}
    listed = with_awaited(found, notice_channels(container.engine, accounts))
    return [n for n in listed if state is None or n.state == state]
