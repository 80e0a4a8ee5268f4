"""JSON answers encoded by the route itself, off the event loop.

A route that returns a plain ``dict`` has FastAPI validate and encode it on the event loop
(``serialize_response``); the routes on the hot path encode their answer where they computed it,
in the thread pool, with orjson (plain JSON values only: strings, numbers, booleans, null,
lists and string-keyed dicts), and return the ``Response``.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Iterator
from typing import Any

import orjson
from starlette.responses import Response, StreamingResponse


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


# An answer up to this size is sent whole, with its Content-Length; a larger one is streamed,
# in chunks of about CHUNK_BYTES (each is encoded in the thread pool, one trip per chunk).
STREAM_AFTER_BYTES = 1 << 20
CHUNK_BYTES = 256 * 1024


def json_array_response(name: str, items: Iterable[Any]) -> Response:
    """``{"<name>": [<item>, …]}``, each item encoded only when it is sent: an answer of more
    than ``STREAM_AFTER_BYTES`` is streamed (chunked) as its items are encoded, so it is never
    held whole in memory, nor are the documents of its items; a smaller one is sent whole. An
    error while a streamed answer is encoded cuts it off after its 200: the client sees an
    incomplete chunked body, and the access log says ``aborted``."""
    pieces = _array_pieces(name, items)
    head: list[bytes] = []
    size = 0
    for piece in pieces:
        head.append(piece)
        size += len(piece)
        if size > STREAM_AFTER_BYTES:
            chunks = _chunks(itertools.chain(head, pieces), CHUNK_BYTES)
            return StreamingResponse(chunks, media_type="application/json")
    return Response(b"".join(head), media_type="application/json")


def _chunks(pieces: Iterator[bytes], size: int) -> Iterator[bytes]:
    """``pieces`` joined into chunks of at least ``size`` bytes (the last may be smaller)."""
    chunk: list[bytes] = []
    length = 0
    for piece in pieces:
        chunk.append(piece)
        length += len(piece)
        if length >= size:
            yield b"".join(chunk)
            chunk, length = [], 0
    if chunk:
        yield b"".join(chunk)


def _array_pieces(name: str, items: Iterable[Any]) -> Iterator[bytes]:
    yield encode_json(name).join((b"{", b":["))
    for index, item in enumerate(items):
        yield (b"," if index else b"") + encode_json(item)
    yield b"]}"
