"""Plain data that crosses the store's boundary."""

from __future__ import annotations

import os
import re
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from events.timefmt import format_time

JSON = dict[str, Any]


def new_event_id() -> str:
    """A time-ordered (version 7, RFC 9562) UUID as text: 48 bits of Unix milliseconds, then
    74 random bits. Ids made later sort later (within a millisecond, in no particular order),
    so the unique index on ``event_id`` grows at its right edge instead of dirtying a random
    page per insert: a commit of 100 events writes a few index pages, not dozens."""
    raw = bytearray(os.urandom(16))
    raw[0:6] = time.time_ns().__floordiv__(1_000_000).to_bytes(6, "big")
    raw[6] = (raw[6] & 0x0F) | 0x70
    raw[8] = (raw[8] & 0x3F) | 0x80
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to append: what happened (``type``, ``data``), when, and why (``metadata``)."""

    type: str
    data: JSON
    occurred_at: datetime
    metadata: JSON = field(default_factory=dict)
    schema_version: int = 1
    event_id: str = field(default_factory=new_event_id)


# The chain hashes the id as appended and PostgreSQL's uuid column gives it back in its
# canonical form (lowercase, hyphenated): only that form may enter the log (``EventStore``).
is_canonical_event_id = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
).fullmatch


def canonical_event_id(text: str) -> str:
    """``text`` as a canonical UUID (lowercase, hyphenated); ``ValueError`` if it is none."""
    try:
        return str(uuid.UUID(text))
    except (ValueError, AttributeError, TypeError):
        raise ValueError(f"event_id {text!r} is not a UUID") from None


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    """An event as the log holds it: immutable, positioned, chained to its predecessor."""

    position: int
    event_id: str
    account_id: str
    version: int
    type: str
    schema_version: int
    data: JSON
    metadata: JSON
    occurred_at: datetime
    recorded_at: datetime
    prev_hash: str
    hash: str

    @property
    def occurred_stamp(self) -> str:
        """``occurred_at`` as canonical text (``format_time``)."""
        return format_time(self.occurred_at)

    @property
    def recorded_stamp(self) -> str:
        """``recorded_at`` as canonical text (``format_time``)."""
        return format_time(self.recorded_at)


@dataclass(frozen=True, slots=True)
class StreamHead:
    """The last version and hash of a stream (version 0 and the zero hash when empty)."""

    version: int
    hash: str


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """Outcome of checking one stream's hash chain."""

    ok: bool
    events: int
    head_hash: str | None = None
    broken_at_version: int | None = None
    reason: str | None = None
