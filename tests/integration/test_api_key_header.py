"""The ``Idempotency-Key`` header is text sent as UTF-8, as a batch item's ``idempotency_key`` is
(JSON): the same key either way is one key, its 200 characters are characters (not octets), and
octets that are not UTF-8 are a 422. HTTP gives header values as octets, which the frameworks
read one character per octet (Latin-1): ``clé`` sent as UTF-8 was the key ``clÃ©``, another key
than the item's ``clé``, and 200 ``é`` were 400 characters. (Octets that are not UTF-8 are
tested in tests/e2e/test_reporting.py: the test client re-encodes a header's value as UTF-8.)"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from enforcement.api.app import create_app
from enforcement.api.deps import get_principal
from enforcement.bootstrap import Container
from enforcement.roles import Role
from enforcement.tokens import Principal

ACCOUNT = "acct_key"
REPORT = {"account_id": ACCOUNT, "category": "spam"}
KEY = "clé-🔑-キー"  # two, three and four octets a character in UTF-8


@pytest.fixture(params=["shortcut", "route"])
def way(request: pytest.FixtureRequest) -> str:
    """Which way a usual ``POST /v1/violations`` goes: ``api.shortcuts`` or FastAPI's route."""
    return str(request.param)


@pytest.fixture
def client(system: Container, way: str, answered: list[bool]) -> Iterator[TestClient]:
    app = create_app(system)
    if way == "route":  # an override turns the shortcut off
        app.dependency_overrides[get_principal] = lambda: Principal("tok_r", "r", Role.REPORTER)
    with TestClient(app) as test_client:
        yield test_client


def single(client: TestClient, reporter: dict[str, str], key: bytes) -> tuple[int, Any]:
    response = client.post(
        "/v1/violations", json=REPORT, headers={**reporter, "Idempotency-Key": key}
    )
    return response.status_code, response.json()


def item(client: TestClient, reporter: dict[str, str], key: str) -> tuple[int, Any]:
    response = client.post(
        "/v1/violations:batch",
        json={"violations": [{**REPORT, "idempotency_key": key}]},
        headers=reporter,
    )
    assert response.status_code == 200, response.text
    [result] = response.json()["results"]
    return result["status"], result


@pytest.mark.parametrize("header_first", [True, False], ids=["header-item", "item-header"])
def test_the_same_key_in_the_header_and_in_a_batch_item_is_one_key(
    system: Container,
    client: TestClient,
    reporter: dict[str, str],
    answered: list[bool],
    way: str,
    header_first: bool,
) -> None:
    by_header = lambda: single(client, reporter, KEY.encode())  # noqa: E731
    by_item = lambda: item(client, reporter, KEY)  # noqa: E731
    first, retry = (by_header, by_item) if header_first else (by_item, by_header)

    status, recorded = first()
    assert status == 201, recorded
    status, again = retry()
    assert status == 200, again
    assert again["violation_id"] == recorded["violation_id"]
    assert system.store.head(ACCOUNT).version == len(recorded["events"])
    assert answered == [way == "shortcut"]  # the single report went the way meant


def test_the_200_characters_of_a_header_key_are_characters(
    system: Container, client: TestClient, reporter: dict[str, str], answered: list[bool], way: str
) -> None:
    longest = "é" * 200  # 400 octets
    status, recorded = single(client, reporter, longest.encode())
    assert status == 201, recorded
    assert item(client, reporter, longest)[0] == 200  # the same key

    status, refused = single(client, reporter, ("é" * 201).encode())
    assert status == 422, refused
    assert refused["error"]["code"] == "validation_failed"
    [detail] = refused["error"]["details"]
    assert detail["field"].lower().endswith("idempotency-key")
    assert system.store.head(ACCOUNT).version == len(recorded["events"])
    assert answered == [way == "shortcut", False]  # too long: the route answers it


# Each write that takes the header: (method, path, body).
WRITES = {
    "violation": ("POST", "/v1/violations", REPORT),
    "batch": ("POST", "/v1/violations:batch", {"violations": [REPORT]}),
    "abuse report": (
        "POST",
        "/v1/abuse-reports",
        {"reported_account_id": ACCOUNT, "category": "spam"},
    ),
}


@pytest.mark.parametrize("write", sorted(WRITES))
def test_a_longest_non_ascii_header_key_replays_on_every_write(
    system: Container, client: TestClient, reporter: dict[str, str], write: str
) -> None:
    method, path, body = WRITES[write]
    headers = {**reporter, "Idempotency-Key": ("🔑" * 200).encode()}  # 800 octets
    first = client.request(method, path, json=body, headers=headers)
    assert first.status_code in (200, 201, 202), first.text
    version = system.store.head(ACCOUNT).version
    assert version > 0

    again = client.request(method, path, json=body, headers=headers)
    assert again.status_code == 200, again.text
    if write == "batch":
        assert [r["status"] for r in again.json()["results"]] == [200]
    assert system.store.head(ACCOUNT).version == version  # a replay: nothing new
