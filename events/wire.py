"""A recorded event as the public feed shows it (CONTRACT.md, "An event")."""

from __future__ import annotations

from typing import Any

from events.chain import hashed_fields
from events.types import RecordedEvent


def event_to_json(event: RecordedEvent) -> dict[str, Any]:
    """The event's public JSON; hashing the chain fields of it reproduces ``hash``."""
    return {
        "position": event.position,
        **hashed_fields(event),
        "prev_hash": event.prev_hash,
        "hash": event.hash,
    }
