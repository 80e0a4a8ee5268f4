"""The per-stream SHA-256 hash chain (CONTRACT.md, "hash recipe").

``hash = sha256_hex(prev_hash + canonical)`` where ``canonical`` is the UTF-8 JSON of the event's
``event_id, account_id, version, type, schema_version, data, metadata, occurred_at, recorded_at``
with keys sorted, separators ``,``/``:`` and non-ASCII kept. An auditor needs only ``hashlib`` and
``json`` to recompute it from the public events feed, so this module uses nothing else.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from events.timefmt import format_time
from events.types import RecordedEvent, VerifyResult

GENESIS_HASH = "0" * 64


def canonical_json(fields: Mapping[str, Any]) -> str:
    """The canonical JSON text that the hash covers."""
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def chain_hash(prev_hash: str, fields: Mapping[str, Any]) -> str:
    """Hash of one event given its predecessor's hash and its hashed fields (times as text)."""
    payload = (prev_hash + canonical_json(fields)).encode("utf-8")
    return hashlib.sha256(payload).hexdigest()


def hashed_fields(event: RecordedEvent) -> dict[str, Any]:
    """The fields of a recorded event that the chain covers, exactly as the API shows them."""
    return {
        "event_id": event.event_id,
        "account_id": event.account_id,
        "version": event.version,
        "type": event.type,
        "schema_version": event.schema_version,
        "data": event.data,
        "metadata": event.metadata,
        "occurred_at": format_time(event.occurred_at),
        "recorded_at": format_time(event.recorded_at),
    }


def verify_chain(events: Iterable[RecordedEvent]) -> VerifyResult:
    """Check versions are 1, 2, 3… and every ``prev_hash``/``hash`` matches the recipe.

    Returns the first broken version and why, or ``ok`` with the head hash.
    """
    prev = GENESIS_HASH
    count = 0
    for event in events:
        count += 1
        expected_version = count
        if event.version != expected_version:
            return VerifyResult(
                False,
                count,
                None,
                expected_version,
                f"version {event.version} found where {expected_version} was expected",
            )
        if event.prev_hash != prev:
            return VerifyResult(
                False,
                count,
                None,
                event.version,
                "prev_hash does not match the previous event's hash",
            )
        recomputed = chain_hash(prev, hashed_fields(event))
        if recomputed != event.hash:
            return VerifyResult(
                False, count, None, event.version, "hash does not match the event's content"
            )
        prev = event.hash
    return VerifyResult(True, count, prev if count else GENESIS_HASH)
