"""The append-only event log: append, read, hash chain, codec. Knows nothing of the AUP."""

from events.chain import GENESIS_HASH, canonical_json, chain_hash, hashed_fields, verify_chain
from events.codec import Codec, DecodedEvent
from events.dialects import create_engine
from events.errors import (
    AppendOnlyViolation,
    AppendOutcomeUnknown,
    ConcurrencyError,
    IdempotencyConflict,
    StoreError,
    StreamKeyUsed,
    UnknownEventType,
)
from events.store import EventStore
from events.types import NewEvent, RecordedEvent, StreamHead, VerifyResult
from events.writing import StreamAppend

__all__ = [
    "GENESIS_HASH",
    "AppendOnlyViolation",
    "AppendOutcomeUnknown",
    "Codec",
    "ConcurrencyError",
    "DecodedEvent",
    "EventStore",
    "IdempotencyConflict",
    "NewEvent",
    "RecordedEvent",
    "StoreError",
    "StreamAppend",
    "StreamHead",
    "StreamKeyUsed",
    "UnknownEventType",
    "VerifyResult",
    "canonical_json",
    "chain_hash",
    "create_engine",
    "hashed_fields",
    "verify_chain",
]
