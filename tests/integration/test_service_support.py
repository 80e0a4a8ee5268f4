"""Shared helpers of the service tests (no tests here): a fake clock, the wired system, and the
invariants every account must keep whatever the use cases did to it.

The invariants, checked against the real database:
- versions are contiguous from 1 and the hash chain verifies;
- the stored standing row is exactly ``apply_all(StandingState.empty(a), every event)``;
- the standing the service answers (stored row + tail, ``view``) equals ``fold`` of the log.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from enforcement import policy as rules
from enforcement.bootstrap import Container, bootstrap
from enforcement.service import Actor, Outcome, request_fingerprint
from enforcement.settings import Settings
from events import EventStore, RecordedEvent
from projections.standing import StandingState, apply_all, fold, view
from projections.stored import read_states
from projections.tables import standings

T0 = datetime(2026, 11, 24, 10, 0, 0, tzinfo=UTC)
OPERATOR = Actor(name="operator:alice", correlation_id="corr-test")
REPORTER = Actor(name="reporter:classifier", correlation_id="corr-report")


class FakeClock:
    """A clock that only moves when told to; safe to read from many threads."""

    def __init__(self, start: datetime = T0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, span: timedelta) -> datetime:
        with self._lock:
            self._now += span
            return self._now

    def set(self, moment: datetime) -> None:
        with self._lock:
            self._now = moment


@contextmanager
def open_system(
    database_url: str, clock: FakeClock, policy_file: Path | None = None
) -> Iterator[Container]:
    """The application wired by the composition root, on a migrated database, with ``clock``
    (and the policy of ``policy_file``, else the default one).

    Its gate is the embedded one, which reads ``clock`` too. (A Redis gate reads Redis' clock:
    a test of one under a fake clock should use open-ended restrictions, or real time.)"""
    policy = None if policy_file is None else str(policy_file)
    container = bootstrap(Settings(database_url=database_url, policy_file=policy), clock=clock)
    try:
        yield container
    finally:
        container.close()


def report(
    system: Container, account: str, category: str, severity: str | None = None, **kw: Any
) -> Outcome:
    """A violation of ``category`` reported now (the system's clock) by ``REPORTER``."""
    violation = rules.ViolationReport(category, system.clock(), severity, **kw)
    return system.service.report_violation(account, violation, REPORTER)


def fail_deciding(monkeypatch: pytest.MonkeyPatch, account_id: str, error: type[Exception]) -> None:
    """Deciding a violation of ``account_id`` raises ``error`` (a bug for that account only);
    every other account's is decided as usual."""
    decide = rules.decide_violation

    def flaky(policy: Any, state: Any, report: Any, ctx: Any) -> Any:
        if state.account_id == account_id:
            raise error("bug for this account only")
        return decide(policy, state, report, ctx)

    monkeypatch.setattr(rules, "decide_violation", flaky)


def fail_appending(
    monkeypatch: pytest.MonkeyPatch, store: EventStore, account_id: str, error: Exception
) -> None:
    """Appending to ``account_id``'s stream raises ``error`` (the store failing on that account
    only); every other account's append is made as usual."""
    append = store.append

    def failing(account: str, *args: Any, **kwargs: Any) -> Any:
        if account == account_id:
            raise error
        return append(account, *args, **kwargs)

    monkeypatch.setattr(store, "append", failing)


def fingerprint(**body: Any) -> str:
    return request_fingerprint(body)


def stored_row(container: Container, account_id: str) -> tuple[int, dict[str, Any]] | None:
    """The stored standing (version, whole state JSON) as the database holds it, or None."""
    return all_stored_rows(container, account_id).get(account_id)


def all_stored_rows(
    container: Container, account_id: str | None = None
) -> dict[str, tuple[int, dict[str, Any]]]:
    """Every stored standing (or one) as (version, whole state JSON): the ``standings`` head
    joined with its ``standing_records``; a head of another schema is given as it is."""
    query = sa.select(standings.c.account_id, standings.c.version, standings.c.state)
    if account_id is not None:
        query = query.where(standings.c.account_id == account_id)
    with container.engine.connect() as conn:
        heads = {r[0]: (r[1], r[2]) for r in conn.execute(query)}
        states = read_states(conn, heads)
    return {
        a: (version, states[a].to_json() if a in states else head)
        for a, (version, head) in heads.items()
    }


def events_of(container: Container, account_id: str) -> list[RecordedEvent]:
    return container.store.read_stream(account_id)


def types_of(events: list[RecordedEvent]) -> list[str]:
    return [e.type for e in events]


def assert_account_consistent(
    container: Container, account_id: str, as_of: datetime | None = None
) -> list[RecordedEvent]:
    """Check every invariant of one account; return its events."""
    log = events_of(container, account_id)
    assert [e.version for e in log] == list(range(1, len(log) + 1))
    verified = container.store.verify(account_id)
    assert verified.ok, verified
    assert verified.events == len(log)

    folded_state = apply_all(StandingState.empty(account_id), log)
    row = stored_row(container, account_id)
    if not log:
        assert row is None
    else:
        assert row is not None, f"no stored standing for {account_id}"
        assert row[0] == len(log)
        assert row[1] == folded_state.to_json()
        assert StandingState.from_json(row[1]).to_json() == folded_state.to_json()

    when = as_of or container.clock()
    lookback = container.policy.strike_lookback
    expected = fold(account_id, log, when, lookback).to_json()
    assert view(container.standings.load(account_id), when, lookback).to_json() == expected
    assert container.service.standing(account_id).to_json() == (
        fold(account_id, log, container.clock(), lookback).to_json()
    )
    return log
