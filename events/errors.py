"""The event store's own errors: callers never see a raw driver or SQLAlchemy exception."""

from __future__ import annotations

from collections.abc import Iterator


def causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then what it was raised from or while handling (``__cause__``, else
    ``__context__``), and so on, each once: the chain a wrapper (SQLAlchemy's, redis-py's, the
    gate's ``GateUnavailable``) hides the original error in."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        yield cause
        cause = cause.__cause__ or cause.__context__


class StoreError(Exception):
    """Base class of every error the event store raises."""


class ConcurrencyError(StoreError):
    """The stream moved on since it was read: ``expected_version`` is no longer its head."""

    def __init__(self, account_id: str, expected_version: int, actual_version: int | None = None):
        self.account_id = account_id
        self.expected_version = expected_version
        self.actual_version = actual_version
        found = "" if actual_version is None else f", found {actual_version}"
        super().__init__(f"stream {account_id!r} is not at version {expected_version}{found}")


class IdempotencyConflict(StoreError):
    """An idempotency key came back with a different payload, or for other streams, than the
    first time. ``fingerprint``: the one the key was recorded with (None when not known)."""

    def __init__(self, key: str, fingerprint: str | None = None):
        self.key = key
        self.fingerprint = fingerprint
        super().__init__(f"idempotency key {key!r} was already used with a different payload")


class StreamKeyUsed(StoreError):
    """One of several streams appended together has an idempotency key used before: nothing was
    recorded; appended on its own, that stream gets its earlier result (or a conflict)."""


class AppendOnlyViolation(StoreError):
    """The database refused to UPDATE or DELETE a recorded event."""


class UnknownEventType(StoreError):
    """The codec has no registration for an event type."""


class AppendOutcomeUnknown(StoreError):
    """The connection was lost while an append was being committed, and the database could not
    be asked afterwards whether it was, or (through a connection pooler) did not show it yet
    while its session could still commit it: the append may have been recorded. Retrying with
    the same idempotency key, or reading the stream, tells."""
