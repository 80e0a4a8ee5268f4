"""Every error answers with the contract's body (CONTRACT.md, "Errors": ``{"error": {"code",
"message", "details"}}``) and its status, whatever raised it: domain errors answer with one human
sentence (CONTRACT.md: "<human sentence>"), whatever fragment they were raised with; ``str()``
keeps the text as raised."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import psycopg
import pytest
from fastapi import FastAPI, HTTPException, Request
from fastapi.testclient import TestClient
from pydantic import BaseModel, field_validator
from sqlalchemy.exc import DBAPIError, OperationalError

from enforcement.api.errors import (
    READ_ERRORS,
    WRITE_ERRORS,
    ApiError,
    body_missing,
    domain_status,
    error_responses,
    install_error_handlers,
    is_json_media_type,
    json_error,
    validation_details,
)
from enforcement.api.middleware import REQUEST_ID_KEY
from enforcement.errors import (
    Conflict,
    DomainError,
    InvalidTransition,
    NotFound,
    ValidationFailed,
    as_sentence,
)
from enforcement.logs import request_id_var
from events import AppendOutcomeUnknown, ConcurrencyError, IdempotencyConflict, StoreError


@pytest.mark.parametrize(
    ("raised", "answered"),
    [
        ("the account is not suspended", "The account is not suspended."),
        ("no throttle 'thr_1' on this account", "No throttle 'thr_1' on this account."),
        ("Already a sentence.", "Already a sentence."),
        ("'x' is unknown", "'x' is unknown."),
        ("  padded  ", "Padded."),
        ("", ""),
    ],
)
def test_a_message_is_answered_as_a_sentence(raised: str, answered: str) -> None:
    assert as_sentence(raised) == answered


def test_the_error_keeps_its_raised_text_and_answers_a_sentence() -> None:
    error = InvalidTransition("the account is not suspended", code="not_suspended")
    assert (str(error), error.message) == (
        "the account is not suspended",
        "The account is not suspended.",
    )
    assert NotFound("no remediation 'rem_9' on this account").message.endswith("account.")


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (NotFound("no such violation"), 404),
        (InvalidTransition("the account is not suspended"), 409),
        (ValidationFailed("the time is out of range"), 422),
        (DomainError("anything else"), 400),
    ],
    ids=["not-found", "conflict", "validation", "other"],
)
def test_each_kind_of_domain_error_has_its_status(error: DomainError, status: int) -> None:
    assert domain_status(error) == status


class Item(BaseModel):
    severity: Literal["low", "high"]
    name: str

    @field_validator("name")
    @classmethod
    def no_dots(cls, value: str) -> str:
        if value == "..":
            raise ValueError('must not be ".."')
        return value


RAISED: dict[str, Callable[[], Exception]] = {
    "api": lambda: ApiError(
        429, "too_many_requests", "Slow down.", {"retry_after": 3}, {"Retry-After": "3"}
    ),
    "not_found": lambda: NotFound("no such violation", details={"id": "vio_1"}),
    "conflict": lambda: Conflict("the account is not suspended"),
    "validation": lambda: ValidationFailed("unknown category"),
    "domain": lambda: DomainError("anything else"),
    "idempotency": lambda: IdempotencyConflict("key-1"),
    "concurrency": lambda: ConcurrencyError("acct_1", 0, 9),
    "down": lambda: OperationalError("SELECT 1", {}, Exception("down")),
    "full": lambda: OperationalError(
        "INSERT", {}, psycopg.errors.DiskFull("could not extend file: No space left on device")
    ),
    "refused": lambda: DBAPIError("INSERT", {}, Exception("refused")),
    "unknown": lambda: AppendOutcomeUnknown("lost"),
    "store": lambda: StoreError("disk on fire"),
    "bug": lambda: RuntimeError("a bug"),
    "http": lambda: HTTPException(406, "Only JSON is served."),
    "teapot": lambda: HTTPException(418, "I am a teapot."),
}


def handlers_app(refusal: ApiError | None = None) -> FastAPI:
    app = FastAPI()

    async def refuse(_: Request) -> ApiError | None:
        return refusal

    install_error_handlers(app, refuse)

    @app.api_route("/raise/{what}", methods=["GET", "HEAD", "OPTIONS", "POST"])
    async def raise_(what: str) -> None:
        raise RAISED[what]()

    @app.get("/http/{status}")
    async def http(status: int) -> None:
        raise HTTPException(status, "As raised.")

    @app.post("/items")
    async def items(item: Item) -> None:
        return None

    @app.middleware("http")
    async def request_id(request: Request, call_next: Any) -> Any:
        if "x-request-id" in request.headers:
            request.scope[REQUEST_ID_KEY] = request.headers["x-request-id"]
        return await call_next(request)

    return app


@pytest.fixture
def client() -> TestClient:
    return TestClient(handlers_app(), raise_server_exceptions=False)


def error_of(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"] and list(body["error"]) == ["code", "message", "details"]
    return dict(body["error"])


@pytest.mark.parametrize(
    ("what", "status", "code", "message", "details"),
    [
        ("api", 429, "too_many_requests", "Slow down.", {"retry_after": 3}),
        ("not_found", 404, "not_found", "No such violation.", {"id": "vio_1"}),
        ("conflict", 409, "conflict", "The account is not suspended.", None),
        ("validation", 422, "validation_failed", "Unknown category.", None),
        ("domain", 400, "domain_error", "Anything else.", None),
        (
            "idempotency",
            409,
            "idempotency_key_reused",
            "This Idempotency-Key was already used with a different request (another body, "
            "command or account).",
            None,
        ),
        (
            "concurrency",
            409,
            "concurrent_update",
            "The account changed concurrently too many times; retry the request.",
            None,
        ),
        (
            "down",
            503,
            "dependency_unavailable",
            "The database is unavailable; nothing was written.",
            None,
        ),
        (
            "full",
            503,
            "dependency_unavailable",
            "The database's disk is full; nothing was written.",
            None,
        ),
        (
            "refused",
            503,
            "dependency_unavailable",
            "The database refused the request; nothing was written.",
            None,
        ),
        (
            "unknown",
            503,
            "dependency_unavailable",
            "The database connection was lost while the request was being recorded and whether it "
            "was cannot be known yet: it may have been recorded. Retry with the same "
            "Idempotency-Key, or read the account's events.",
            None,
        ),
        ("store", 500, "internal_error", "The event store failed; nothing was written.", None),
        ("bug", 500, "internal_error", "An unexpected error occurred.", None),
        ("http", 406, "not_acceptable", "Only JSON is served.", None),
        ("teapot", 418, "http_error", "I am a teapot.", None),
    ],
)
def test_every_error_is_answered_with_its_status_and_the_contracts_body(
    client: TestClient, what: str, status: int, code: str, message: str, details: Any
) -> None:
    response = client.post(f"/raise/{what}")
    assert error_of(response, status) == {"code": code, "message": message, "details": details}


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (400, "bad_request"),
        (401, "unauthorized"),
        (403, "forbidden"),
        (404, "not_found"),
        (405, "method_not_allowed"),
        (406, "not_acceptable"),
        (409, "conflict"),
        (413, "payload_too_large"),
        (415, "unsupported_media_type"),
        (422, "validation_failed"),
        (429, "too_many_requests"),
        (418, "http_error"),
    ],
)
def test_an_http_exception_gets_its_statuss_code(
    client: TestClient, status: int, code: str
) -> None:
    assert error_of(client.get(f"/http/{status}"), status)["code"] == code


def test_an_api_error_keeps_its_message_and_headers(client: TestClient) -> None:
    assert str(RAISED["api"]()) == "Slow down."  # as logged
    assert client.get("/raise/api").headers["retry-after"] == "3"


# What the OpenAPI document says each error status means (CONTRACT.md, "Errors"): a word of each.
MEANS = {
    400: "Malformed JSON",
    401: "token",
    403: "role",
    404: "No such route",
    409: "Idempotency-Key",
    413: "64 KiB",
    415: "application/json",
    422: "details",
    503: "nothing was written",
}


def test_the_openapi_document_declares_each_error_status_with_the_error_body() -> None:
    app = FastAPI()

    @app.post("/things", responses=error_responses(*MEANS))
    async def things() -> None:
        return None

    document = app.openapi()
    responses = document["paths"]["/things"]["post"]["responses"]
    for status, word in MEANS.items():
        assert word in responses[str(status)]["description"]
        schema = responses[str(status)]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/ErrorBody"}
    fields = document["components"]["schemas"]["ErrorDetail"]["properties"]
    assert "snake_case" in fields["code"]["description"]
    assert "sentence" in fields["message"]["description"]
    assert "422" in fields["details"]["description"]
    # A read can be refused (401, 403), have a bad query (422) or find the database down (503); a
    # write can also have a malformed, oversized or non-JSON body, an unknown id or a conflict.
    assert sorted(READ_ERRORS) == [401, 403, 422, 503]
    assert sorted(WRITE_ERRORS) == [400, 401, 403, 404, 409, 413, 415, 422, 503]


class Lines(logging.Handler):
    """What was logged, with the request id a JSON line would carry (``request_id_var``)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[int, str, str | None, bool]] = []

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info is not None
        self.seen.append((record.levelno, record.getMessage(), request_id_var.get(), exc))


@pytest.mark.parametrize(
    ("what", "line", "traceback"),
    [
        ("down", "database unavailable: down", False),
        ("refused", "database error", True),
        ("unknown", "append outcome unknown: lost", False),
        ("store", "store error", True),
        ("bug", "unhandled error", True),
    ],
)
def test_each_failure_of_the_service_is_logged_with_the_request_id(
    client: TestClient, what: str, line: str, traceback: bool
) -> None:
    lines = Lines()
    logger = logging.getLogger("enforcement.http")
    logger.addHandler(lines)
    try:
        client.post(f"/raise/{what}", headers={"X-Request-Id": "req_1"})
    finally:
        logger.removeHandler(lines)
    # Only the 500 handler sets it from the scope (the real middleware sets it for the rest).
    request_id = "req_1" if what == "bug" else None
    assert lines.seen == [(logging.ERROR, line, request_id, traceback)]


@pytest.mark.parametrize("what", ["down", "refused"])
def test_a_read_the_database_failed_is_to_be_tried_again(client: TestClient, what: str) -> None:
    """A read (GET, HEAD, OPTIONS) changes nothing: it is to be tried again; a write was not
    recorded."""
    get = client.get(f"/raise/{what}")
    assert error_of(get, 503)["message"].endswith("; try again shortly.")
    assert error_of(client.options(f"/raise/{what}"), 503) == error_of(get, 503)
    head = client.head(f"/raise/{what}")
    assert (head.status_code, head.content) == (503, b"")
    assert head.headers["content-length"] == get.headers["content-length"]  # GET's answer


def test_an_unexpected_error_answers_with_the_requests_id(client: TestClient) -> None:
    response = client.get("/raise/bug", headers={"X-Request-Id": "req_bug"})
    assert error_of(response, 500)["code"] == "internal_error"
    assert response.headers["x-request-id"] == "req_bug"
    assert "x-request-id" not in client.get("/raise/bug").headers


def test_the_500_handler_leaves_the_request_id_as_it_found_it() -> None:
    """It sets the id for its log line only: what runs after it in the request's context (the
    server's own line about the exception) is not told an id it did not set."""
    handler = handlers_app().exception_handlers[Exception]
    scope = {"type": "http", "method": "GET", "headers": [], REQUEST_ID_KEY: "req_9"}

    async def handle() -> str | None:
        answer = handler(Request(scope), RuntimeError("a bug"))
        assert isinstance(answer, Awaitable)  # an async handler
        assert (await answer).headers["x-request-id"] == "req_9"
        return request_id_var.get()

    assert asyncio.run(handle()) is None


def test_unknown_routes_and_wrong_methods(client: TestClient) -> None:
    assert error_of(client.get("/nowhere"), 404) == {
        "code": "not_found",
        "message": "No such route or resource.",
        "details": None,
    }
    wrong = client.delete("/raise/bug")
    assert error_of(wrong, 405) == {
        "code": "method_not_allowed",
        "message": "This method is not allowed on this route.",
        "details": None,
    }
    assert set(wrong.headers["allow"].split(", ")) == {"GET", "HEAD", "OPTIONS", "POST"}


def test_a_body_is_malformed_empty_missing_or_not_json(client: TestClient) -> None:
    json_type = {"Content-Type": "application/json"}
    malformed = error_of(client.post("/items", content=b'{"a": ', headers=json_type), 400)
    assert malformed["code"] == "malformed_json"
    assert malformed["message"] == "The request body is not valid JSON."
    assert malformed["details"]["position"] == 6 and malformed["details"]["reason"]
    empty = error_of(client.post("/items", content=b"", headers=json_type), 400)
    assert empty == {
        "code": "malformed_json",
        "message": "The request body is empty; it must be a JSON object.",
        "details": None,
    }
    missing = error_of(client.post("/items"), 422)
    assert missing["details"] == [{"field": "body", "message": "Field required"}]
    text = error_of(
        client.post("/items", content=b"{}", headers={"Content-Type": "text/plain"}), 415
    )
    assert text == {
        "code": "unsupported_media_type",
        "message": "The request body must be JSON sent with Content-Type: application/json.",
        "details": {"content_type": "text/plain"},
    }


def test_a_malformed_body_of_a_refused_caller_is_their_refusal() -> None:
    refused = ApiError(403, "forbidden", "Not yours.", headers={"X-Why": "role"})
    client = TestClient(handlers_app(refused))
    response = client.post("/items", content=b"{", headers={"Content-Type": "application/json"})
    assert error_of(response, 403) == {
        "code": "forbidden",
        "message": "Not yours.",
        "details": None,
    }
    assert response.headers["x-why"] == "role"


def test_without_a_refusal_a_malformed_body_is_400() -> None:
    app = FastAPI()
    install_error_handlers(app)  # ``refusal`` is optional

    @app.post("/items")
    async def items(item: Item) -> None:
        return None

    response = TestClient(app).post(
        "/items", content=b"{", headers={"Content-Type": "application/json"}
    )
    assert error_of(response, 400)["code"] == "malformed_json"


def test_each_invalid_field_is_listed_with_its_sentence_and_allowed_values(
    client: TestClient,
) -> None:
    response = client.post("/items", json={"severity": "huge", "name": ".."})
    assert error_of(response, 422) == {
        "code": "validation_failed",
        "message": "The request has invalid fields.",
        "details": [
            {
                "field": "severity",
                "message": "Input should be 'low' or 'high'",
                "allowed": ["low", "high"],
            },
            {"field": "name", "message": 'must not be ".."'},
        ],
    }
    whole = error_of(client.post("/items", json=[1]), 422)["details"]
    assert [d["field"] for d in whole] == ["body"]


def test_the_helpers_read_pydantics_errors() -> None:
    assert is_json_media_type("Application/JSON; charset=utf-8")
    assert is_json_media_type("application/problem+json")
    assert not is_json_media_type("text/json")
    assert not is_json_media_type("application/jsonp")
    assert not is_json_media_type("text/x+json")
    assert not body_missing([])
    assert not body_missing(
        [{"type": "missing", "loc": ("body",)}, {"type": "missing", "loc": ("body", "a")}]
    )
    assert json_error([{"type": "json_invalid", "loc": ("body",), "ctx": {"error": "EOF"}}]) == {
        "reason": "EOF",
        "position": None,
    }
    assert json_error([{"type": "missing", "loc": ("body",)}]) is None
    assert validation_details(
        [{"type": "x", "loc": ("query", "limit"), "msg": "bad", "ctx": {"allowed": ["a"]}}], "whole"
    ) == [{"field": "query.limit", "message": "bad", "allowed": ["a"]}]
    assert validation_details([{"type": "x", "loc": (), "msg": "Value error, kept"}], "whole") == [
        {"field": "whole", "message": "Value error, kept"}
    ]
    assert validation_details(
        [{"type": "x", "loc": ("a",), "msg": "m", "ctx": {"expected": "'p' or 'q'"}}]
    ) == [{"field": "a", "message": "m", "allowed": "'p' or 'q'"}]
    assert validation_details(
        [{"type": "enum", "loc": ("a",), "msg": "m", "ctx": {"expected": "nothing quoted"}}]
    ) == [{"field": "a", "message": "m", "allowed": "nothing quoted"}]
    assert validation_details(
        [{"type": "enum", "loc": ("a",), "msg": "m", "ctx": {"expected": "'p' or 'q'"}}]
    ) == [{"field": "a", "message": "m", "allowed": ["p", "q"]}]
    assert validation_details([{"type": "x", "loc": ("a",)}]) == [{"field": "a", "message": ""}]
