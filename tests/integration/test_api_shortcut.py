"""``POST /v1/violations``'s usual request is answered by ``api.shortcuts.ReportShortcut``, the
same as the route answers it; every other request still goes through FastAPI."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.exc import OperationalError

from enforcement.api.app import create_app
from enforcement.api.deps import get_principal
from enforcement.bootstrap import Container
from enforcement.roles import Role
from enforcement.tokens import Principal, create_token
from events import IdempotencyConflict

VIOLATION = {"account_id": "acct_s", "category": "spam", "source": "test"}


@pytest.fixture
def client(system: Container, answered: list[bool]) -> Iterator[TestClient]:
    with TestClient(create_app(system), raise_server_exceptions=False) as test_client:
        yield test_client


def test_the_first_request_goes_the_usual_way_and_the_next_one_the_short_way_alike(
    system: Container, client: TestClient, answered: list[bool]
) -> None:
    headers = {"Authorization": f"Bearer {create_token(system.engine, Role.REPORTER, 'r')}"}
    by_route = client.post("/v1/violations", json=VIOLATION, headers=headers)
    shortened = client.post(
        "/v1/violations", json={**VIOLATION, "account_id": "acct_t"}, headers=headers
    )

    assert answered == [False, True]  # the token was not cached yet, then it was
    assert by_route.status_code == shortened.status_code == 201
    first, second = by_route.json(), shortened.json()
    assert list(first) == list(second)
    assert [e["type"] for e in first["events"]] == [e["type"] for e in second["events"]]
    assert second["account_id"] == "acct_t"
    assert second["standing"]["account_id"] == "acct_t"
    assert second["events"][0]["metadata"]["actor"] == "reporter:r"
    assert shortened.headers["content-type"] == by_route.headers["content-type"]
    assert shortened.headers["x-request-id"].startswith("req_")
    assert system.store.head("acct_t").version == len(second["events"])


def test_an_idempotent_replay_and_a_reused_key_are_answered_as_by_the_route(
    system: Container, client: TestClient, reporter: dict[str, str], answered: list[bool]
) -> None:
    keyed = {**reporter, "Idempotency-Key": "key-1", "X-Request-Id": "req_mine"}
    first = client.post("/v1/violations", json=VIOLATION, headers=keyed)
    again = client.post("/v1/violations", json=VIOLATION, headers=keyed)
    reused = client.post("/v1/violations", json={**VIOLATION, "severity": "high"}, headers=keyed)

    assert answered == [True, True, True]
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["events"] == first.json()["events"]
    assert again.headers["x-request-id"] == "req_mine"
    assert reused.status_code == 409
    assert reused.json()["error"]["code"] == "idempotency_key_reused"
    assert system.store.head("acct_s").version == len(first.json()["events"])


UNUSUAL: dict[str, tuple[dict[str, Any], int, str]] = {
    # name: (request keyword arguments, the route's status, its error code)
    "a body that does not validate": ({"json": {"account_id": "acct_s"}}, 422, "validation_failed"),
    "an unknown category": (
        {"json": {**VIOLATION, "category": "nope"}},
        422,
        "validation_failed",
    ),
    "malformed JSON": ({"content": b'{"account_id": '}, 400, "malformed_json"),
    "NaN, which is not JSON": (
        {"content": b'{"account_id": "acct_s", "category": "spam", "severity": NaN}'},
        400,
        "malformed_json",
    ),
    "a member named twice": (
        {"content": b'{"account_id": "acct_s", "category": "spam", "category": "csam"}'},
        400,
        "malformed_json",
    ),
    "a body that is not UTF-8": (
        {"content": '{"account_id": "acct_s", "category": "spam"}'.encode("utf-16")},
        400,
        "malformed_json",
    ),
    "a JSON array": ({"json": [VIOLATION]}, 422, "validation_failed"),
    "an Idempotency-Key over 200 characters": (
        {"json": VIOLATION, "headers": {"Idempotency-Key": "k" * 201}},
        422,
        "validation_failed",
    ),
    "an extra field": ({"json": {**VIOLATION, "extra": 1}}, 422, "validation_failed"),
    "an empty Idempotency-Key": (
        {"json": VIOLATION, "headers": {"Idempotency-Key": ""}},
        422,
        "validation_failed",
    ),
}


@pytest.mark.parametrize("case", sorted(UNUSUAL))
def test_an_unusual_request_goes_the_usual_way(
    system: Container,
    client: TestClient,
    reporter: dict[str, str],
    answered: list[bool],
    case: str,
) -> None:
    kwargs, status, code = UNUSUAL[case]
    headers = {**reporter, "Content-Type": "application/json", **kwargs.get("headers", {})}
    response = client.post(
        "/v1/violations", **{k: v for k, v in kwargs.items() if k != "headers"}, headers=headers
    )

    assert answered == [False]
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert system.store.head("acct_s").version == 0


def test_other_callers_and_content_types_go_the_usual_way(
    system: Container, client: TestClient, reporter: dict[str, str], answered: list[bool]
) -> None:
    auditor = {"Authorization": f"Bearer {create_token(system.engine, Role.AUDITOR, 'a')}"}
    assert client.get("/v1/accounts/acct_none/standing", headers=auditor).status_code == 200
    wrong_role = client.post("/v1/violations", json=VIOLATION, headers=auditor)  # cached token
    no_token = client.post("/v1/violations", json=VIOLATION)
    unknown = client.post(
        "/v1/violations", json=VIOLATION, headers={"Authorization": "Bearer enf_unknown"}
    )
    as_text = client.post(
        "/v1/violations",
        content=b'{"account_id": "acct_s", "category": "spam"}',
        headers={**reporter, "Content-Type": "text/plain"},
    )

    assert answered == [False, False, False, False]
    assert (wrong_role.status_code, no_token.status_code, unknown.status_code) == (403, 401, 401)
    # A body that is not declared JSON: the route's answer (``answered``), and nothing written.
    assert as_text.status_code == 415, as_text.text
    assert as_text.json()["error"]["code"] == "unsupported_media_type"
    assert system.store.head("acct_s").version == 0


def test_a_header_sent_twice_goes_the_usual_way_which_reads_the_first(
    system: Container, client: TestClient, reporter: dict[str, str], answered: list[bool]
) -> None:
    auditor = f"Bearer {create_token(system.engine, Role.AUDITOR, 'a')}"
    assert client.get("/v1/accounts/acct_none/standing", headers={"Authorization": auditor})
    json_type = ("Content-Type", "application/json")
    body = {"content": b'{"account_id": "acct_s", "category": "spam"}'}
    tokens = [("Authorization", auditor), ("Authorization", reporter["Authorization"])]
    types = [("Content-Type", "text/plain"), json_type]
    keyed = [*reporter.items(), json_type, ("Idempotency-Key", "k1")]
    keys = [*keyed, ("Idempotency-Key", "k2")]

    by_auditor = client.post("/v1/violations", **body, headers=[*tokens, json_type])
    as_text = client.post("/v1/violations", **body, headers=[*reporter.items(), *types])
    first = client.post("/v1/violations", **body, headers=keys)
    replayed = client.post("/v1/violations", **body, headers=keyed)

    assert answered == [False, False, False, True]
    assert (by_auditor.status_code, as_text.status_code) == (403, 415)
    assert (first.status_code, replayed.status_code) == (201, 200)  # the key was k1


# Content-Type: (whether the shortcut answers, the status either way answers)
CONTENT_TYPES: dict[str | None, tuple[bool, int]] = {
    "application/json": (True, 201),
    "application/json; charset=utf-8": (True, 201),
    "Application/JSON": (True, 201),
    "application/merge-patch+json": (False, 201),  # JSON to FastAPI: the route reads it
    "text/plain": (False, 415),
    "application/x-www-form-urlencoded": (False, 415),  # what ``curl -d`` sends
    None: (False, 415),  # not read as JSON: FastAPI reads JSON only when it is told so
}


@pytest.mark.parametrize("content_type", list(CONTENT_TYPES), ids=str)
def test_a_json_body_is_answered_alike_whichever_way_its_content_type_takes(
    system: Container,
    client: TestClient,
    reporter: dict[str, str],
    answered: list[bool],
    content_type: str | None,
) -> None:
    shortcut, status = CONTENT_TYPES[content_type]
    typed = {"Content-Type": content_type} if content_type is not None else {}
    response = client.post(
        "/v1/violations",
        content=b'{"account_id": "acct_s", "category": "spam", "source": "test"}',
        headers={**reporter, **typed},
    )
    # The same request, by the route (an override turns the shortcut off).
    client.app.dependency_overrides[get_principal] = lambda: Principal(  # type: ignore[attr-defined]
        "tok_t", "r", Role.REPORTER
    )
    by_route = client.post(
        "/v1/violations",
        content=b'{"account_id": "acct_r", "category": "spam", "source": "test"}',
        headers={**reporter, **typed},
    )

    assert answered == [shortcut, False]
    assert (response.status_code, by_route.status_code) == (status, status), response.text
    if status == 201:
        assert list(response.json()) == list(by_route.json())
        assert response.headers["content-type"] == by_route.headers["content-type"]
    else:
        assert response.json() == by_route.json()
        assert system.store.head("acct_s").version == system.store.head("acct_r").version == 0


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (IdempotencyConflict("key-1"), 409, "idempotency_key_reused"),
        (OperationalError("SELECT 1", {}, Exception("down")), 503, "dependency_unavailable"),
        (RuntimeError("a bug"), 500, "internal_error"),
    ],
    ids=["idempotency", "database-down", "unexpected"],
)
def test_an_error_of_the_use_case_gets_the_applications_own_answer(
    system: Container,
    client: TestClient,
    reporter: dict[str, str],
    answered: list[bool],
    monkeypatch: pytest.MonkeyPatch,
    error: Exception,
    status: int,
    code: str,
) -> None:
    def fail(*_: Any) -> None:
        raise error

    monkeypatch.setattr(system.service, "report_violation", fail)
    response = client.post("/v1/violations", json=VIOLATION, headers=reporter)

    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert response.headers["x-request-id"].startswith("req_")
    assert answered in ([True], [])  # [] when it propagated to ServerErrorMiddleware (a 500)


def test_a_dependency_override_is_honoured(
    system: Container, client: TestClient, reporter: dict[str, str], answered: list[bool]
) -> None:
    client.app.dependency_overrides[get_principal] = lambda: Principal(  # type: ignore[attr-defined]
        "tok_t", "override", Role.REPORTER
    )
    response = client.post("/v1/violations", json=VIOLATION, headers=reporter)

    assert answered == [False]
    assert response.status_code == 201
    assert response.json()["events"][0]["metadata"]["actor"] == "reporter:override"


@pytest.mark.parametrize("way", ["shortcut", "route"])
def test_an_unexpected_error_is_a_500_with_the_request_id_either_way(
    system: Container,
    client: TestClient,
    reporter: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    way: str,
) -> None:
    def fail(*_: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(system.service, "report_violation", fail)
    if way == "route":
        client.app.dependency_overrides[get_principal] = lambda: Principal(  # type: ignore[attr-defined]
            "tok_t", "override", Role.REPORTER
        )
    response = client.post(
        "/v1/violations", json=VIOLATION, headers={**reporter, "X-Request-Id": "req_bug"}
    )

    assert response.status_code == 500
    assert response.json() == {
        "error": {
            "code": "internal_error",
            "message": "An unexpected error occurred.",
            "details": None,
        }
    }
    assert response.headers["x-request-id"] == "req_bug"


def test_the_shortcut_takes_the_path_the_application_routes_on(
    system: Container, answered: list[bool]
) -> None:
    token = create_token(system.engine, Role.REPORTER, "r")
    headers = {"Authorization": f"Bearer {token}"}
    # Mounted at /v1, the application sees /violations for /v1/violations: no such route.
    with TestClient(create_app(system)) as plain:
        plain.get("/v1/accounts/acct_none/standing", headers=headers)  # the token, cached
    with TestClient(create_app(system), root_path="/v1") as mounted:
        assert mounted.post("/v1/violations", json=VIOLATION, headers=headers).status_code == 404
    assert system.store.head("acct_s").version == 0
    # Behind a prefix, its route is still its route, and the usual request takes the shortcut.
    with TestClient(create_app(system), root_path="/enforcement") as prefixed:
        response = prefixed.post("/enforcement/v1/violations", json=VIOLATION, headers=headers)
        assert response.status_code == 201, response.text
    assert answered == [True]


def test_behind_a_prefix_the_batch_route_still_takes_4_mib(system: Container) -> None:
    """The body limit goes by the path the application routes on, as the shortcut does: behind
    a prefix the batch route takes more than 64 KiB, and a path that ends like it does not."""
    token = create_token(system.engine, Role.REPORTER, "r")
    headers = {"Authorization": f"Bearer {token}"}
    item = {**VIOLATION, "description": "d" * 3000}
    batch = {"violations": [item] * 30}  # about 100 KB
    with TestClient(create_app(system), root_path="/enforcement") as prefixed:
        accepted = prefixed.post("/enforcement/v1/violations:batch", json=batch, headers=headers)
        elsewhere = prefixed.post("/enforcement/v1/x/violations:batch", json=batch, headers=headers)
    assert accepted.status_code == 200, accepted.text
    assert [r["status"] for r in accepted.json()["results"]] == [201] * 30
    assert elsewhere.status_code == 413, elsewhere.text


def test_an_unexpected_error_still_reaches_the_server(
    system: Container, reporter: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """After its 500 the error propagates (uvicorn logs it; telemetry sees it), either way."""

    def fail(*_: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(system.service, "report_violation", fail)
    with TestClient(create_app(system)) as strict, pytest.raises(RuntimeError, match="a bug"):
        strict.post("/v1/violations", json=VIOLATION, headers=reporter)
