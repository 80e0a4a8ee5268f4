"""The log ``benchmarks/bench_replay.py`` generates is one the service could have written: each
account's copy of a template history has every instant moved by its shift, those inside the
events too (a suspension's ``until``, a remediation's ``due_at``...), so no end comes before its
start, and the whole log folds."""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

from bench_replay import generate_rows  # noqa: E402

from events import RecordedEvent  # noqa: E402
from events.timefmt import parse_time  # noqa: E402
from projections.standing import StandingState, apply_all  # noqa: E402

# Instants that end what the event starts: they come after it.
ENDS = ("until", "expires_at", "due_at", "deadline", "appeal_deadline")


def ends_before_start(data: Any, start: datetime) -> list[str]:
    """The ends in ``data`` (at any depth) at or before ``start``, and the facts after it."""
    wrong: list[str] = []
    if isinstance(data, dict):
        for key, value in data.items():
            if key in ENDS and value is not None and parse_time(value) <= start:
                wrong.append(f"{key} {value}")
            elif key == "occurred_at" and parse_time(value) > start:
                wrong.append(f"fact at {value}")
            else:
                wrong += ends_before_start(value, start)
    elif isinstance(data, list):
        for value in data:
            wrong += ends_before_start(value, start)
    return wrong


def test_a_generated_log_has_every_end_after_its_start_and_folds() -> None:
    # Given a small generated log
    rows = [row for chunk in generate_rows(3000, 60, seed=7) for row in chunk]

    # Then no instant an event names ends before the event
    wrong = [
        f"{row[3]} recorded {row[8]}: {problem}"
        for row in rows
        for problem in ends_before_start(json.loads(row[5]), row[8])
    ]
    assert not wrong, wrong[:5]

    # And every account's history folds
    histories: dict[str, list[RecordedEvent]] = defaultdict(list)
    for position, row in enumerate(rows, start=1):
        event_id, account, version, type_, schema, data, metadata, occurred, recorded = row[:9]
        event = RecordedEvent(position, event_id, account, version, type_, schema,
                              json.loads(data), json.loads(metadata), occurred, recorded,
                              row[9], row[10])  # fmt: skip
        histories[account].append(event)
    assert len(histories) == 60
    for account, events in histories.items():
        state = apply_all(StandingState.empty(account), events)
        assert state.version == len(events)
