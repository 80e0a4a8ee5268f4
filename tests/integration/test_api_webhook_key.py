"""``GET /v1/accounts/{id}/webhook-key``: an account's webhook key, for an operator to hand to
the account's owner; operators and admins only, never cached, and a 409 when the service
has no webhook secret."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from test_service_support import FakeClock

from enforcement.api.app import create_app
from enforcement.bootstrap import Container, bootstrap
from enforcement.roles import Role
from enforcement.settings import Settings
from enforcement.tokens import create_token
from tests.unit.test_webhook import KEY_OF_ACCT_42

PATH = "/v1/accounts/acct_42/webhook-key"


@pytest.fixture
def signing(database_url: str) -> Iterator[Container]:
    """The application with ``ENFORCEMENT_WEBHOOK_SECRET=s3cret``."""
    settings = Settings(database_url=database_url, webhook_secret="s3cret")
    container = bootstrap(settings, clock=FakeClock())
    yield container
    container.close()


def headers_of(container: Container, role: Role) -> dict[str, str]:
    return {"Authorization": f"Bearer {create_token(container.engine, role, role.value)}"}


def test_operators_and_admins_get_the_accounts_key_and_no_one_else(signing: Container) -> None:
    with TestClient(create_app(signing)) as client:
        for role in (Role.OPERATOR, Role.ADMIN):
            answer = client.get(PATH, headers=headers_of(signing, role))
            assert answer.status_code == 200, (role, answer.text)
            assert answer.json() == {"account_id": "acct_42", "webhook_key": KEY_OF_ACCT_42}
            assert answer.headers["cache-control"] == "no-store"
        for role in (Role.REPORTER, Role.AUDITOR, Role.GATEWAY):
            answer = client.get(PATH, headers=headers_of(signing, role))
            assert answer.status_code == 403, (role, answer.text)
            assert answer.json()["error"]["code"] == "forbidden"
            assert "webhook_key" not in answer.text and KEY_OF_ACCT_42 not in answer.text
        assert client.get(PATH).status_code == 401
        # another account, another key; an id the contract does not allow is a 422
        operator = headers_of(signing, Role.OPERATOR)
        other = client.get("/v1/accounts/acct_43/webhook-key", headers=operator).json()
        assert other["webhook_key"] != KEY_OF_ACCT_42
        assert client.get("/v1/accounts/bad%20id/webhook-key", headers=operator).status_code == 422
    assert signing.store.head("acct_42").version == 0  # reading a key records nothing


def test_without_a_webhook_secret_the_answer_says_so(system: Container) -> None:
    with TestClient(create_app(system)) as client:
        answer = client.get(PATH, headers=headers_of(system, Role.OPERATOR))
        assert answer.status_code == 409
        assert answer.json()["error"]["code"] == "webhook_secret_unset"
        assert "ENFORCEMENT_WEBHOOK_SECRET is unset" in answer.json()["error"]["message"]
        # a role that may not ask is told that first
        assert client.get(PATH, headers=headers_of(system, Role.AUDITOR)).status_code == 403


def test_the_openapi_document_describes_the_key_and_who_may_read_it(signing: Container) -> None:
    with TestClient(create_app(signing)) as client:
        document = client.get("/openapi.json").json()
    operation = document["paths"]["/v1/accounts/{account_id}/webhook-key"]["get"]
    assert operation["description"].endswith("Roles: operator, admin.")
    schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/WebhookKeyOut"}
    assert document["components"]["schemas"]["WebhookKeyOut"]["required"] == [
        "account_id",
        "webhook_key",
    ]
    assert "ENFORCEMENT_WEBHOOK_SECRET" in operation["responses"]["409"]["description"]
