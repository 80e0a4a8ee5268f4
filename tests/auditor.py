"""The auditor's side of CONTRACT.md's hash chain, for the tests: written from the contract with
nothing but ``hashlib`` and ``json``, never from the code under test. The recipe itself is the
one auditors are handed, ``docs/verify_account.py`` (standard library only), so the tests check
that script as well."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from datetime import UTC
from pathlib import Path
from typing import Any

from events import RecordedEvent

_SCRIPT = Path(__file__).resolve().parent.parent / "docs" / "verify_account.py"
_spec = importlib.util.spec_from_file_location("verify_account", _SCRIPT)
assert _spec is not None and _spec.loader is not None
verify_account = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(verify_account)

# The fields an event's hash covers, as CONTRACT.md lists them.
CONTRACT_KEYS: tuple[str, ...] = verify_account.HASHED
ZERO_HASH: str = verify_account.GENESIS


def auditor_hash(shown: dict[str, Any]) -> str:
    """sha256_hex(prev_hash + canonical) of an event as the API shows it."""
    digest: str = verify_account.event_hash(shown)
    return digest


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
