"""The per-stream SHA-256 hash chain (CONTRACT.md, "hash recipe").

``hash = sha256_hex(prev_hash + canonical)`` where ``canonical`` is the UTF-8 JSON of the event's
``event_id, account_id, version, type, schema_version, data, metadata, occurred_at, recorded_at``
with keys sorted, separators ``,``/``:`` and non-ASCII kept. An auditor needs only ``hashlib`` and
``json`` to recompute it from the public events feed, so this module uses nothing else.

``canonical_event`` builds exactly the text ``canonical_json(hashed_fields(event))`` would, from the
fields' parts, so that a document already serialised canonically (as the store writes ``data`` and
``metadata``) is spliced in rather than serialised again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from events.timefmt import format_time
from events.types import RecordedEvent, StreamHead, VerifyResult

GENESIS_HASH = "0" * 64
# The head of a stream without events: what its first event chains onto.
EMPTY_HEAD = StreamHead(0, GENESIS_HASH)

T = TypeVar("T")

_encode_str: Callable[[str], str] = (
    getattr(json.encoder, "c_encode_basestring", None) or json.encoder.encode_basestring
)

# One encoder for every canonical text: ``json.dumps`` with options builds a new one per call.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def document_encoder(allow_nan: bool) -> Callable[[Any], str]:
    """``json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
    allow_nan=allow_nan)`` as one reusable function.

    It calls the C encoder that ``json.dumps`` builds on every call directly. That one is built
    without the circular-reference check, so a RecursionError (a cycle, or nesting too deep)
    is handed to ``json`` itself, which raises what ``json.dumps`` raises.
    """
    checked = json.JSONEncoder(
        sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=allow_nan
    )
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # pragma: no cover - CPython has the C accelerator
        return checked.encode
    iterencode = make(None, checked.default, _encode_str, None, ":", ",", True, False, allow_nan)
    join = "".join

    def encode(value: Any) -> str:
        if type(value) is str:
            return _encode_str(value)
        try:
            return join(iterencode(value, 0))
        except RecursionError:
            return checked.encode(value)

    return encode


canonical_document = document_encoder(allow_nan=True)
"""The canonical JSON text of one value (``data``, ``metadata``) as ``canonical_json`` nests it."""


def canonical_json(fields: Mapping[str, Any]) -> str:
    """The canonical JSON text that the hash covers."""
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _text(value: Any) -> str:
    return _encode_str(value) if type(value) is str else _CANONICAL.encode(value)


def _number(value: Any) -> str:
    return int.__repr__(value) if type(value) is int else _CANONICAL.encode(value)


def canonical_event(
    event_id: Any,
    account_id: Any,
    version: Any,
    type_: Any,
    schema_version: Any,
    data_json: str,
    metadata_json: str,
    occurred_at: str,
    recorded_at: str,
) -> str:
    """``canonical_json`` of the hashed fields, given ``data`` and ``metadata`` already as
    ``canonical_document`` text and the times already formatted (``format_time``)."""
    enc = _encode_str
    return (
        f'{{"account_id":{enc(account_id) if type(account_id) is str else _text(account_id)},'
        f'"data":{data_json},'
        f'"event_id":{enc(event_id) if type(event_id) is str else _text(event_id)},'
        f'"metadata":{metadata_json},"occurred_at":{_text(occurred_at)},'
        f'"recorded_at":{_text(recorded_at)},"schema_version":{_number(schema_version)},'
        f'"type":{enc(type_) if type(type_) is str else _text(type_)},'
        f'"version":{int.__repr__(version) if type(version) is int else _number(version)}}}'
    )


def sha256_link(prev_hash: str, canonical: str) -> str:
    """``sha256_hex(prev_hash + canonical)``."""
    return hashlib.sha256((prev_hash + canonical).encode("utf-8")).hexdigest()


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


def event_hash(prev_hash: str, event: RecordedEvent) -> str:
    """``chain_hash(prev_hash, hashed_fields(event))``, without building the fields mapping."""
    return sha256_link(
        prev_hash,
        canonical_event(
            event.event_id,
            event.account_id,
            event.version,
            event.type,
            event.schema_version,
            canonical_document(event.data),
            canonical_document(event.metadata),
            format_time(event.occurred_at),
            format_time(event.recorded_at),
        ),
    )


def verify_chain(events: Iterable[RecordedEvent]) -> VerifyResult:
    """Check versions are 1, 2, 3… and every ``prev_hash``/``hash`` matches the recipe.

    Returns the first broken version and why, or ``ok`` with the head hash.
    """
    return verify_links(
        events,
        lambda e: (e.version, e.prev_hash, e.hash),
        lambda prev, e: event_hash(prev, e) == e.hash,
    )


def verify_links(
    items: Iterable[T],
    link: Callable[[T], tuple[int, str, str]],
    content_matches: Callable[[str, T], bool],
) -> VerifyResult:
    """``verify_chain`` over any representation of a stream's events, in version order.

    ``link(item)`` gives its version, ``prev_hash`` and ``hash``; ``content_matches(prev, item)``
    whether its ``hash`` is the recipe's hash of its content chained onto ``prev``.
    """
    prev = GENESIS_HASH
    count = 0
    for item in items:
        count += 1
        expected_version = count
        version, prev_hash, stored_hash = link(item)
        if version != expected_version:
            return VerifyResult(
                False,
                count,
                None,
                expected_version,
                f"version {version} found where {expected_version} was expected",
            )
        if prev_hash != prev:
            return VerifyResult(
                False,
                count,
                None,
                version,
                "prev_hash does not match the previous event's hash",
            )
        if not content_matches(prev, item):
            return VerifyResult(
                False, count, None, version, "hash does not match the event's content"
            )
        prev = stored_hash
    return VerifyResult(True, count, prev if count else GENESIS_HASH)
