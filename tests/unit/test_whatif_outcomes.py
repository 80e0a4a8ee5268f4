"""``whatif.outcome_of``: the harshest restriction decided on one violation (pure)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from enforcement.whatif import Outcome, outcome_of

AT = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


@dataclass
class Decision:
    type: str
    data: dict[str, Any] = field(default_factory=dict)
    occurred_at: datetime = AT


def test_a_held_suspension_restricts_nothing_and_an_ordinary_one_does() -> None:
    """A suspension held behind a longer one (``held_by``) is no restriction when decided, so
    a log recorded before such suspensions existed (it has none) compares equal."""
    until = "2026-12-24T10:00:00.000000Z"
    held = Decision("AccountSuspended", {"until": until, "held_by": "sus_1"})
    ordinary = Decision("AccountSuspended", {"until": until, "held_by": None})
    before_held_by = Decision("AccountSuspended", {"until": until})

    assert outcome_of([held]) == outcome_of([]) == Outcome()
    assert outcome_of([ordinary]).kind == "suspension"
    assert outcome_of([before_held_by]) == outcome_of([ordinary])
