"""``json.loads`` and the canonical ``json.dumps`` on ``orjson``, wherever it gives the same result.

``orjson`` is several times faster than ``json`` but not interchangeable with it:

- reading, it turns integers beyond 64 bits into floats, and refuses NaN, infinities, numbers
  that overflow a double and lone surrogates (which ``json.loads`` accepts);
- writing, it formats some floats differently (``1e-05`` comes out as ``0.00001``), and refuses
  integers beyond 64 bits, non-string keys and lone surrogates.

So ``loads`` keeps ``orjson``'s result unless the text holds a run of 19 or more digits (an
integer beyond ``-2**63 .. 2**64 - 1``, which ``orjson`` turns into a float, has at least that
many; everything else it reads exactly as ``json`` does, floats included: both round correctly),
and otherwise parses again with ``json``; ``canonical_plain`` uses ``orjson`` only for documents of
plain JSON types without floats. Both fall back to ``json`` when ``orjson`` refuses, so errors are
``json``'s own. The Hypothesis tests in ``tests/unit/test_chain.py`` check both against ``json``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import orjson

_orjson_loads = orjson.loads
_orjson_dumps = orjson.dumps
_OrjsonDecodeError = orjson.JSONDecodeError
_OrjsonEncodeError = orjson.JSONEncodeError
_SORT_KEYS = orjson.OPT_SORT_KEYS
_json_loads = json.loads
# Digits to "1", every other byte to "0": a run of 19 digits becomes ``_LONG_RUN``. (A bytes
# translation is several times faster than a regular expression over the text.)
_DIGIT_MAP = bytes(49 if 48 <= i <= 57 else 48 for i in range(256))
_LONG_RUN = b"1" * 19


def has_float(value: Any) -> bool:
    """Whether a parsed JSON value (dicts, lists, scalars) holds a float anywhere."""
    kind = type(value)
    if kind is not dict and kind is not list:
        return kind is float
    for item in value.values() if kind is dict else value:
        item_kind = type(item)
        if item_kind is float:
            return True
        if (item_kind is dict or item_kind is list) and has_float(item):
            return True
    return False


def copy_json(value: Any) -> Any:
    """A copy of a parsed JSON value whose dicts and lists are new (``copy.deepcopy`` for JSON,
    several times faster); other values are shared, as JSON's scalars are immutable."""
    kind = type(value)
    if kind is dict:
        return {key: copy_json(item) for key, item in value.items()}
    if kind is list:
        return [copy_json(item) for item in value]
    return value


def loads(text: str | bytes) -> Any:
    """Exactly ``json.loads(text)``."""
    try:
        value = _orjson_loads(text)
    except (_OrjsonDecodeError, RecursionError):
        return _json_loads(text)
    raw = text.encode() if isinstance(text, str) else text  # valid UTF-8: orjson read it
    if _LONG_RUN in raw.translate(_DIGIT_MAP):
        return _json_loads(text)
    return value


def canonical_plain(value: Any, fallback: Callable[[Any], str]) -> str:
    """``fallback(value)`` (a canonical encoder: sorted keys, ``,``/``:``, non-ASCII kept),
    through ``orjson`` when the caller knows ``value`` is made only of dicts with string keys,
    lists, strings, integers, booleans and None (no floats, exact types)."""
    try:
        return _orjson_dumps(value, option=_SORT_KEYS).decode()
    except _OrjsonEncodeError:
        return fallback(value)


def canonical_from_text(text: str | bytes, canonical: Callable[[Any], str]) -> str:
    """``canonical(json.loads(text))``, for a canonical encoder as in ``canonical_plain``."""
    try:
        value = _orjson_loads(text)
    except (_OrjsonDecodeError, RecursionError):
        return canonical(_json_loads(text))
    if has_float(value):
        return canonical(_json_loads(text))
    return canonical_plain(value, canonical)
