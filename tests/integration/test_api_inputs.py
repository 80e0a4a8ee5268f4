"""Request input at the API's edge (CONTRACT.md): times carry their offset, and a 422 lists the
allowed values of a closed set as a list, for every such field alike."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterator
from datetime import timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi import Request
from fastapi.testclient import TestClient
from test_service_support import fail_appending

from enforcement.api import responses
from enforcement.api.app import create_app
from enforcement.api.deps import get_principal
from enforcement.api.routes.accounts import _path_is_text
from enforcement.api.routes.reporting import batch_item_key
from enforcement.api.violations import violation_json
from enforcement.bootstrap import Container
from enforcement.cli import time_option
from enforcement.roles import Role
from enforcement.tables import contacts
from enforcement.tokens import Principal, create_token
from events import NewEvent, StoreError
from events.dialects import drop_append_only_ddl
from events.schema import events as events_table
from events.schema import idempotency_keys


@pytest.fixture
def client(system: Container) -> Iterator[TestClient]:
    with TestClient(create_app(system)) as test_client:
        yield test_client


@pytest.fixture
def as_role(system: Container) -> Any:
    def headers(role: Role) -> dict[str, str]:
        return {"Authorization": f"Bearer {create_token(system.engine, role, role.value)}"}

    return headers


def details(response: Any) -> list[dict[str, Any]]:
    assert response.status_code == 422, response.text
    body = response.json()["error"]
    assert body["code"] == "validation_failed"
    return list(body["details"])


def test_a_time_without_an_offset_is_refused_and_nothing_is_written(
    system: Container, client: TestClient, as_role: Any
) -> None:
    reporter, operator = as_role(Role.REPORTER), as_role(Role.OPERATOR)
    violation = {"account_id": "acct_t", "category": "spam"}

    naive = client.post(
        "/v1/violations", json={**violation, "occurred_at": "2026-01-01T00:00:00"}, headers=reporter
    )
    assert [d["field"] for d in details(naive)] == ["occurred_at"]
    batch = client.post(
        "/v1/violations:batch",
        json={"violations": [{**violation, "occurred_at": "2026-01-01T00:00:00"}]},
        headers=reporter,
    )
    [item] = batch.json()["results"]
    assert item["status"] == 422
    assert [d["field"] for d in item["error"]["details"]] == ["occurred_at"]
    until = client.post(
        "/v1/accounts/acct_t/suspend", json={"until": "2030-01-01T00:00:00"}, headers=operator
    )
    assert [d["field"] for d in details(until)] == ["until"]
    expires = client.post(
        "/v1/accounts/acct_t/throttles",
        json={"expires_at": "2030-01-01 00:00:00"},
        headers=operator,
    )
    assert [d["field"] for d in details(expires)] == ["expires_at"]
    as_of = client.get(
        "/v1/accounts/acct_t/standing",
        params={"as_of": "2026-01-01T00:00:00"},
        headers=as_role(Role.AUDITOR),
    )
    assert as_of.status_code == 422, as_of.text
    assert as_of.json()["error"] == {
        "code": "validation_failed",
        "message": "The as_of parameter is not an RFC 3339 time with a UTC offset.",
        "details": [{"field": "as_of", "message": "expected e.g. 2026-11-24T10:00:00Z"}],
    }
    assert system.store.head("acct_t").version == 0

    for stamp in ("2026-01-01T00:00:00Z", "2026-01-01T01:00:00+01:00"):
        accepted = client.post(
            "/v1/violations", json={**violation, "occurred_at": stamp}, headers=reporter
        )
        assert accepted.status_code == 201, accepted.text
        reported = accepted.json()["events"][0]
        assert reported["occurred_at"] == "2026-01-01T00:00:00.000000Z"


def test_every_closed_set_lists_its_allowed_values_as_a_list(
    client: TestClient, as_role: Any
) -> None:
    reporter = as_role(Role.REPORTER)
    base = {"account_id": "acct_a", "category": "spam"}
    bad = client.post(
        "/v1/violations",
        json={**base, "category": "nope", "severity": "huge", "detection": "psychic"},
        headers=reporter,
    )
    allowed = {d["field"]: d["allowed"] for d in details(bad)}
    assert allowed["severity"] == ["low", "medium", "high", "critical"]
    assert allowed["detection"] == ["automated", "human_review", "user_report"]
    assert isinstance(allowed["category"], list) and "spam" in allowed["category"]


def test_a_violation_before_1970_is_refused_and_an_early_as_of_is_no_error(
    system: Container, client: TestClient, as_role: Any
) -> None:
    """Times are compared as their RFC 3339 text, which orders only four-digit years: a
    violation dated in year 999 counted as a strike forever. None predates the Unix epoch."""
    reporter, auditor = as_role(Role.REPORTER), as_role(Role.AUDITOR)
    for stamp in ("0999-01-01T00:00:00Z", "1969-12-31T23:59:59.999999Z"):
        old = client.post(
            "/v1/violations",
            json={"account_id": "acct_old", "category": "spam", "occurred_at": stamp},
            headers=reporter,
        )
        assert [d["field"] for d in details(old)] == ["occurred_at"]
    assert system.store.head("acct_old").version == 0
    epoch = client.post(
        "/v1/violations",
        json={"account_id": "acct_old", "category": "spam", "occurred_at": "1970-01-01T00:00:00Z"},
        headers=reporter,
    )
    assert epoch.status_code == 201, epoch.text
    assert epoch.json()["standing"]["strikes"] == 0  # long aged out

    for as_of in ("0001-01-01T00:00:00Z", "0001-02-01T00:00:00Z"):
        early = client.get(
            "/v1/accounts/acct_old/standing", params={"as_of": as_of}, headers=auditor
        )
        assert early.status_code == 200, early.text
        assert (early.json()["version"], early.json()["strikes"]) == (0, 0)
        # CONTRACT.md: times are RFC 3339, whose years have four digits ("0001", not "1").
        assert early.json()["as_of"] == as_of.replace("Z", ".000000Z")


def test_a_violation_more_than_5_minutes_ahead_is_refused_and_one_5_minutes_ahead_is_not(
    system: Container, client: TestClient, as_role: Any
) -> None:
    """CONTRACT.md: ``occurred_at`` may be up to 5 minutes ahead of the service's clock (the
    reporter's clock may run a little fast); a moment later is refused, and nothing written."""
    reporter = as_role(Role.REPORTER)
    edge = system.clock() + timedelta(minutes=5)
    violation = {"account_id": "acct_ahead", "category": "spam"}
    ahead = client.post(
        "/v1/violations",
        json={**violation, "occurred_at": (edge + timedelta(microseconds=1)).isoformat()},
        headers=reporter,
    )
    assert ahead.status_code == 422, ahead.text
    assert ahead.json()["error"] == {
        "code": "validation_failed",
        "message": "The occurred_at time is more than 5 minutes in the future.",
        "details": [{"field": "occurred_at", "message": "more than 5 minutes in the future"}],
    }
    assert system.store.head("acct_ahead").version == 0
    in_another_offset = edge.astimezone(timezone(timedelta(hours=-3))).isoformat()
    recorded = client.post(
        "/v1/violations", json={**violation, "occurred_at": in_another_offset}, headers=reporter
    )
    assert recorded.status_code == 201, recorded.text
    assert system.store.head("acct_ahead").version > 0


def test_a_time_out_of_range_in_utc_is_refused_not_a_500(
    system: Container, client: TestClient, as_role: Any
) -> None:
    reporter, operator, auditor = (as_role(r) for r in (Role.REPORTER, Role.OPERATOR, Role.AUDITOR))
    late, early = "9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00"
    violation = {"account_id": "acct_r", "category": "spam", "occurred_at": late}
    assert [
        d["field"] for d in details(client.post("/v1/violations", json=violation, headers=reporter))
    ] == ["occurred_at"]
    until = client.post("/v1/accounts/acct_r/suspend", json={"until": late}, headers=operator)
    assert [d["field"] for d in details(until)] == ["until"]
    expires = client.post(
        "/v1/accounts/acct_r/throttles", json={"expires_at": early}, headers=operator
    )
    assert [d["field"] for d in details(expires)] == ["expires_at"]
    for as_of in (late, early):
        standing = client.get(
            "/v1/accounts/acct_r/standing", params={"as_of": as_of}, headers=auditor
        )
        assert standing.status_code == 422, standing.text
    assert system.store.head("acct_r").version == 0


def test_a_422_gives_the_services_own_sentence_without_pydantics_prefix(
    client: TestClient, as_role: Any
) -> None:
    """The service's own checks raise ValueError, which pydantic reports as "Value error, …":
    the caller reads the check's sentence alone, as for every other field."""
    reporter, operator = as_role(Role.REPORTER), as_role(Role.OPERATOR)
    old = {"account_id": "acct_p", "category": "spam", "occurred_at": "1969-12-31T23:59:59Z"}
    expected = [{"field": "occurred_at", "message": "must not be before 1970-01-01T00:00:00Z"}]
    assert details(client.post("/v1/violations", json=old, headers=reporter)) == expected
    batch = client.post("/v1/violations:batch", json={"violations": [old]}, headers=reporter)
    assert batch.json()["results"][0]["error"]["details"] == expected
    nul = client.post("/v1/accounts/acct_p/suspend", json={"reason": "a\x00"}, headers=operator)
    assert details(nul) == [{"field": "reason", "message": "must not contain the NUL character"}]
    dots = client.put(
        "/v1/accounts/acct_p/keys/%2E%2E/limits",
        json={"requests_per_minute": 5, "tokens_per_day": 50},
        headers=operator,
    )
    assert details(dots) == [{"field": "path.key_id", "message": 'must not be "." or ".."'}]


def test_a_leap_second_is_refused_as_such_everywhere_a_time_is_taken(
    system: Container,
    client: TestClient,
    as_role: Any,
    reporter: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """RFC 3339 allows "23:59:60"; the log has no such time. It was refused as "unexpected
    extra characters" or "not an RFC 3339 time": now as what it is, and with what to write."""
    leap = "2016-12-31T23:59:60Z"
    said = "must not be a leap second (:60)"
    operator, auditor = as_role(Role.OPERATOR), as_role(Role.AUDITOR)
    violation = {"account_id": "acct_leap", "category": "spam", "occurred_at": leap}
    for headers in (reporter, as_role(Role.REPORTER)):  # the shortcut, and FastAPI's way
        [one] = details(client.post("/v1/violations", json=violation, headers=headers))
        assert one["field"] == "occurred_at" and said in one["message"]
    batch = client.post("/v1/violations:batch", json={"violations": [violation]}, headers=reporter)
    [item] = batch.json()["results"]
    assert item["status"] == 422 and said in item["error"]["details"][0]["message"]
    until = client.post("/v1/accounts/acct_leap/suspend", json={"until": leap}, headers=operator)
    assert said in details(until)[0]["message"]
    as_of = client.get("/v1/accounts/acct_leap/standing", params={"as_of": leap}, headers=auditor)
    assert said in details(as_of)[0]["message"] and said in as_of.json()["error"]["message"]
    with pytest.raises(SystemExit) as exited:
        time_option(leap, "--as-of")
    assert exited.value.code == 2 and said in capsys.readouterr().err
    assert system.store.head("acct_leap").version == 0
    # Digits past the microsecond are dropped: the time is the microsecond it falls in.
    fine = {**violation, "occurred_at": "2016-12-31T23:59:59.9999999Z"}
    recorded = client.post("/v1/violations", json=fine, headers=reporter)
    assert recorded.json()["events"][0]["occurred_at"] == "2016-12-31T23:59:59.999999Z"


# ------------------------------------------------------------------ the body's media type

# Every route that takes a JSON body, with a body it accepts, and the role that may send it.
JSON_ROUTES: list[tuple[str, str, dict[str, Any], Role]] = [
    ("POST", "/v1/violations", {"account_id": "acct_m", "category": "spam"}, Role.REPORTER),
    (
        "POST",
        "/v1/violations:batch",
        {"violations": [{"account_id": "acct_m", "category": "spam"}]},
        Role.REPORTER,
    ),
    (
        "POST",
        "/v1/abuse-reports",
        {"reported_account_id": "acct_m", "category": "spam"},
        Role.REPORTER,
    ),
    ("POST", "/v1/accounts/acct_m/suspend", {"reason": "r", "notify": False}, Role.OPERATOR),
    (
        "PUT",
        "/v1/accounts/acct_m/keys/key%2F1/limits",
        {"requests_per_minute": 5, "tokens_per_day": 50},
        Role.OPERATOR,
    ),
    ("PUT", "/v1/accounts/acct_m/contact", {"email": "a@example.com"}, Role.OPERATOR),
    ("POST", "/v1/gate/check", {"account_id": "acct_m", "key_id": "key_1"}, Role.GATEWAY),
]
MEDIA_TYPE_MESSAGE = "The request body must be JSON sent with Content-Type: application/json."
ROUTE_IDS = [f"{method} {path}" for method, path, _, _ in JSON_ROUTES]


def nothing_written(system: Container) -> None:
    assert system.store.head("acct_m").version == 0
    with system.engine.connect() as conn:
        assert conn.execute(sa.select(contacts)).all() == []


@pytest.mark.parametrize(
    "content_type",
    [
        "application/x-www-form-urlencoded",
        "text/plain",
        "text/plain; charset=utf-8",
        "text/json",
        None,  # none at all: FastAPI (0.132 on) does not read that body as JSON either
    ],
)
def test_a_json_body_sent_as_another_media_type_is_415_naming_json_and_writes_nothing(
    system: Container, client: TestClient, as_role: Any, content_type: str | None
) -> None:
    """What ``curl -d '{…}'`` sends (a form's media type): not read as JSON, so no field of it
    was read; the answer says what to send instead of "body: not a valid dictionary"."""
    for method, path, body, role in JSON_ROUTES:
        response = client.request(
            method,
            path,
            content=json.dumps(body).encode(),
            headers={**as_role(role), **({"Content-Type": content_type} if content_type else {})},
        )
        assert response.status_code == 415, (path, response.text)
        assert response.json() == {
            "error": {
                "code": "unsupported_media_type",
                "message": MEDIA_TYPE_MESSAGE,
                "details": {"content_type": content_type},
            }
        }
    nothing_written(system)


@pytest.mark.parametrize(("method", "path", "body", "role"), JSON_ROUTES, ids=ROUTE_IDS)
def test_the_caller_is_refused_before_the_media_type(
    system: Container,
    client: TestClient,
    as_role: Any,
    method: str,
    path: str,
    body: dict[str, Any],
    role: Role,
) -> None:
    other = Role.GATEWAY if role is not Role.GATEWAY else Role.AUDITOR
    as_text = {"Content-Type": "text/plain"}
    content = json.dumps(body).encode()
    for headers, status, code in (
        ({}, 401, "unauthorized"),
        ({"Authorization": "Bearer enf_unknown"}, 401, "unauthorized"),
        (as_role(other), 403, "forbidden"),
    ):
        response = client.request(method, path, content=content, headers={**headers, **as_text})
        assert response.status_code == status, (path, response.text)
        assert response.json()["error"]["code"] == code
    nothing_written(system)


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON",
        "application/x+json",
    ],
)
@pytest.mark.parametrize(("method", "path", "body", "role"), JSON_ROUTES, ids=ROUTE_IDS)
def test_json_with_parameters_or_a_json_suffix_is_read_as_json(
    client: TestClient,
    as_role: Any,
    method: str,
    path: str,
    body: dict[str, Any],
    role: Role,
    content_type: str,
) -> None:
    response = client.request(
        method,
        path,
        content=json.dumps(body).encode(),
        headers={**as_role(role), "Content-Type": content_type},
    )
    assert response.status_code in (200, 201, 202), (path, response.text)


@pytest.mark.parametrize(("method", "path", "body", "role"), JSON_ROUTES, ids=ROUTE_IDS)
def test_an_empty_body_sent_as_json_is_malformed_json(
    system: Container,
    client: TestClient,
    as_role: Any,
    method: str,
    path: str,
    body: Any,
    role: Role,
) -> None:
    """CONTRACT.md: 400 for malformed JSON; an empty body is no JSON value at all."""
    response = client.request(
        method, path, content=b"", headers={**as_role(role), "Content-Type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "malformed_json"
    nothing_written(system)


def not_strict_json(body: dict[str, Any]) -> dict[str, tuple[bytes, str, int | None]]:
    """``body`` written in ways ``json.loads`` takes and JSON does not: (content, reason,
    position)."""
    text = json.dumps(body)
    name, value = next(iter(body.items()))
    again = f"{{{json.dumps(name)}: {json.dumps(value)}, {text[1:]}"
    return {
        "a member named twice": (again.encode(), "an object names the same member twice", None),
        "NaN": (f'{text[:-1]}, "n": NaN}}'.encode(), "NaN is not a JSON value", None),
        "Infinity": (text.replace("{", '{"n": -Infinity, ', 1).encode(), "-Infinity", None),
        "UTF-16": (text.encode("utf-16"), "the body is not UTF-8", 0),
        "a stray byte": (text[:5].encode() + b"\xff" + text[5:].encode(), "not UTF-8", 5),
        "a stray byte after a byte order mark": (
            b"\xef\xbb\xbf" + text[:5].encode() + b"\xff" + text[5:].encode(),
            "not UTF-8",
            5,
        ),
        "5,000 digits": (f'{text[:-1]}, "n": {"9" * 5000}}}'.encode(), "digits", None),
        "1e999": (f'{text[:-1]}, "n": [1e999, {2**64}]}}'.encode(), "out of range", None),
    }


@pytest.mark.parametrize(("method", "path", "body", "role"), JSON_ROUTES, ids=ROUTE_IDS)
def test_a_body_that_is_not_strict_json_is_malformed_json(
    system: Container,
    client: TestClient,
    as_role: Any,
    method: str,
    path: str,
    body: dict[str, Any],
    role: Role,
) -> None:
    """Python's parser takes NaN, Infinity, a member named twice (the last wins) and UTF-16;
    none is JSON, and a service in front reading the first of two names would see another
    request: 400, saying why, and nothing written."""
    headers = {**as_role(role), "Content-Type": "application/json"}
    for case, (content, reason, position) in not_strict_json(body).items():
        response = client.request(method, path, content=content, headers=headers)
        assert response.status_code == 400, (case, response.text)
        error = response.json()["error"]
        assert error["code"] == "malformed_json"
        assert reason in error["details"]["reason"], case
        assert error["details"]["position"] == position, case
    nothing_written(system)
    with_bom = b"\xef\xbb\xbf" + json.dumps(body).encode()  # RFC 8259: may be ignored
    assert client.request(method, path, content=with_bom, headers=headers).status_code < 300


def test_a_body_the_parser_refuses_is_answered_after_the_caller_is_refused(
    client: TestClient, as_role: Any
) -> None:
    for case, (content, _, _) in not_strict_json({"account_id": "acct_m"}).items():
        for headers, status in (({}, 401), (as_role(Role.GATEWAY), 403)):
            response = client.post(
                "/v1/violations",
                content=content,
                headers={**headers, "Content-Type": "application/json"},
            )
            assert response.status_code == status, (case, response.text)


def test_the_docs_page_loads_nothing_from_another_origin(system: Container) -> None:
    """/docs is Swagger UI served from the package (FastAPI's own page loads its script from a
    CDN, which then runs on this origin); behind a path prefix its URLs carry the prefix."""
    with TestClient(create_app(system)) as client:
        page = client.get("/docs")
        assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        script = client.get("/docs/static/swagger-ui-bundle.js")
        redirect = client.get("/docs/oauth2-redirect")
        redoc = client.get("/redoc")
    with TestClient(create_app(system), root_path="/enforcement") as prefixed:
        behind = prefixed.get("/docs").text

    assert page.status_code == 200
    assert sorted(assets) == [
        "/docs/static/favicon-32x32.png?v=5.30.2",
        "/docs/static/swagger-ui-bundle.js?v=5.30.2",
        "/docs/static/swagger-ui.css?v=5.30.2",
    ]
    assert "url: '/openapi.json'" in page.text
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert "SwaggerUIBundle" in script.text
    assert redirect.status_code == 200
    assert redoc.status_code == 404  # it would load ReDoc from a CDN
    assert '"/enforcement/docs/static/swagger-ui-bundle.js?v=5.30.2"' in behind
    assert "url: '/enforcement/openapi.json'" in behind


def test_every_route_with_a_body_reads_it_as_strict_json(
    system: Container, client: TestClient, as_role: Any
) -> None:
    """Each operation of the OpenAPI document that takes a body, path parameters filled in,
    as the admin (every permission): a member named twice is malformed, not the last one."""
    paths = client.get("/openapi.json").json()["paths"]
    operations = [
        (method, re.sub(r"\{[^}]+\}", "acct_m", path))
        for path, item in paths.items()
        for method, operation in item.items()
        if "requestBody" in operation
    ]
    assert len(operations) > len(JSON_ROUTES)
    headers = {**as_role(Role.ADMIN), "Content-Type": "application/json"}
    for method, path in operations:
        response = client.request(method, path, content=b'{"a": 1, "a": 2}', headers=headers)
        assert response.status_code == 400, (method, path, response.text)
        assert response.json()["error"]["code"] == "malformed_json"
    nothing_written(system)


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        # Pydantic would read a number, or digits as text, as Unix seconds: 1970-01-15.
        (
            "/v1/violations",
            {"account_id": "acct_m", "category": "spam", "occurred_at": 1234567},
            "occurred_at",
        ),
        (
            "/v1/violations",
            {"account_id": "acct_m", "category": "spam", "occurred_at": "1234567"},
            "occurred_at",
        ),
        (
            "/v1/violations",
            {"account_id": "acct_m", "category": "spam", "occurred_at": 1.7e9},
            "occurred_at",
        ),
        ("/v1/accounts/acct_m/suspend", {"until": 1900000000}, "until"),
        ("/v1/accounts/acct_m/throttles", {"expires_at": "1900000000"}, "expires_at"),
        # A flag or a number given as text is not read as one ("no" would turn a notice off).
        ("/v1/accounts/acct_m/suspend", {"notify": "no"}, "notify"),
        ("/v1/accounts/acct_m/terminate", {"notify": 0}, "notify"),
        ("/v1/accounts/acct_m/throttles", {"factor": "0.5"}, "factor"),
        ("/v1/accounts/acct_m/adult-content-approval", {"approved": "yes"}, "approved"),
    ],
)
def test_times_flags_and_numbers_are_not_read_from_other_types(
    system: Container, client: TestClient, as_role: Any, path: str, body: Any, field: str
) -> None:
    role = Role.REPORTER if path == "/v1/violations" else Role.OPERATOR
    method = "PUT" if path.endswith("adult-content-approval") else "POST"
    response = client.request(method, path, json=body, headers=as_role(role))
    assert [d["field"] for d in details(response)] == [field]
    nothing_written(system)


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        (
            "/v1/accounts/acct_m/limits",
            {"requests_per_minute": "600", "tokens_per_day": 5},
            "requests_per_minute",
        ),
        (
            "/v1/accounts/acct_m/limits",
            {"requests_per_minute": 600, "tokens_per_day": 1000.5},
            "tokens_per_day",
        ),
        (
            "/v1/accounts/acct_m/limits",
            {"requests_per_minute": True, "tokens_per_day": 5},
            "requests_per_minute",
        ),
        ("/v1/gate/check", {"account_id": "acct_m", "key_id": "k", "tokens": "5"}, "tokens"),
    ],
)
def test_counts_are_json_integers(
    system: Container, client: TestClient, as_role: Any, path: str, body: Any, field: str
) -> None:
    role = Role.GATEWAY if path == "/v1/gate/check" else Role.OPERATOR
    method = "POST" if path == "/v1/gate/check" else "PUT"
    response = client.request(method, path, json=body, headers=as_role(role))
    assert [d["field"] for d in details(response)] == [field]
    nothing_written(system)


def test_a_whole_number_sent_as_a_json_float_is_a_count(client: TestClient, as_role: Any) -> None:
    """JSON has one number type: a client that writes every number as a float (600.0) is not
    refused, as it was not before counts became strict."""
    limits = client.put(
        "/v1/accounts/acct_f/limits",
        json={"requests_per_minute": 600.0, "tokens_per_day": 1e6},
        headers=as_role(Role.OPERATOR),
    )
    assert limits.status_code == 200, limits.text
    [configured] = limits.json()["events"]
    assert (configured["data"]["requests_per_minute"], configured["data"]["tokens_per_day"]) == (
        600,
        1_000_000,
    )
    check = client.post(
        "/v1/gate/check",
        json={"account_id": "acct_f", "key_id": "k", "tokens": 5.0},
        headers=as_role(Role.GATEWAY),
    )
    assert check.status_code == 200, check.text


def test_health_answers_head_as_get_without_a_body(client: TestClient) -> None:
    """Load balancers often probe with HEAD; it is not an operation of the OpenAPI document."""
    head = client.head("/healthz")
    assert (head.status_code, head.content) == (200, b"")
    health = client.get("/openapi.json").json()["paths"]["/healthz"]
    assert list(health) == ["get"]
    assert health["get"]["tags"] == ["health"]
    # A failed ``SELECT 1`` is a 503 with the error body (test_api_unavailable), documented so.
    assert health["get"]["responses"]["503"]["description"] == "The database does not answer."


@pytest.mark.parametrize("run_workers", [False, True])
def test_the_lifespan_starts_the_workers_only_when_asked_then_stops_them_and_closes(
    system: Container, monkeypatch: pytest.MonkeyPatch, run_workers: bool
) -> None:
    """``serve`` installs ``start_workers``; the app starts them only with ``run_workers`` (never
    by default) and, on shutdown, stops them before it closes the container."""
    calls: list[str] = []

    def start_workers() -> Callable[[], None]:
        calls.append("start")
        return lambda: calls.append("stop")

    def close(original: Callable[[], None] = system.close) -> None:
        calls.append("close")
        original()

    system.extras["start_workers"] = start_workers
    monkeypatch.setattr(system, "close", close)
    app = create_app(system, run_workers=True) if run_workers else create_app(system)
    with TestClient(app) as client:
        assert calls == (["start"] if run_workers else [])
        assert client.get("/healthz").json() == {"status": "ok"}
    assert calls == (["start", "stop", "close"] if run_workers else ["close"])


def test_an_empty_body_of_another_media_type_is_a_missing_body(
    system: Container, client: TestClient, as_role: Any
) -> None:
    response = client.put(
        "/v1/accounts/acct_m/limits",
        content=b"",
        headers={**as_role(Role.OPERATOR), "Content-Type": "text/plain"},
    )
    assert details(response) == [{"field": "body", "message": "Field required"}]
    nothing_written(system)


# ------------------------------------------------------------------ text that is no text


@pytest.mark.parametrize(
    "escaped",
    ["%FF", "key%FF", "%C3", "a%C3%28", "%ED%B2%80", "%C0%AF", "key%2F%FE%2Fx"],
    ids=[
        "ff",
        "trailing-ff",
        "truncated",
        "bad-continuation",
        "surrogate",
        "overlong",
        "in-a-slash",
    ],
)
def test_a_key_id_in_the_path_that_is_not_utf8_is_refused_and_writes_nothing(
    system: Container, client: TestClient, as_role: Any, escaped: str
) -> None:
    """The server decodes such an escape to U+FFFD: the key id would be one nobody sent."""
    response = client.put(
        f"/v1/accounts/acct_k/keys/{escaped}/limits",
        json={"requests_per_minute": 5, "tokens_per_day": 50},
        headers=as_role(Role.OPERATOR),
    )
    assert details(response) == [
        {"field": "path.key_id", "message": "must be percent-encoded UTF-8 text"}
    ]
    # The sentence of every other 422 of the request's fields.
    assert response.json()["error"]["message"] == "The request has invalid fields."
    assert system.store.head("acct_k").version == 0


def test_a_key_id_that_holds_the_replacement_character_itself_is_a_key_id(
    client: TestClient, as_role: Any
) -> None:
    response = client.put(
        "/v1/accounts/acct_k/keys/k%EF%BF%BD%C3%BC/limits",
        json={"requests_per_minute": 5, "tokens_per_day": 50},
        headers=as_role(Role.OPERATOR),
    )
    assert response.status_code == 200, response.text
    assert response.json()["events"][0]["data"]["key_id"] == "k\ufffdü"


def test_without_a_raw_path_the_decoded_path_is_taken_as_text() -> None:
    """``raw_path`` is optional in ASGI: a server without it cannot tell, so a key id holding
    U+FFFD is taken as sent (the raw path, when there is one, decides)."""
    scope: dict[str, Any] = {"type": "http", "method": "PUT", "path": "/", "headers": []}
    assert _path_is_text(Request(scope)) is True
    assert _path_is_text(Request({**scope, "raw_path": b"/k%EF%BF%BD"})) is True
    assert _path_is_text(Request({**scope, "raw_path": b"/k%FF"})) is False


ID_ROUTES = [
    ("POST", "violations/{}/dismiss", {}, "violation_id", "violation_not_found"),
    ("POST", "remediations/{}/complete", {}, "remediation_id", "remediation_not_found"),
    ("DELETE", "throttles/{}", None, "throttle_id", "throttle_not_found"),
    ("POST", "abuse-reports/{}/triage", {"outcome": "confirmed"}, "report_id", "not_found"),
    ("POST", "appeals/{}/decide", {"outcome": "upheld"}, "appeal_id", "appeal_not_found"),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "field", "unknown"), ID_ROUTES, ids=[r[3] for r in ID_ROUTES]
)
def test_an_id_in_an_account_commands_path_has_1_to_128_characters(
    system: Container,
    client: TestClient,
    as_role: Any,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    field: str,
    unknown: str,
) -> None:
    """An id of 1 or 128 characters is looked up (an unknown one is a 404); 129 is a 422."""
    operator = as_role(Role.OPERATOR)
    for length in (1, 128):
        url = "/v1/accounts/acct_id/" + path.format("v" * length)
        response = client.request(method, url, json=body, headers=operator)
        assert response.status_code == 404, (length, response.text)
        assert response.json()["error"]["code"] == unknown
    url = "/v1/accounts/acct_id/" + path.format("v" * 129)
    response = client.request(method, url, json=body, headers=operator)
    assert [d["field"] for d in details(response)] == [f"path.{field}"]
    assert system.store.head("acct_id").version == 0


@pytest.mark.parametrize(
    ("path", "body", "role", "field"),
    [
        (
            "/v1/violations",
            {"account_id": "acct_u", "category": "\udc80"},
            Role.REPORTER,
            "category",
        ),
        (
            "/v1/violations",
            {"account_id": "acct_u", "category": "spam", "key_id": "\udc80"},
            Role.REPORTER,
            "key_id",
        ),
        (
            "/v1/abuse-reports",
            {"reported_account_id": "acct_u", "category": "sp\udc80m"},
            Role.REPORTER,
            "category",
        ),
        ("/v1/gate/check", {"account_id": "acct_u", "key_id": "key\udc80"}, Role.GATEWAY, "key_id"),
        ("/v1/accounts/acct_u/throttles", {"key_id": "\udc80"}, Role.OPERATOR, "key_id"),
    ],
    ids=[
        "violation-category",
        "violation-key",
        "abuse-report-category",
        "gate-key",
        "throttle-key",
    ],
)
def test_a_lone_surrogate_is_a_422_not_a_500(
    system: Container,
    client: TestClient,
    as_role: Any,
    path: str,
    body: dict[str, Any],
    role: Role,
    field: str,
) -> None:
    """JSON can escape half a surrogate pair (``"\\udc80"``), which is no text: it is refused
    as any other invalid field, and never echoed into an answer that UTF-8 cannot encode."""
    content = json.dumps(body).encode()  # ASCII: the surrogate as its escape
    response = client.post(
        path, content=content, headers={**as_role(role), "Content-Type": "application/json"}
    )
    [detail] = details(response)
    assert detail["field"] == field
    if field == "category":
        assert "spam" in detail["allowed"]
    assert system.store.head("acct_u").version == 0


def test_a_batch_with_an_unknown_field_is_refused_whole(
    system: Container, client: TestClient, as_role: Any
) -> None:
    """The batch's own object is as strict as every body: an unknown field (a misspelt
    ``violations``, say) is a 422 for the whole batch, not items silently dropped."""
    item = {"account_id": "acct_u", "category": "spam"}
    response = client.post(
        "/v1/violations:batch",
        json={"violations": [item], "violation": [item]},
        headers=as_role(Role.REPORTER),
    )
    assert [d["field"] for d in details(response)] == ["violation"]
    assert system.store.head("acct_u").version == 0


def test_a_batch_item_that_is_no_object_fails_alone_as_the_item(
    system: Container, client: TestClient, as_role: Any
) -> None:
    """Its error names no field of it (there is none) but the ``item`` itself."""
    response = client.post(
        "/v1/violations:batch",
        json={"violations": [42, {"account_id": "acct_u", "category": "spam"}]},
        headers=as_role(Role.REPORTER),
    )
    assert response.status_code == 200, response.text
    first, second = response.json()["results"]
    assert (first["status"], first["account_id"], second["status"]) == (422, None, 201)
    assert [d["field"] for d in first["error"]["details"]] == ["item"]


def test_a_batch_item_that_fails_in_the_store_answers_its_own_error(
    system: Container, client: TestClient, as_role: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An item the store fails on is answered with that failure's code and sentence (not an
    idempotency key's), the items around it recorded."""
    fail_appending(monkeypatch, system.store, "acct_f2", StoreError("disk on fire"))
    items = [{"account_id": f"acct_f{n}", "category": "spam"} for n in (1, 2, 3)]
    items[1]["idempotency_key"] = "key-f2"  # keyed: recorded alone, not with the first items
    response = client.post(
        "/v1/violations:batch", json={"violations": items}, headers=as_role(Role.REPORTER)
    )
    assert response.status_code == 200, response.text
    first, failed, third = response.json()["results"]
    assert (first["status"], third["status"]) == (201, 201)
    assert failed == {
        "violation_id": None,
        "account_id": "acct_f2",
        "status": 500,
        "error": {
            "code": "internal_error",
            "message": "The event store failed on this item; it was not recorded.",
            "details": None,
        },
    }


def test_a_batch_item_with_a_lone_surrogate_fails_alone_and_is_not_echoed(
    system: Container, client: TestClient, as_role: Any
) -> None:
    items = [
        {"account_id": "acct_u", "category": "\udc80"},
        {"account_id": "\udc80", "category": "spam"},
        {"account_id": ["\udc80"], "category": "spam"},
        {"account_id": "acct_u", "category": "spam"},
    ]
    response = client.post(
        "/v1/violations:batch",
        content=json.dumps({"violations": items}).encode(),
        headers={**as_role(Role.REPORTER), "Content-Type": "application/json"},
    )
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["status"] for r in results] == [422, 422, 422, 201]
    assert [r["account_id"] for r in results] == ["acct_u", None, None, "acct_u"]
    assert results[0]["error"]["details"][0]["field"] == "category"
    errors = [(r["violation_id"], r["error"]["code"], r["error"]["message"]) for r in results[:3]]
    assert errors == [(None, "validation_failed", "The item has invalid fields.")] * 3
    assert system.store.head("acct_u").version == len(results[3]["events"])


# ------------------------------------------------------------------ a batch's Idempotency-Key


def test_a_batch_idempotency_key_makes_a_retried_batch_replay_what_it_recorded(
    system: Container, client: TestClient, as_role: Any
) -> None:
    """The contract gives keys per item; a batch sent again under the same header (a client's
    retry) replays the items it recorded instead of recording them twice, wherever they stand
    in the retried batch (the client dropped the bad item). Identical items are violations
    each; an item's own key still wins, and the header's keys are no client's keys."""
    reporter = as_role(Role.REPORTER)

    def batch(items: list[dict[str, Any]], header: str | None = "batch-7") -> list[Any]:
        headers = {**reporter, **({"Idempotency-Key": header} if header else {})}
        response = client.post("/v1/violations:batch", json={"violations": items}, headers=headers)
        assert response.status_code == 200, response.text
        return list(response.json()["results"])

    one = {"account_id": "acct_b1", "category": "spam"}
    bad = {"account_id": "acct_b2", "category": "nope"}
    three = {"account_id": "acct_b3", "category": "spam"}
    own = {"account_id": "acct_b4", "category": "spam", "idempotency_key": "own-key"}
    first = batch([one, bad, three, one, own])
    assert [r["status"] for r in first] == [201, 422, 201, 201, 201]
    assert first[0]["violation_id"] != first[3]["violation_id"]  # two violations, alike

    retried = batch([three, one, one, own])  # the bad item dropped, the order changed
    assert [r["status"] for r in retried] == [200, 200, 200, 200]
    assert [r["violation_id"] for r in retried] == [
        first[2]["violation_id"],
        first[0]["violation_id"],
        first[3]["violation_id"],
        first[4]["violation_id"],
    ]
    assert system.store.key_used("own-key")

    spelled_out = {**one, "detection": "automated", "severity": None, "key_id": None}
    assert [r["status"] for r in batch([spelled_out])] == [200]  # its defaults written out
    fixed = batch([{**bad, "category": "spam"}, one, one, one])  # a third alike is new
    assert [r["status"] for r in fixed] == [201, 200, 200, 201]
    assert [r["status"] for r in batch([one], header=None)] == [201]  # no header: no key
    assert [r["status"] for r in batch([one], header="batch-8")] == [201]  # another batch

    reused = batch([{**own, "category": "phishing"}])  # its own key, another item
    message = "This item's idempotency_key was already used with a different item."
    assert reused == [
        {
            "violation_id": None,
            "account_id": "acct_b4",
            "status": 409,
            "error": {"code": "idempotency_key_reused", "message": message, "details": None},
        }
    ]


def test_identical_batch_items_are_keyed_by_their_count_as_earlier_versions_keyed_them(
    system: Container, client: TestClient, as_role: Any
) -> None:
    """The n-th of identical items under a batch's header has the key of occurrence n (0, 1,
    …): a batch retried after an upgrade must find the keys an earlier version recorded."""
    item = {"account_id": "acct_n", "category": "spam"}
    response = client.post(
        "/v1/violations:batch",
        json={"violations": [item, item]},
        headers={**as_role(Role.REPORTER), "Idempotency-Key": "batch-n"},
    )
    assert [r["status"] for r in response.json()["results"]] == [201, 201], response.text
    with system.engine.connect() as conn:
        rows = conn.execute(sa.select(idempotency_keys.c.key, idempotency_keys.c.fingerprint))
        keys = {key: fingerprint for key, fingerprint in rows}
    [fingerprint] = set(keys.values())
    assert set(keys) == {batch_item_key("batch-n", fingerprint, n) for n in (0, 1)}


def test_a_large_batch_answer_is_streamed_and_a_small_one_sent_whole(
    system: Container, client: TestClient, as_role: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each item of a batch's answer carries its account's whole standing, so an answer can
    run to hundreds of megabytes: past ``STREAM_AFTER_BYTES`` it is sent as its items are
    encoded (no Content-Length), and is the same answer."""
    reporter = as_role(Role.REPORTER)
    items = [{"account_id": f"acct_s{i % 3}", "category": "spam"} for i in range(12)]
    items.insert(5, {"account_id": "acct_s1", "category": "nope"})

    small = client.post("/v1/violations:batch", json={"violations": items[:2]}, headers=reporter)
    monkeypatch.setattr(responses, "STREAM_AFTER_BYTES", 4000)
    large = client.post("/v1/violations:batch", json={"violations": items}, headers=reporter)

    assert small.headers["content-length"] == str(len(small.content))
    assert [r["status"] for r in small.json()["results"]] == [201, 201]
    assert "content-length" not in large.headers
    assert len(large.content) > 4000
    results = large.json()["results"]
    assert [r["status"] for r in results] == [201] * 5 + [422] + [201] * 7
    assert results[5]["error"]["code"] == "validation_failed"
    for account in ("acct_s0", "acct_s1", "acct_s2"):
        mine = [r for r in results if r["account_id"] == account and r["status"] == 201]
        versions = [r["standing"]["version"] for r in mine]
        assert versions == sorted(versions)
        assert versions[-1] == system.store.head(account).version
        recorded = {e.event_id for e in system.store.read_stream(account)}
        assert {e["event_id"] for r in mine for e in r["events"]} <= recorded


def test_a_streamed_answer_cut_off_by_an_error_is_logged_aborted(
    system: Container,
    as_role: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Past its 200 a streamed answer can only stop: the client gets a cut-off body, and the
    access log says so rather than a plain 200."""
    import enforcement.api.routes.reporting as reporting

    answered = 0

    def failing(account_id: str, outcome: Any) -> dict[str, Any]:
        nonlocal answered
        answered += 1
        if answered == 8:
            raise RuntimeError("boom while encoding item 8")
        return violation_json(account_id, outcome)

    monkeypatch.setattr(responses, "STREAM_AFTER_BYTES", 3000)
    monkeypatch.setattr(responses, "CHUNK_BYTES", 100)
    monkeypatch.setattr(reporting, "violation_json", failing)
    items = [{"account_id": "acct_cut", "category": "spam"}] * 12
    reporter = as_role(Role.REPORTER)
    with (
        TestClient(create_app(system), raise_server_exceptions=False) as client,
        caplog.at_level(logging.INFO, logger="enforcement.http"),
    ):
        response = client.post("/v1/violations:batch", json={"violations": items}, headers=reporter)

    assert response.status_code == 200
    assert response.content.startswith(b'{"results":[')
    with pytest.raises(json.JSONDecodeError):  # cut off after the items before the 8th
        json.loads(response.content)
    [record] = [r for r in caplog.records if r.getMessage().startswith("POST")]
    assert record.levelno == logging.WARNING
    assert record.getMessage() == "POST /v1/violations:batch 200 aborted"
    assert record.fields["aborted"] is True  # type: ignore[attr-defined]


def test_a_callers_idempotency_key_may_not_take_one_of_the_services_own(
    system: Container, client: TestClient, as_role: Any
) -> None:
    """The service records a notice's delivery, the gate's reports and a batch's items under
    idempotency keys of its own, in the one key space callers share. A reporter that sent a
    violation under ``notice-delivered:<its notice's event id>:email`` (the response names the
    notice) took the key the worker needs: the notice could never be recorded delivered, and
    was retried until its attempts ran out. Such keys are refused (422), and nothing is
    written."""
    reporter = as_role(Role.REPORTER)
    violation = {"account_id": "acct_keys", "category": "spam"}
    first = client.post("/v1/violations", json=violation, headers=reporter)
    assert first.status_code == 201, first.text
    [notice] = [e for e in first.json()["decisions"] if e["type"] == "NoticeIssued"]
    version = first.json()["standing"]["version"]

    for key in (
        f"notice-delivered:{notice['event_id']}:email",
        f"notice-failed:{notice['event_id']}:email:1",
        f"notice-undeliverable:{notice['event_id']}",
        "gate:sustained_abuse:acct_keys:0",
        "batch:" + "0" * 64,
    ):
        single = client.post(
            "/v1/violations", json=violation, headers={**reporter, "Idempotency-Key": key}
        )
        assert [d["field"].lower() for d in details(single)] == ["header.idempotency-key"]
        batch = client.post(
            "/v1/violations:batch",
            json={"violations": [violation]},
            headers={**reporter, "Idempotency-Key": key},
        )
        assert [d["field"].lower() for d in details(batch)] == ["header.idempotency-key"]
        item = client.post(
            "/v1/violations:batch",
            json={"violations": [{**violation, "idempotency_key": key}]},
            headers=reporter,
        )
        assert item.status_code == 200, item.text
        [result] = item.json()["results"]
        assert result["status"] == 422
        assert [d["field"] for d in result["error"]["details"]] == ["idempotency_key"]

    assert system.store.head("acct_keys").version == version  # nothing was written
    # Only those shapes: a key that merely starts alike is the caller's like any other.
    for key in ("batch:2026-12-05", "gate:42", "notice-board", "my-gate:sustained_abuse:1"):
        fine = client.post(
            "/v1/violations", json=violation, headers={**reporter, "Idempotency-Key": key}
        )
        assert fine.status_code == 201, (key, fine.text)


@pytest.mark.parametrize(
    "email",
    [
        "x,attacker@evil.example",
        '"x"<a@b.example>',
        "Bcc:x@y.example",
        "\x1c@x.example",
        "a\x9b@x.example",
        "a b@c",
    ],
)
def test_a_contact_email_is_one_address(
    system: Container, client: TestClient, as_role: Any, email: str
) -> None:
    """``x,attacker@evil.example`` passed as local@domain and put a second recipient in the
    notice's To (the envelope went to ``x`` alone); quotes, angle brackets, a header-like
    ``Bcc:`` and control characters are no part of one address either. Nothing is written."""
    response = client.put(
        "/v1/accounts/acct_c/contact", json={"email": email}, headers=as_role(Role.OPERATOR)
    )
    assert [d["field"] for d in details(response)] == ["email"]
    with system.engine.connect() as conn:
        assert conn.execute(sa.select(contacts)).all() == []
    fine = client.put(
        "/v1/accounts/acct_c/contact",
        json={"email": "josé+t&s@exämple.de"},
        headers=as_role(Role.OPERATOR),
    )
    assert fine.status_code == 200, fine.text


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/h?token=s3cret x",
        "https://example.com/h\x7f",
        "https://",
        "http://bücher.example/hook",
        "https://example.com/hoök",
    ],
)
def test_a_webhook_url_has_no_space_or_control_character(
    client: TestClient, as_role: Any, url: str
) -> None:
    """http.client refuses such a URL with the URL in its error, which the log keeps for good
    (with any credentials in its query), and cannot send a host or path that is not ASCII (an
    IDN host goes in punycode): refused when the contact is set, not retried until the
    notice's attempts run out."""
    response = client.put(
        "/v1/accounts/acct_w/contact", json={"webhook_url": url}, headers=as_role(Role.OPERATOR)
    )
    assert [d["field"] for d in details(response)] == ["webhook_url"]


def test_a_path_with_a_trailing_slash_is_an_unknown_route_not_a_redirect(
    system: Container, client: TestClient, as_role: Any
) -> None:
    """CONTRACT.md: an unknown route is 404 with the error body. Starlette's default answered
    ``/v1/violations/`` with a 307 to ``/v1/violations`` (built from the request's Host
    header), which a client following redirects posted to again."""
    reporter, auditor = as_role(Role.REPORTER), as_role(Role.AUDITOR)
    for method, path, headers, body in (
        ("POST", "/v1/violations/", reporter, {"account_id": "acct_slash", "category": "spam"}),
        ("GET", "/v1/accounts/acct_slash/standing/", auditor, None),
        ("GET", "/v1/events/", auditor, None),
        ("GET", "/healthz/", {}, None),
    ):
        answer = client.request(
            method,
            path,
            json=body,
            headers={**headers, "Host": "elsewhere.example"},
            follow_redirects=False,
        )
        assert answer.status_code == 404, (path, answer.status_code, answer.headers)
        assert "location" not in answer.headers
        assert answer.json()["error"]["code"] == "not_found"
    assert system.store.head("acct_slash").version == 0


def test_a_cursor_up_to_its_columns_range_is_a_page_and_past_it_a_422(
    client: TestClient, as_role: Any
) -> None:
    """``after_version`` is an INTEGER's range, ``after_position`` a BIGINT's: the largest is an
    (empty) page, one more a 422, not a driver's overflow."""
    auditor = as_role(Role.AUDITOR)
    for path, cursor, largest in (
        ("/v1/accounts/acct_c/events", "after_version", 2**31 - 1),
        ("/v1/events", "after_position", 2**63 - 1),
    ):
        page = client.get(path, params={cursor: largest}, headers=auditor)
        assert page.status_code == 200, (cursor, page.text)
        assert page.json()["events"] == []
        beyond = client.get(path, params={cursor: largest + 1}, headers=auditor)
        assert [d["field"] for d in details(beyond)] == [f"query.{cursor}"]


def test_without_a_cursor_or_limit_a_page_is_the_first_100_or_500_events(
    system: Container, client: TestClient, as_role: Any
) -> None:
    for account in ("acct_p", "acct_q"):
        system.store.append(account, 0, [NewEvent("Noted", {}, system.clock()) for _ in range(300)])
    auditor = as_role(Role.AUDITOR)

    history = client.get("/v1/accounts/acct_p/events", headers=auditor).json()
    feed = client.get("/v1/events", headers=auditor).json()

    assert [e["version"] for e in history["events"]] == list(range(1, 101))
    assert history["next_after_version"] == 100
    assert [e["position"] for e in feed["events"]] == [
        e.position for e in system.store.read_all(0, 600)[:500]
    ]
    assert feed["next_after_position"] == feed["events"][-1]["position"]


def test_verify_answers_where_a_changed_event_breaks_the_chain(
    system: Container, client: TestClient, as_role: Any
) -> None:
    system.store.append("acct_v", 0, [NewEvent("Noted", {}, system.clock()) for _ in range(3)])
    with system.engine.begin() as conn:
        for statement in drop_append_only_ddl(system.engine.dialect.name):
            conn.exec_driver_sql(statement)
        where = (events_table.c.account_id == "acct_v") & (events_table.c.version == 2)
        conn.execute(events_table.update().where(where).values(type="Forged"))

    answer = client.get("/v1/accounts/acct_v/verify", headers=as_role(Role.AUDITOR))

    assert answer.status_code == 200
    body = answer.json()
    assert (body["ok"], body["events"], body["broken_at_version"]) == (False, 2, 2)
    assert set(body) == {"ok", "events", "broken_at_version", "reason"}
    assert "content" in body["reason"]


def test_the_openapi_document_declares_the_token_and_the_roles_each_operation_lets_in(
    client: TestClient, as_role: Any
) -> None:
    """``/docs`` offers "Authorize" and generated clients send the token: each operation but
    ``/healthz`` asks for the bearer scheme, and the roles its description lists are exactly
    those it does not refuse 403 (none of them is refused 401 either; no token is)."""
    document = client.get("/openapi.json").json()
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    headers = {role: as_role(role) for role in Role}
    checked = 0
    needs: set[str] = set()
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            if path == "/healthz":
                assert "security" not in operation
                continue
            assert operation["security"] == [{"bearerAuth": []}], (method, path)
            listed = re.search(r"Roles: ([a-z, ]+)\.$", operation["description"])
            assert listed is not None, (method, path, operation["description"])
            url = re.sub(r"\{[a-z_]+\}", "x", path)
            body = None if method in ("get", "delete") else {}
            assert client.request(method, url, json=body).status_code == 401, (method, path)
            let_in: set[str] = set()
            for role in Role:
                answer = client.request(method, url, json=body, headers=headers[role])
                if answer.status_code != 403:
                    let_in.add(role.value)
                else:
                    needs.add(answer.json()["error"]["details"]["needs"])
            assert let_in == set(listed.group(1).split(", ")), (method, path)
            checked += 1
    assert checked >= 22
    # A 403's details name the permission the role lacks; each is lacking for some role.
    assert needs == {"report", "command", "read", "read_standing", "gate"}


def test_the_bearer_credentials_are_read_as_http_writes_them_and_each_refusal_says_why(
    client: TestClient, as_role: Any
) -> None:
    """The scheme is case-insensitive and one or more spaces part it from the token (RFC 9110
    §11.4); a missing token and an unknown one are both 401, each with its own sentence and the
    challenge, and a 403 names the role and the permission it lacks."""
    path = "/v1/accounts/acct_b/standing"
    token = as_role(Role.AUDITOR)["Authorization"].removeprefix("Bearer ")
    for value in (f"bearer {token}", f"BEARER   {token}"):
        assert client.get(path, headers={"Authorization": value}).status_code == 200, value
    for headers, message in (
        ({}, "A bearer token is required."),
        ({"Authorization": "Bearer    "}, "A bearer token is required."),
        ({"Authorization": f"Basic {token}"}, "A bearer token is required."),
        ({"Authorization": "Bearer enf_unknown"}, "The bearer token is not valid."),
    ):
        refused = client.get(path, headers=headers)
        assert refused.status_code == 401, headers
        assert refused.headers["www-authenticate"] == "Bearer"
        assert refused.json()["error"] == {
            "code": "unauthorized",
            "message": message,
            "details": None,
        }, headers
    forbidden = client.put(
        "/v1/accounts/acct_b/limits",
        json={"requests_per_minute": 60, "tokens_per_day": 1000},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert forbidden.status_code == 403
    assert forbidden.json()["error"] == {
        "code": "forbidden",
        "message": "The auditor role may not do this.",
        "details": {"role": "auditor", "needs": "command"},
    }


def test_a_replaced_principal_is_honoured_for_a_malformed_body_too(client: TestClient) -> None:
    """A test that replaces ``get_principal`` is let in: its malformed body is a 400, as any
    other of its requests is answered past the caller, not the 401 of the real dependency."""
    client.app.dependency_overrides[get_principal] = lambda: Principal(  # type: ignore[attr-defined]
        "tok_t", "t", Role.OPERATOR
    )
    response = client.post(
        "/v1/accounts/acct_m/suspend",
        content=b'{"reason": ',
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "malformed_json"
