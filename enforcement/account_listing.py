"""Accounts as operators look for them (``GET /v1/accounts``, ``enforcement accounts``): every
account's standing now, those in a status or with something awaiting an operator (an open
appeal or abuse report, a suspension without end pending review, a remediation past due), in
pages in the database's order of account ids.

Every account with events, from the log's accounts in order, each read and viewed at the
instant asked as ``GET …/standing`` reads and views it (its stored standing and the events after
it, so that rows a replay has not caught up yet are not trusted); a page holds up to its
``limit`` accounts that match, and looks at no more than ``SCAN_LIMIT`` accounts, so that a rare
status does not make one request read every account: a page may then hold fewer, with the id to
go on after.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Literal, get_args

from enforcement.bootstrap import Container
from events.timefmt import to_utc
from projections.standing_state import StandingState
from projections.standing_view import Standing, view

# What an account may have that awaits an operator (``has``).
Awaiting = Literal[
    "open_appeals", "open_abuse_reports", "indefinite_suspension", "overdue_remediations"
]
AWAITING: tuple[str, ...] = get_args(Awaiting)
# The most accounts one page looks at: about 0.3 ms each (an account's stored state read and
# viewed; benchmarks/bench_accounts.py), so a page of a rare status answers within a second.
SCAN_LIMIT = 2_000


@dataclass(frozen=True, slots=True)
class AccountsPage:
    """The accounts of a page that match, and the account id to ask the next page after
    (None: no account follows the last one looked at)."""

    accounts: list[Standing]
    next_after: str | None


# What ``has`` asks of a standing, for each of ``AWAITING``.
_HAS: dict[str, Callable[[Standing], bool]] = {
    "open_appeals": lambda s: s.open_appeals > 0,
    "open_abuse_reports": lambda s: s.open_abuse_reports > 0,
    # A terminated account keeps its suspension, but nothing awaits review.
    "indefinite_suspension": lambda s: (
        not s.terminated and s.suspension is not None and s.suspension.until is None
    ),
    "overdue_remediations": lambda s: bool(s.overdue_remediations),
}


def matches(standing: Standing, status: str | None, has: str | None) -> bool:
    """Whether ``standing`` is in ``status`` (None: any) and has ``has`` (one of
    ``AWAITING``; None: anything)."""
    if status is not None and standing.status != status:
        return False
    return has is None or _HAS[has](standing)


def accounts_page(
    container: Container,
    *,
    status: str | None = None,
    has: str | None = None,
    after: str = "",
    limit: int | None = None,
    scan_limit: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> AccountsPage:
    """The standings now (as ``GET …/standing`` views them: the service's clock and policy) of
    the accounts after ``after`` that ``matches``, up to ``limit`` of them (None: all),
    looking at up to ``scan_limit`` accounts (None: all); ``progress`` is told how many were
    looked at."""
    service = container.service
    now, lookback = to_utc(service.clock()), service.policy.strike_lookback
    found: list[Standing] = []
    seen, last = 0, None
    # Without a filter, a page of ``limit`` reads no more states than it lists.
    page_size = min(limit, 500) if limit is not None and status is None and has is None else 500
    states = _states(container, after, page_size)
    for state in states if scan_limit is None else islice(states, scan_limit):
        seen, last = seen + 1, state.account_id
        standing = view(state, now, lookback)
        if matches(standing, status, has):
            found.append(standing)
        if progress is not None and seen % 500 == 0:
            progress(seen)
        if limit is not None and len(found) == limit:
            break
    if progress is not None:
        progress(seen)
    stopped = (limit is not None and len(found) == limit) or seen == scan_limit
    return AccountsPage(found, last if stopped else None)


def _states(container: Container, after: str, page_size: int) -> Iterator[StandingState]:
    """The state of every account of the log after ``after``, in order, read as ``GET
    …/standing`` reads it (``StandingRepository.load_many``: the stored rows and the events
    after them), ``page_size`` accounts at a time."""
    ids = container.store.account_ids(after, page_size)
    while page := list(islice(ids, page_size)):
        states = container.standings.load_many(page)
        yield from (states[account_id] for account_id in page)
