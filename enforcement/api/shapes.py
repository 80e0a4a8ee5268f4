"""Response shapes shared by the routes (CONTRACT.md)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from enforcement.api.errors import ApiError
from enforcement.service import Outcome
from events.timefmt import parse_time
from events.wire import event_to_json

FUTURE_TOLERANCE = timedelta(minutes=5)


def outcome_json(outcome: Outcome) -> dict[str, Any]:
    return {
        "events": [event_to_json(e) for e in outcome.events],
        "standing": outcome.standing.to_json(),
    }


def parse_query_time(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_time(value)
    except ValueError:
        raise ApiError(
            422,
            "validation_failed",
            f"The {name} parameter is not an RFC 3339 time with a UTC offset.",
            [{"field": name, "message": "expected e.g. 2026-11-24T10:00:00Z"}],
        ) from None
