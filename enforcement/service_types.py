"""What the use cases (``enforcement.service``) are asked and answer: who asks (``Actor``), a
fact to record (``Fact``), a request's idempotency fingerprint (``Fingerprint``,
``request_fingerprint``), what a command recorded (``Outcome``), and the hook told of each commit
(``AfterCommit``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from events import RecordedEvent
from projections.standing import Standing, StandingState


@dataclass(frozen=True, slots=True)
class Actor:
    """Who asks (token name and role, or ``policy``/``scheduler``) and the request it belongs to."""

    name: str
    correlation_id: str
    source: str = "api"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a command recorded (or, on an idempotent replay, had recorded) and the standing."""

    events: list[RecordedEvent]
    standing: Standing
    replayed: bool = False


# Told of every decision the service committed: the account's state after it, the events, and
# the instant the standing is viewed at. Runs in the caller's thread; it must not raise (what it
# does is a shortcut for what the log's relay does anyway).
AfterCommit = Callable[[StandingState, Sequence[RecordedEvent], datetime], None]


@dataclass(frozen=True, slots=True)
class Fact:
    """A fact to record that decides nothing (a delivery receipt), once per its key."""

    account_id: str
    payload: object
    causation_id: str | None
    idempotency_key: str


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """A request's idempotency fingerprint (``value``), and whether a fingerprint that an
    earlier release recorded for its key is one of the same request (``earlier``: asked only
    when the recorded one is not ``value``), for a request whose fingerprint has changed."""

    value: str
    earlier: Callable[[str], bool]


def fingerprint_value(fingerprint: str | Fingerprint | None) -> str | None:
    """The fingerprint to record: ``fingerprint`` itself, or its ``value``."""
    return fingerprint.value if isinstance(fingerprint, Fingerprint) else fingerprint


def request_fingerprint(body: Any) -> str:
    """Fingerprint of a request body, for idempotency: the same body gives the same hash."""
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
