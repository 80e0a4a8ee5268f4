"""The items of a batch of reports (``EnforcementService.report_batch`` and ``report_each``):
which may be recorded in one shared transaction (``groupable``), and each item's own result,
its failure in the store mapped to a status (``item_result``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy.exc import DBAPIError

from enforcement.errors import DomainError, ValidationFailed
from enforcement.policy import ViolationReport
from enforcement.service_types import Fingerprint, Outcome
from enforcement.silent_database import NotSent
from events import AppendOutcomeUnknown, ConcurrencyError, IdempotencyConflict, StoreError

# The service's logger, as before these lived apart from it.
log = logging.getLogger("enforcement.service")


@dataclass(frozen=True, slots=True)
class ItemResult:
    """One item of a batch: its own status and outcome or error."""

    status: int
    outcome: Outcome | None = None
    error: DomainError | IdempotencyConflict | None = None


# A report to record: account, report, idempotency key and fingerprint.
ReportItem = tuple[str, ViolationReport, str | None, str | Fingerprint | None]


def item_result(run: Callable[[], Outcome]) -> ItemResult:
    """A batch item's result: its outcome, or the error the API reports for it. An item that
    fails for any reason fails alone: the items before it may be committed already, so the
    batch must still answer for each (a whole-request error would say nothing was written)."""
    try:
        outcome = run()
    except (IdempotencyConflict, DomainError) as exc:
        return item_error(exc)
    except (ConcurrencyError, DBAPIError, StoreError) as exc:
        for kind, status, code, message in _ITEM_FAILURES:
            if isinstance(exc, kind):
                # One not sent was not tried: ``UntilSilent`` logged why, once for them all.
                if status >= 500 and not isinstance(exc, NotSent):
                    log.exception("a batch item failed in the store")
                return ItemResult(status, error=DomainError(message, code=code))
        raise  # pragma: no cover - every kind caught above has a row
    return ItemResult(200 if outcome.replayed else 201, outcome)


# A batch item's failure in the store: its status, code and message, first match wins (a
# ConcurrencyError is a StoreError too).
_ITEM_FAILURES: tuple[tuple[type[Exception], int, str, str], ...] = (
    (
        ConcurrencyError,
        409,
        "concurrent_update",
        "The account changed concurrently too many times; this item was not recorded: retry it.",
    ),
    (
        DBAPIError,
        503,
        "dependency_unavailable",
        "The database refused this item; it was not recorded.",
    ),
    (
        AppendOutcomeUnknown,
        503,
        "dependency_unavailable",
        "The database connection was lost while this item was being recorded; it may have "
        "been recorded: retry it with the same idempotency_key.",
    ),
    (
        StoreError,
        500,
        "internal_error",
        "The event store failed on this item; it was not recorded.",
    ),
)


def item_error(error: IdempotencyConflict | DomainError) -> ItemResult:
    return ItemResult(422 if isinstance(error, ValidationFailed) else 409, error=error)


def groupable(items: Sequence[ReportItem]) -> list[int]:
    """The items that may be recorded in one shared transaction: each account's first item,
    if it has no idempotency key (so the items of one account stay in order)."""
    first_of_account: dict[str, int] = {}
    for index, (account_id, *_rest) in enumerate(items):
        first_of_account.setdefault(account_id, index)
    return [i for i in first_of_account.values() if items[i][2] is None]
