"""Schemathesis over ``/openapi.json``: generated requests, valid and invalid, to every operation,
authenticated as admin, must never get a 500 nor a status or body that the schema does not
describe (errors included: every error is the documented ``ErrorBody``)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.generation import GenerationMode

from enforcement.api.app import create_app
from enforcement.bootstrap import bootstrap
from enforcement.gate import GateDecision
from enforcement.gate.decision import REASONS
from enforcement.migrations import upgrade
from enforcement.roles import Role
from enforcement.settings import Settings
from enforcement.tokens import create_token

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.conftest import create_pg_database, drop_pg_database  # noqa: E402

# Examples per operation. PostgreSQL gets fewer: it is there for what only it refuses.
EXAMPLES = {
    ("sqlite", GenerationMode.POSITIVE): 20,
    ("sqlite", GenerationMode.NEGATIVE): 8,
    ("postgres", GenerationMode.POSITIVE): 10,
    ("postgres", GenerationMode.NEGATIVE): 5,
}
CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance]


class Api:
    def __init__(self, backend: str, schema: schemathesis.Schema, token: str) -> None:
        self.backend = backend
        self.schema = schema
        self.headers = {"Authorization": f"Bearer {token}"}


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def api(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """The ASGI app on a fresh database of each backend (they differ: PostgreSQL refuses some
    text that SQLite keeps), and an admin token for it."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('schemathesis') / 'enforcement.db'}"
    else:
        url = create_pg_database()
    upgrade(url)
    # With a webhook secret, so that GET …/webhook-key answers its key, not its 409
    container = bootstrap(Settings(database_url=url, webhook_secret="schemathesis"))
    token = create_token(container.engine, Role.ADMIN, "schemathesis")
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(container))
    yield Api(request.param, schema, token)
    container.close()
    if request.param == "postgres":
        drop_pg_database(url)


def operations(api: Api) -> list[schemathesis.APIOperation]:
    found = [result.ok() for result in api.schema.get_all_operations()]
    assert len(found) >= 23, [op.label for op in found]
    return found


@pytest.mark.parametrize("mode", list(GenerationMode), ids=lambda m: m.value)
def test_no_server_error_and_every_response_is_in_the_schema(
    api: Api, mode: GenerationMode
) -> None:
    failures: list[str] = []
    for operation in operations(api):
        if mode is GenerationMode.NEGATIVE and not (
            list(operation.iter_parameters()) or operation.body
        ):
            continue  # nothing to make invalid (GET /healthz)

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES[api.backend, mode],
            deadline=None,
            database=None,
            derandomize=True,  # the same examples on every run: CI is not a lottery
            suppress_health_check=list(HealthCheck),
        )
        def exercise(case: schemathesis.Case) -> None:
            case.call_and_validate(headers=api.headers, checks=CHECKS)

        try:
            exercise()
        except (Exception, BaseExceptionGroup) as exc:  # report every operation's failures
            failures.append(f"{operation.label}: {exc}")
    assert not failures, "\n\n".join(failures)


def test_the_schema_declares_the_error_body(api: Api) -> None:
    document = api.schema.raw_schema
    error_body = document["components"]["schemas"]["ErrorBody"]
    assert error_body["required"] == ["error"]
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            if path == "/healthz":
                continue
            expected = {"401", "403", "422", "503"}
            if method != "get":
                expected |= {"400", "413"}
            for status in expected:
                content = operation["responses"][status]["content"]["application/json"]
                assert "#/components/schemas/ErrorBody" in json.dumps(content["schema"]), (
                    method,
                    path,
                    status,
                )
    assert "HTTPValidationError" not in json.dumps(document)


def test_the_schema_documents_what_the_routes_answer(api: Api) -> None:
    """Not FastAPI's generic object: the shapes of CONTRACT.md, which the conformance check
    above then holds every answer to."""
    paths = api.schema.raw_schema["paths"]

    def answer(path: str, method: str, status: str) -> str:
        content = paths[path][method]["responses"][status]["content"]["application/json"]
        return str(content["schema"].get("$ref", content["schema"]))

    assert answer("/v1/violations", "post", "201").endswith("/ViolationRecordedOut")
    assert answer("/v1/violations", "post", "200").endswith("/ViolationRecordedOut")
    assert answer("/v1/accounts/{account_id}/standing", "get", "200").endswith("/StandingOut")
    assert answer("/v1/events", "get", "200").endswith("/FeedOut")
    assert answer("/v1/accounts/{account_id}/suspend", "post", "200").endswith("/AccountCommandOut")
    assert answer("/v1/violations:batch", "post", "200").endswith("/BatchOut")
    assert answer("/v1/abuse-reports", "post", "202").endswith("/AbuseReportOut")
    assert answer("/v1/accounts/{account_id}/appeals", "post", "200").endswith("/AppealFiledOut")
    assert answer("/v1/accounts/{account_id}/contact", "put", "200").endswith("/ContactOut")
    resent = answer("/v1/accounts/{account_id}/notices/{notice_id}/resend", "post", "200")
    assert resent.endswith("/NoticeResentOut")
    notice_resent = api.schema.raw_schema["components"]["schemas"]["NoticeResentOut"]
    assert set(notice_resent["required"]) == {"notice_id", "events", "standing"}
    standing = api.schema.raw_schema["components"]["schemas"]["StandingOut"]
    assert set(standing["required"]) >= {"status", "strikes", "suspension", "version", "as_of"}


def test_the_schema_documents_the_gates_decision_as_the_gate_answers_it(api: Api) -> None:
    """A gateway is written against this document, and schemathesis, with an admin token the
    gate refuses, never sees an allowed check nor a denial: each field of the decision's JSON,
    with its type, and which status answers what."""
    document = api.schema.raw_schema
    operation = document["paths"]["/v1/gate/check"]["post"]
    assert operation["tags"] == ["gate"]
    responses = operation["responses"]

    def schema(status: str) -> str:
        return json.dumps(responses[status]["content"]["application/json"]["schema"])

    decision_ref = '"#/components/schemas/GateDecisionOut"'
    assert schema("200") == schema("429") == f'{{"$ref": {decision_ref}}}'
    assert decision_ref in schema("403") and "/ErrorBody" in schema("403")  # a role refused
    assert responses["200"]["description"] == "Allowed (and counted)."
    for status in ("403", "429"):
        assert "429 for rate or token quota" in responses[status]["description"], status
        assert "403 when the account is suspended" in responses[status]["description"], status
    assert responses["403"]["description"].startswith("The token's role may not check, or ")

    decision = GateDecision(True, "ok", 10, 9, 6.0, 1000, 990, 3600.5, 0.0).to_json()
    json_type = {bool: "boolean", int: "integer", float: "number", str: "string"}
    out = document["components"]["schemas"]["GateDecisionOut"]
    assert out["required"] == list(decision)
    assert {name: field["type"] for name, field in out["properties"].items()} == {
        name: json_type[type(value)] for name, value in decision.items()
    }
    assert out["properties"]["reason"]["enum"] == list(REASONS)
