"""Every error, in one place, as ``{"error": {"code", "message", "details"}}``."""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import DBAPIError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from enforcement.api.middleware import REQUEST_ID_KEY
from enforcement.errors import Conflict, DomainError, NotFound, ValidationFailed
from enforcement.logs import request_id_var
from events import AppendOutcomeUnknown, ConcurrencyError, IdempotencyConflict, StoreError
from events.dialects import storage_full

log = logging.getLogger("enforcement.http")


class ErrorDetail(BaseModel):
    code: str = Field(description="A stable snake_case code, e.g. `validation_failed`.")
    message: str = Field(description="One human sentence.")
    details: Any = Field(
        None, description="Null, or what helps: for 422 a list of `{field, message[, allowed]}`."
    )


class ErrorBody(BaseModel):
    """The body of every error response (CONTRACT.md, "Errors")."""

    error: ErrorDetail


_ERROR_DESCRIPTIONS = {
    400: "Malformed JSON.",
    401: "No bearer token, or an unknown one.",
    403: "The token's role may not do this.",
    404: "No such route, or no such id on this account.",
    409: "The account's state does not allow this, or an Idempotency-Key was reused with "
    "another request.",
    413: "The body is over 64 KiB (4 MiB for the batch endpoint).",
    415: "The body was not sent as JSON: send it with `Content-Type: application/json`.",
    422: "Invalid fields: `details` lists each, and for an unknown category the allowed ones.",
    503: "A dependency (the database) is down; nothing was written.",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` declaring ``ErrorBody`` for ``statuses`` (FastAPI's own 422 schema
    is replaced: ours is the same ``ErrorBody`` as every other error)."""
    return {
        status: {"model": ErrorBody, "description": _ERROR_DESCRIPTIONS[status]}
        for status in statuses
    }


# What each kind of route can answer besides its success (the middleware's 413 applies to any
# request with a body; 503 to any route that reads or writes the database).
READ_ERRORS = error_responses(401, 403, 422, 503)
WRITE_ERRORS = error_responses(400, 401, 403, 404, 409, 413, 415, 422, 503)


class ApiError(Exception):
    """An error raised by a route: status, code, message, details."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details
        self.headers = headers


def _outcome(request: Request) -> str:
    """What a request the database failed came to: a read changes nothing, so it is only to be
    tried again; a write was not recorded."""
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return "try again shortly."
    return "nothing was written."


def error_response(
    status: int, code: str, message: str, details: Any = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message, "details": details}},
        status_code=status,
        headers=headers,
    )


def domain_status(exc: DomainError) -> int:
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, Conflict):
        return 409
    if isinstance(exc, ValidationFailed):
        return 422
    return 400


_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_failed",
    429: "too_many_requests",
}


def body_not_read_as_json(errors: Iterable[Mapping[str, Any]]) -> bool:
    """Whether the body was not read as JSON because of its Content-Type.

    FastAPI reads a body as JSON only when its Content-Type is ``application/json`` or
    ``application/*+json``; any other body, and one sent without a Content-Type, reaches the
    body's model as its raw bytes, which the model refuses as "not a valid dictionary".
    """
    return any(
        tuple(err.get("loc", ())) == ("body",) and isinstance(err.get("input"), bytes)
        for err in errors
    )


def json_error(errors: Iterable[Mapping[str, Any]]) -> dict[str, Any] | None:
    """What the JSON parser said and where (``reason``; ``position``, the character it stopped
    at, or None when the whole body had to be read to tell)."""
    for err in errors:
        if err.get("type") == "json_invalid":
            loc = tuple(err.get("loc", ()))
            reason = (err.get("ctx") or {}).get("error")
            return {"reason": reason, "position": loc[1] if len(loc) > 1 else None}
    return None


def body_missing(errors: Iterable[Mapping[str, Any]]) -> bool:
    """Whether the only error is that the route's body is missing (the request had none)."""
    listed = list(errors)
    return bool(listed) and all(
        err.get("type") == "missing" and tuple(err.get("loc", ())) == ("body",) for err in listed
    )


def is_json_media_type(content_type: str) -> bool:
    """Whether FastAPI reads a body of this Content-Type as JSON (``application/json``,
    ``application/*+json``)."""
    media = content_type.partition(";")[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


_QUOTED = re.compile(r"'([^']*)'")
# How pydantic reports a ValueError that one of our validators raised: our sentence after it.
_VALUE_ERROR = "Value error, "


def validation_details(
    errors: Iterable[Mapping[str, Any]], whole: str = "body"
) -> list[dict[str, Any]]:
    """Each error's field (``whole`` for the value itself) and message, and what is allowed."""
    details = []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body",)]
        message = str(err.get("msg", ""))
        if err.get("type") == "value_error":
            message = message.removeprefix(_VALUE_ERROR)
        item: dict[str, Any] = {"field": ".".join(loc) or whole, "message": message}
        ctx = err.get("ctx") or {}
        if "allowed" in ctx:
            item["allowed"] = ctx["allowed"]
        elif "expected" in ctx:
            expected = ctx["expected"]
            if err.get("type") in ("literal_error", "enum") and isinstance(expected, str):
                # pydantic's prose ("'low', 'medium' or 'high'"): the values, as a list, like
                # the allowed categories.
                expected = _QUOTED.findall(expected) or expected
            item["allowed"] = expected
        details.append(item)
    return details


def install_error_handlers(
    app: FastAPI, refusal: Callable[[Request], Awaitable[ApiError | None]] | None = None
) -> None:
    """The contract's error body for every error; ``refusal`` answers a malformed body's caller
    first (401, 403) when the route would refuse them (``deps.refusal``)."""

    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)

    @app.exception_handler(DomainError)
    async def _domain(_: Request, exc: DomainError) -> JSONResponse:
        return error_response(domain_status(exc), exc.code, exc.message, exc.details)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        if any(e.get("type") == "json_invalid" for e in errors):
            refused = await refusal(request) if refusal is not None else None
            if refused is not None:
                return await _api(request, refused)
            return error_response(
                400, "malformed_json", "The request body is not valid JSON.", json_error(errors)
            )
        # No ``refusal`` needed below: FastAPI solves a route's dependencies (the caller's token
        # and role) before it validates the body, so a refused caller never gets here.
        # An empty body sent as JSON is not JSON: 400, as any malformed body. Sent as another
        # type, or without one, it is a missing body (422, below).
        content_type = request.headers.get("content-type")
        if content_type is not None and is_json_media_type(content_type) and body_missing(errors):
            return error_response(
                400, "malformed_json", "The request body is empty; it must be a JSON object."
            )
        if body_not_read_as_json(errors):
            return error_response(
                415,
                "unsupported_media_type",
                "The request body must be JSON sent with Content-Type: application/json.",
                {"content_type": request.headers.get("content-type")},
            )
        return error_response(
            422, "validation_failed", "The request has invalid fields.", validation_details(errors)
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(exc.status_code, "http_error")
        message = {
            404: "No such route or resource.",
            405: "This method is not allowed on this route.",
        }.get(exc.status_code, str(exc.detail))
        return error_response(exc.status_code, code, message, None, getattr(exc, "headers", None))

    @app.exception_handler(IdempotencyConflict)
    async def _idem(_: Request, exc: IdempotencyConflict) -> JSONResponse:
        return error_response(
            409,
            "idempotency_key_reused",
            "This Idempotency-Key was already used with a different request (another body, "
            "command or account).",
        )

    @app.exception_handler(ConcurrencyError)
    async def _concurrency(_: Request, exc: ConcurrencyError) -> JSONResponse:
        return error_response(
            409,
            "concurrent_update",
            "The account changed concurrently too many times; retry the request.",
        )

    @app.exception_handler(OperationalError)
    async def _db_down(request: Request, exc: OperationalError) -> JSONResponse:
        log.error("database unavailable: %s", exc.orig)
        what = "The database's disk is full" if storage_full(exc) else "The database is unavailable"
        return error_response(503, "dependency_unavailable", f"{what}; {_outcome(request)}")

    @app.exception_handler(DBAPIError)
    async def _db_error(request: Request, exc: DBAPIError) -> JSONResponse:
        log.exception("database error")
        return error_response(
            503,
            "dependency_unavailable",
            f"The database refused the request; {_outcome(request)}",
        )

    @app.exception_handler(AppendOutcomeUnknown)
    async def _outcome_unknown(_: Request, exc: AppendOutcomeUnknown) -> JSONResponse:
        log.error("append outcome unknown: %s", exc)
        return error_response(
            503,
            "dependency_unavailable",
            "The database connection was lost while the request was being recorded and "
            "whether it was cannot be known yet: it may have been recorded. Retry with the "
            "same Idempotency-Key, or read the account's events.",
        )

    @app.exception_handler(StoreError)
    async def _store(_: Request, exc: StoreError) -> JSONResponse:
        log.exception("store error")
        return error_response(500, "internal_error", "The event store failed; nothing was written.")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # ``ServerErrorMiddleware`` calls this outside the request-id middleware, whose context
        # has ended: the id comes from the scope, for the log line and the answer.
        request_id = request.scope.get(REQUEST_ID_KEY)
        token = request_id_var.set(request_id)
        try:
            log.exception("unhandled error")
        finally:
            request_id_var.reset(token)
        headers = {"X-Request-Id": request_id} if request_id else None
        return error_response(500, "internal_error", "An unexpected error occurred.", None, headers)
