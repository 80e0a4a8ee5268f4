"""``enforcement/api/documents.py``: the OpenAPI document declares every field of what the
routes answer, and each one it requires (Schemathesis's conformance check holds an answer only to
the fields declared: one left out of a model goes unseen there)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi.testclient import TestClient

from enforcement.api.app import create_app
from enforcement.bootstrap import Container
from enforcement.roles import Role
from enforcement.tokens import create_token


def mismatches(value: Any, schema: dict[str, Any], document: dict[str, Any], at: str) -> list[str]:
    """Where ``value``'s objects have a field ``schema`` does not declare, or lack one it
    requires (``$ref``s followed; ``anyOf``: the branch of the value's kind)."""
    while "$ref" in schema or "anyOf" in schema:
        if "$ref" in schema:
            schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
        else:
            kind = "null" if value is None else "object" if isinstance(value, dict) else "other"
            branches = [s for s in schema["anyOf"] if s.get("type", "other") == kind]
            schema = branches[0] if branches else schema["anyOf"][0]
    found: list[str] = []
    if isinstance(value, dict) and "properties" in schema:
        declared = schema["properties"]
        found += [f"{at}.{name}: not declared" for name in set(value) - set(declared)]
        found += [
            f"{at}.{name}: required, absent"
            for name in set(schema.get("required", [])) - set(value)
        ]
        for name in set(value) & set(declared):
            found += mismatches(value[name], declared[name], document, f"{at}.{name}")
    elif isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            found += mismatches(item, schema["items"], document, f"{at}[{i}]")
    return found


def test_every_field_answered_is_declared_and_every_required_one_answered(
    system: Container,
) -> None:
    headers = {"Authorization": f"Bearer {create_token(system.engine, Role.ADMIN, 'a')}"}
    later = (system.clock() + timedelta(days=3)).isoformat()
    account = "/v1/accounts/acct_d"
    with TestClient(create_app(system)) as client:
        document = client.get("/openapi.json").json()
        seen: list[tuple[str, str, Any]] = []

        def call(
            method: str, path: str, template: str, body: Any = None, key: str | None = None
        ) -> Any:
            keyed = {"Idempotency-Key": key} if key else {}
            answer = client.request(method, path, json=body, headers={**headers, **keyed})
            assert answer.status_code < 300, (method, path, answer.text)
            operation = document["paths"][template][method.lower()]
            schema = operation["responses"][str(answer.status_code)]["content"]
            seen.append((f"{method} {path}", schema["application/json"]["schema"], answer.json()))
            return answer.json()

        violation = {"account_id": "acct_d", "category": "spam", "source": "t"}
        for _ in range(2):  # a warning, then a throttle: a remediation open, a throttle active
            recorded = call("POST", "/v1/violations", "/v1/violations", violation)
        t = "/v1/accounts/{account_id}"
        throttle = recorded["standing"]["active_throttles"][0]["throttle_id"]
        call("DELETE", f"{account}/throttles/{throttle}", f"{t}/throttles/{{throttle_id}}")
        for _ in range(2):  # 201, then 200: replayed
            call("POST", "/v1/violations", "/v1/violations", violation, "v")
        call(
            "PUT",
            f"{account}/adult-content-approval",
            f"{t}/adult-content-approval",
            {"approved": True},
        )
        call("POST", f"{account}/suspend", f"{t}/suspend", {"until": later})
        decision = recorded["decisions"][0]["event_id"]
        call("POST", f"{account}/appeals", f"{t}/appeals", {"decision_event_id": decision})
        call("PUT", f"{account}/contact", f"{t}/contact", {"email": "d@example.com"})
        standing = call("GET", f"{account}/standing", f"{t}/standing")
        call("GET", f"{account}/events", f"{t}/events")
        call("GET", f"{account}/verify", f"{t}/verify")
        call("GET", "/v1/events", "/v1/events")
        refused = {**violation, "occurred_at": later}  # in the future: its item's error
        call("POST", "/v1/violations:batch", "/v1/violations:batch", {"violations": [refused]})
        abuse = {"reported_account_id": "acct_d", "category": "spam"}
        for _ in range(2):  # 202, then 200: replayed
            call("POST", "/v1/abuse-reports", "/v1/abuse-reports", abuse, "a")

    # a model for each answer (not FastAPI's generic object), each of them called above
    assert [what for what, schema, _ in seen if "$ref" not in schema] == []
    assert {(what.split()[0], str(schema)) for what, schema, _ in seen} >= {
        ("POST", "{'$ref': '#/components/schemas/ViolationRecordedOut'}"),
        ("POST", "{'$ref': '#/components/schemas/AbuseReportOut'}"),
    }
    # every model of an answer has a value to be held to
    assert standing["open_remediations"] and recorded["standing"]["active_throttles"]
    assert standing["suspension"] is not None and standing["open_appeals"] == 1
    assert document["components"]["securitySchemes"]["bearerAuth"]["type"] == "http"
    batch = document["paths"]["/v1/violations:batch"]["post"]["description"]
    assert batch.startswith("Up to 1000 violations") and batch.endswith(
        "Roles: reporter, operator, admin."
    )
    assert [
        m for what, schema, value in seen for m in mismatches(value, schema, document, what)
    ] == []
