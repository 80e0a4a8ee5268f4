"""Response shapes shared by the routes (CONTRACT.md)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from enforcement.api.errors import ApiError
from enforcement.service import Outcome
from events.timefmt import LEAP_SECOND_MESSAGE, is_leap_second, parse_time
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
        if is_leap_second(value):
            message, detail = f"The {name} parameter {LEAP_SECOND_MESSAGE}.", LEAP_SECOND_MESSAGE
        else:
            message = f"The {name} parameter is not an RFC 3339 time with a UTC offset."
            detail = "expected e.g. 2026-11-24T10:00:00Z"
        raise ApiError(
            422, "validation_failed", message, [{"field": name, "message": detail}]
        ) from None
