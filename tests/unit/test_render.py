"""The CLI's history table writes times as the contract does (RFC 3339 UTC, microseconds, Z)."""

from __future__ import annotations

from datetime import UTC, datetime

from rich.console import Console

from enforcement.render import history_table
from events.types import RecordedEvent
from projections.history import HistoryEntry


def test_the_history_table_writes_recorded_at_with_a_z() -> None:
    moment = datetime(2026, 12, 4, 0, 46, 54, tzinfo=UTC)  # whole seconds, too
    event = RecordedEvent(
        position=1,
        event_id="0190c0de-0000-7000-8000-000000000001",
        account_id="acct_1",
        version=1,
        type="ViolationReported",
        schema_version=1,
        data={},
        metadata={},
        occurred_at=moment,
        recorded_at=moment,
        prev_hash="0" * 64,
        hash="f" * 64,
    )
    entry = HistoryEntry(event, {}, None, None)
    console = Console(width=200, record=True)
    console.print(history_table("acct_1", [entry]))
    text = console.export_text()
    assert "2026-12-04T00:46:54.000000Z" in text
    assert "+00:00" not in text
