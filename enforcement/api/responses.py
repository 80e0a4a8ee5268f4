"""JSON answers encoded by the route itself, off the event loop.

A route that returns a plain ``dict`` has FastAPI validate and encode it on the event loop
(``serialize_response``); the routes on the hot path encode their answer where they computed it,
in the thread pool, with orjson (plain JSON values only: strings, numbers, booleans, null,
lists and string-keyed dicts), and return the ``Response``.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from starlette.responses import Response


def encode_json(document: Any) -> bytes:
    """``document`` as compact UTF-8 JSON; the standard library for what orjson refuses
    (an integer beyond 64 bits)."""
    try:
        return orjson.dumps(document)
    except TypeError:
        return json.dumps(
            document, ensure_ascii=False, allow_nan=False, separators=(",", ":")
        ).encode("utf-8")


def json_response(document: Any, status_code: int = 200) -> Response:
    """An ``application/json`` response of ``document``."""
    return Response(encode_json(document), status_code=status_code, media_type="application/json")
