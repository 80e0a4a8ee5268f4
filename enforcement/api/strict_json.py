"""Request bodies are read as strict JSON (RFC 8259, and I-JSON's unique names, RFC 7493).

Python's ``json.loads``, which FastAPI uses, also takes what is not JSON: ``NaN``, ``Infinity``
and ``-Infinity`` (and ``1e999`` as infinity), and an object naming one member twice (the last
one wins). A service in front
of this one that reads the first ``category`` of ``{"category": "spam", "category": "csam"}``
would see another violation than the one recorded here, so such a body is malformed JSON (400),
as are a body that is not UTF-8 (UTF-16 and UTF-32 were taken before) and one nested too
deeply to parse. ``loads`` raises ``json.JSONDecodeError`` for each, which FastAPI answers as
any malformed body; ``StrictJsonRoute`` makes every route read its body with it, and the hot
route's shortcut reads it with ``loads`` too.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute


class _NotJson(ValueError):
    """What Python's parser takes and strict JSON does not; its text is the reason given."""


def _unique_names(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) != len(pairs):
        raise _NotJson("an object names the same member twice")
    return document


def _no_constant(name: str) -> Any:
    raise _NotJson(f"{name} is not a JSON value")


def _finite(text: str) -> float:
    number = float(text)
    if math.isinf(number):  # 1e999: Python reads infinity, which JSON has no value for
        raise _NotJson(f"the number {text[:20]} is out of range")
    return number


_DECODER = json.JSONDecoder(
    object_pairs_hook=_unique_names, parse_constant=_no_constant, parse_float=_finite
)


def _error(reason: str, text: str, position: int | None) -> json.JSONDecodeError:
    """A decode error whose ``pos`` is None where the parser cannot say where it was."""
    error = json.JSONDecodeError(reason, text, position or 0)
    error.pos = position  # type: ignore[assignment]
    return error


_BOM = b"\xef\xbb\xbf"


def loads(body: bytes) -> Any:
    """The JSON value of ``body``; ``json.JSONDecodeError`` when it is not strict JSON, and for
    nothing else the parser refuses (every such body is malformed, whoever sent it)."""
    if body.startswith(_BOM):  # a byte order mark may be ignored (RFC 8259 §8.1)
        body = body[len(_BOM) :]
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        valid = body[: exc.start].decode("utf-8")  # whole characters up to the bad byte
        raise _error("the body is not UTF-8", valid, len(valid)) from exc
    try:
        return _DECODER.decode(text)
    except json.JSONDecodeError:
        raise
    except RecursionError as exc:
        raise _error("the body is nested too deeply", text, None) from exc
    except _NotJson as exc:
        raise _error(str(exc), text, None) from exc
    except ValueError as exc:  # an integer of more digits than Python converts (4,300)
        raise _error("a number has more digits than the parser takes", text, None) from exc


class _StrictJsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = loads(await self.body())
        return self._json


class StrictJsonRoute(APIRoute):
    """A route that reads its JSON body with ``loads``."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            return await handler(_StrictJsonRequest(request.scope, request.receive))

        return strict
