"""Request input at the API's edge (CONTRACT.md): times carry their offset, and a 422 lists the
allowed values of a closed set as a list, for every such field alike."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from enforcement.api.app import create_app
from enforcement.bootstrap import Container
from enforcement.roles import Role
from enforcement.tokens import create_token


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
