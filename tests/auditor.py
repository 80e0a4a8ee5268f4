"""The auditor's side of CONTRACT.md's hash chain, for the tests: written from the contract with
nothing but ``hashlib`` and ``json``, never from the code under test."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from datetime import UTC
from typing import Any

from events import RecordedEvent

# The fields an event's hash covers, as CONTRACT.md lists them.
CONTRACT_KEYS = (
    "event_id",
    "account_id",
    "version",
    "type",
    "schema_version",
    "data",
    "metadata",
    "occurred_at",
    "recorded_at",
)
ZERO_HASH = "0" * 64


def auditor_hash(shown: dict[str, Any]) -> str:
    """sha256_hex(prev_hash + canonical) of an event as the API shows it."""
    canonical = json.dumps(
        {key: shown[key] for key in CONTRACT_KEYS},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256((shown["prev_hash"] + canonical).encode("utf-8")).hexdigest()


def api_json(event: RecordedEvent) -> dict[str, Any]:
    """The event as ``GET /v1/accounts/{id}/events`` shows it, after a trip over the wire."""
    shown = dataclasses.asdict(event)
    for name in ("occurred_at", "recorded_at"):
        shown[name] = shown[name].astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return json.loads(json.dumps(shown))


def check_chains(events: list[dict[str, Any]]) -> dict[str, tuple[int, str]]:
    """Check shown events (any accounts, each account's in version order): versions contiguous
    from 1, each ``prev_hash`` the previous hash, each hash recomputed. Returns each account's
    last version and hash."""
    heads: dict[str, tuple[int, str]] = {}
    for event in events:
        version, prev = heads.get(event["account_id"], (0, ZERO_HASH))
        assert event["version"] == version + 1
        assert event["prev_hash"] == prev
        digest = auditor_hash(event)
        where = f"{event['account_id']} version {event['version']}"
        assert digest == event["hash"], f"{where} does not hash to its hash"
        heads[event["account_id"]] = (event["version"], digest)
    return heads
