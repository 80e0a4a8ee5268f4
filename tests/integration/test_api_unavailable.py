"""A database that cannot be reached is a 503 with the error body, never a 500 or a hang."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from enforcement.api.app import create_app
from enforcement.api.deps import get_principal
from enforcement.bootstrap import bootstrap
from enforcement.roles import Role
from enforcement.settings import Settings
from enforcement.tokens import Principal

UNREACHABLE = {
    "postgres": "postgresql+psycopg://nobody:nothing@127.0.0.1:1/none?connect_timeout=2",
    "sqlite": "sqlite:///{tmp}/no/such/directory/enforcement.db",
}


@pytest.fixture(params=sorted(UNREACHABLE))
def app(request: pytest.FixtureRequest, tmp_path: Path) -> FastAPI:
    return create_app(
        bootstrap(Settings(database_url=UNREACHABLE[request.param].format(tmp=tmp_path)))
    )


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    body = response.json()
    assert list(body) == ["error"]
    assert body["error"]["code"] == "dependency_unavailable"
    assert body["error"]["details"] is None
    # A write says it was not recorded; a read, which records nothing, to try again.
    said = "try again shortly." if response.request.method == "GET" else "nothing was written."
    assert body["error"]["message"].endswith(f"; {said}"), body


def test_a_token_that_cannot_be_checked_is_503(client: TestClient) -> None:
    assert_unavailable(client.get("/v1/events", headers={"Authorization": "Bearer enf_x"}))


def test_writes_and_reads_are_503(app: FastAPI, client: TestClient) -> None:
    app.dependency_overrides[get_principal] = lambda: Principal("tok_t", "test", Role.ADMIN)

    assert_unavailable(
        client.post("/v1/violations", json={"account_id": "acct_1", "category": "spam"})
    )
    assert_unavailable(client.post("/v1/accounts/acct_1/suspend", json={"reason": "x"}))
    assert_unavailable(client.put("/v1/accounts/acct_1/contact", json={"email": "a@b.c"}))
    assert_unavailable(client.get("/v1/accounts/acct_1/standing"))
    assert_unavailable(client.get("/v1/accounts/acct_1/events"))
    assert_unavailable(client.get("/v1/accounts/acct_1/verify"))


def test_health_is_503_while_the_database_cannot_be_reached(client: TestClient) -> None:
    # CONTRACT.md: 200 "once the API can serve"; a probe must not send traffic here meanwhile.
    response = client.get("/healthz")
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "dependency_unavailable"


def test_a_database_that_accepts_and_never_answers_is_503_not_a_hang(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A server that takes the connection and says nothing (a stuck proxy, a frozen host):
    PostgreSQL engines connect with a timeout unless the URL gives one, so /healthz answers
    503 instead of holding the request for as long as the kernel keeps the socket."""
    import socket
    import time

    from events import dialects

    monkeypatch.setattr(dialects, "POSTGRES_CONNECT_TIMEOUT_SECONDS", 1)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        url = f"postgresql+psycopg://u:p@127.0.0.1:{port}/x"
        with TestClient(
            create_app(bootstrap(Settings(database_url=url))), raise_server_exceptions=False
        ) as client:
            started = time.monotonic()
            response = client.get("/healthz")
            waited = time.monotonic() - started
    assert response.status_code == 503, response.text
    assert waited < 5
