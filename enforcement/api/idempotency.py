"""The optional ``Idempotency-Key`` header of the write routes, and what identifies the request
it comes with (its fingerprint): the same key with the same request replays the first answer's
events, with another request it is a 409 (``events.store``, ``service._execute``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Header, Request
from fastapi.routing import APIRoute
from pydantic import BaseModel, BeforeValidator

from enforcement.api.schemas import RESERVED_KEY_SHAPES, NotReserved
from enforcement.service import request_fingerprint

IDEMPOTENCY_KEY_MAX = 200  # characters
RESERVED_NOTE = f"A key of the shape of the service's own ({RESERVED_KEY_SHAPES}) is refused (422)."


def key_header(description: str) -> Any:
    """The ``Idempotency-Key`` header, as ``POST /v1/violations`` takes it: UTF-8 text (with
    ``HeaderText``) of at most 200 characters, no NUL (and, with ``NotReserved``, none of the
    service's own shapes)."""
    return Header(
        alias="Idempotency-Key",
        max_length=IDEMPOTENCY_KEY_MAX,
        pattern=r"^[^\x00]+$",
        description=description + " UTF-8 text: octets that are not UTF-8 are refused (422).",
    )


def header_text(value: Any) -> Any:
    """A header's value as the UTF-8 text its octets spell. Starlette gives a header one
    character per octet (Latin-1): without this, ``clé`` sent as UTF-8 would be the key
    ``clÃ©``, not the batch item's ``clé``, and its length would count octets."""
    if not isinstance(value, str) or value.isascii():  # ASCII reads the same either way
        return value
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        raise ValueError("is not UTF-8 text") from None


# Before the length and the pattern are checked: they are the text's, not its octets'.
HeaderText = BeforeValidator(header_text)
IdempotencyKey = Annotated[str | None, key_header(RESERVED_NOTE), HeaderText, NotReserved]


@dataclass(frozen=True, slots=True)
class RequestKey:
    """A write request's ``Idempotency-Key`` (None: none was sent) and what identifies the
    request besides its body: its method and route, and its path parameters (the account and
    the ids the command names)."""

    key: str | None
    route: str
    path: dict[str, str]

    def fingerprint(self, body: BaseModel | None = None) -> str | None:
        """The request's fingerprint (None without a key): the hash of its route, its path
        parameters and its validated ``body``, the fields at their default left out. The same
        request gives the same hash however its body was written (key order, whitespace, a
        field written out at its default, a time in another offset); one key sent to suspend
        then to terminate, or to another account, gives two."""
        if self.key is None:
            return None
        fields = None if body is None else body.model_dump(mode="json", exclude_defaults=True)
        return request_fingerprint({"route": self.route, "path": self.path, "body": fields})


async def request_key(
    request: Request,
    idempotency_key: Annotated[
        str | None,
        key_header(
            "Sent again with the same key and the same request, nothing new is recorded and "
            "the answer is the first one's (its events, or its report_id) with status 200; "
            "with another request (another body, command or account), 409. " + RESERVED_NOTE
        ),
        HeaderText,
        NotReserved,
    ] = None,
) -> RequestKey:
    """The request's ``Idempotency-Key`` and what identifies it (a route's dependency)."""
    route: APIRoute = request.scope["route"]
    method_and_route = f"{request.method} {route.path_format}"
    return RequestKey(idempotency_key, method_and_route, dict(request.path_params))


# A route's optional Idempotency-Key (declared in the OpenAPI document as a header).
Idempotent = Annotated[RequestKey, Depends(request_key)]
