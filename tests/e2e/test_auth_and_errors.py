"""Who may do what (401/403 for every class of endpoint), every error class with its exact body,
request ids on every response, and that a failed request writes nothing."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.harness import ROLES, Server, assert_error, requested_events

ACCT = "acct_auth"
# POLICY.md's categories, written out here so that the API's list is checked independently.
CATEGORIES = sorted(
    [
        "csam",
        "weapons_development",
        "violence_facilitation",
        "illegal_content",
        "ip_infringement",
        "spam",
        "phishing",
        "cyberweapons",
        "disinformation",
        "safety_circumvention",
        "personal_data_harvesting",
        "impersonation",
        "surveillance",
        "rate_limit_circumvention",
        "sustained_abuse",
        "unapproved_adult_content",
        "missing_content_filtering",
        "safety_probing",
        "model_extraction",
        "training_data_extraction",
    ]
)

# One representative endpoint per class, and the roles CONTRACT.md lets through.
ENDPOINTS = {
    "report": ("POST", "/v1/violations", {"account_id": ACCT, "category": "spam"}),
    "abuse_report": (
        "POST",
        "/v1/abuse-reports",
        {"reported_account_id": ACCT, "category": "spam"},
    ),
    "command": (
        "PUT",
        f"/v1/accounts/{ACCT}/limits",
        {"requests_per_minute": 60, "tokens_per_day": 1000},
    ),
    "events": ("GET", f"/v1/accounts/{ACCT}/events", None),
    "feed": ("GET", "/v1/events", None),
    "verify": ("GET", f"/v1/accounts/{ACCT}/verify", None),
    "standing": ("GET", f"/v1/accounts/{ACCT}/standing", None),
}
ALLOWED = {
    "report": {"reporter", "operator", "admin"},
    "abuse_report": {"reporter", "operator", "admin"},
    "command": {"operator", "admin"},
    "events": {"operator", "auditor", "admin"},
    "feed": {"operator", "auditor", "admin"},
    "verify": {"operator", "auditor", "admin"},
    "standing": {"operator", "auditor", "gateway", "admin"},
}


def call(client: httpx.Client, endpoint: str) -> httpx.Response:
    method, path, body = ENDPOINTS[endpoint]
    return client.request(method, path, json=body)


@pytest.fixture
def unchanged(server: Server) -> Iterator[None]:
    """The test's requests must not record anything."""
    admin = server.client("admin")
    before = requested_events(admin)
    yield
    assert requested_events(admin) == before


@pytest.mark.parametrize("endpoint", sorted(ENDPOINTS))
def test_each_role_may_do_what_the_contract_says_and_no_more(server: Server, endpoint: str) -> None:
    admin = server.client("admin")
    for role in ROLES:
        before = requested_events(admin)
        response = call(server.client(role), endpoint)
        if role in ALLOWED[endpoint]:
            assert response.status_code in (200, 201, 202), (role, response.text)
        else:
            error = assert_error(response, 403, "forbidden")
            assert error["details"]["role"] == role
            assert requested_events(admin) == before, f"a refused {role} request wrote events"


@pytest.mark.parametrize(
    "authorization", [None, "Bearer enf_not_a_token", "Bearer", "Basic dXNlcjpwYXNz", "enf_x"]
)
def test_no_token_or_an_unknown_one_is_401(
    server: Server, authorization: str | None, unchanged: None
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    for method, path, body in ENDPOINTS.values():
        response = server.client().request(method, path, json=body, headers=headers)

        assert_error(response, 401, "unauthorized")
        assert response.headers["www-authenticate"] == "Bearer"


def test_healthz_needs_no_token(server: Server) -> None:
    response = server.client().get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_a_supplied_request_id_is_echoed_and_becomes_the_correlation_id(server: Server) -> None:
    rid = f"req-{uuid.uuid4().hex}"
    acct = f"rid_{uuid.uuid4().hex[:8]}"

    response = server.client("reporter").post(
        "/v1/violations",
        json={"account_id": acct, "category": "spam"},
        headers={"X-Request-Id": rid},
    )
    bad = server.client().get("/healthz", headers={"X-Request-Id": "no spaces allowed"})
    other = server.client().get("/healthz")

    assert response.headers["x-request-id"] == rid
    assert {e["metadata"]["correlation_id"] for e in response.json()["events"]} == {rid}
    assert bad.headers["x-request-id"] not in ("no spaces allowed", other.headers["x-request-id"])


# ------------------------------------------------------------------ error classes


def test_malformed_json_is_400(server: Server, unchanged: None) -> None:
    reporter, op = server.client("reporter"), server.client("operator")
    headers = {"content-type": "application/json"}

    for client, path in (
        (reporter, "/v1/violations"),
        (reporter, "/v1/violations:batch"),
        (op, f"/v1/accounts/{ACCT}/suspend"),
    ):
        for body in (
            b'{"account_id": "acct_1", "category": ',
            b'{"account_id": "acct_1", "category": "spam", "category": "csam"}',
        ):
            response = client.post(path, content=body, headers=headers)
            assert_error(response, 400, "malformed_json")


def test_a_json_body_not_sent_as_json_is_415_after_the_callers_401_or_403(
    server: Server, unchanged: None
) -> None:
    """``curl -d '{…}'`` sends a form's media type: the answer names the one to send."""
    body = json.dumps({"account_id": ACCT, "category": "spam"}).encode()
    as_form = {"content-type": "application/x-www-form-urlencoded"}
    cases = [
        (server.client("reporter"), "/v1/violations", 415, "unsupported_media_type"),
        (server.client("reporter"), "/v1/violations:batch", 415, "unsupported_media_type"),
        (server.client("operator"), f"/v1/accounts/{ACCT}/suspend", 415, "unsupported_media_type"),
        (server.client("gateway"), "/v1/gate/check", 415, "unsupported_media_type"),
        (server.client(), "/v1/violations", 401, "unauthorized"),
        (server.client("auditor"), "/v1/violations", 403, "forbidden"),
        (server.client("reporter"), f"/v1/accounts/{ACCT}/suspend", 403, "forbidden"),
    ]
    for client, path, status, code in cases:
        error = assert_error(client.post(path, content=body, headers=as_form), status, code)
        if status == 415:
            assert "application/json" in error["message"]
            assert error["details"] == {"content_type": "application/x-www-form-urlencoded"}
    as_text = server.client("reporter").post(
        "/v1/violations", content=body, headers={"content-type": "text/plain"}
    )
    assert_error(as_text, 415, "unsupported_media_type")


def test_a_malformed_body_is_answered_401_or_403_first_when_the_caller_is_refused(
    server: Server, unchanged: None
) -> None:
    """The contract's 401 and 403 do not depend on the body (FastAPI parses it first)."""
    headers = {"content-type": "application/json"}
    malformed = b'{"account_id": "acct_1", "category": '
    cases = [
        (server.client(), "/v1/violations", 401, "unauthorized"),
        (server.client(), f"/v1/accounts/{ACCT}/suspend", 401, "unauthorized"),
        (server.client(), "/v1/gate/check", 401, "unauthorized"),
        (server.client("auditor"), "/v1/violations", 403, "forbidden"),
        (server.client("reporter"), f"/v1/accounts/{ACCT}/suspend", 403, "forbidden"),
        (server.client("reporter"), "/v1/gate/check", 403, "forbidden"),
        (server.client("gateway"), "/v1/gate/check", 400, "malformed_json"),
    ]
    for client, path, status, code in cases:
        response = client.post(path, content=malformed, headers=headers)
        assert_error(response, status, code)
    unknown = server.client().post(
        "/v1/violations", content=malformed, headers={**headers, "Authorization": "Bearer enf_x"}
    )
    assert_error(unknown, 401, "unauthorized")


def test_unknown_routes_and_ids_are_404(server: Server, unchanged: None) -> None:
    op = server.client("operator")

    assert_error(server.client().get("/nope"), 404, "not_found")
    assert_error(op.get("/v1/accounts/acct_1/nope"), 404, "not_found")
    assert_error(op.post("/v2/violations", json={}), 404, "not_found")
    assert_error(op.post(f"/v1/accounts/{ACCT}/violations/vio_nope/dismiss", json={}), 404)
    assert_error(op.post(f"/v1/accounts/{ACCT}/remediations/rem_nope/complete", json={}), 404)
    assert_error(op.delete(f"/v1/accounts/{ACCT}/throttles/thr_nope"), 404)
    assert_error(
        op.post(f"/v1/accounts/{ACCT}/appeals/apl_nope/decide", json={"outcome": "upheld"}), 404
    )
    assert_error(
        op.post(f"/v1/accounts/{ACCT}/abuse-reports/abr_nope/triage", json={"outcome": "rejected"}),
        404,
    )
    assert_error(
        op.post(f"/v1/accounts/{ACCT}/appeals", json={"decision_event_id": str(uuid.uuid4())}), 404
    )


def test_a_wrong_method_is_405(server: Server, unchanged: None) -> None:
    op = server.client("operator")

    for method, path in (
        ("GET", "/v1/violations"),
        ("DELETE", f"/v1/accounts/{ACCT}/standing"),
        ("PUT", "/v1/violations:batch"),
        ("GET", f"/v1/accounts/{ACCT}/suspend"),
        ("POST", "/healthz"),
    ):
        assert_error(op.request(method, path), 405, "method_not_allowed")


def test_an_impossible_transition_is_409(server: Server) -> None:
    op = server.client("operator")
    acct = f"conf_{uuid.uuid4().hex[:8]}"
    before = requested_events(op)

    assert_error(
        op.post(f"/v1/accounts/{acct}/reinstate", json={"reason": "x"}), 409, "not_suspended"
    )
    assert requested_events(op) == before


def test_a_body_over_64_kib_is_413(server: Server, unchanged: None) -> None:
    reporter = server.client("reporter")
    big = {"account_id": ACCT, "category": "spam", "description": "x" * (64 * 1024)}
    data = json.dumps(big).encode()

    declared = reporter.post(
        "/v1/violations", content=data, headers={"content-type": "application/json"}
    )
    streamed = reporter.post(
        "/v1/violations",
        content=iter([data[:1000], data[1000:]]),
        headers={"content-type": "application/json"},
    )
    command = server.client("operator").post(
        f"/v1/accounts/{ACCT}/suspend", content=data, headers={"content-type": "application/json"}
    )
    # Only the batch route's own path takes more: this one merely ends like it.
    elsewhere = reporter.post(
        "/v1/elsewhere/violations:batch", content=data, headers={"content-type": "application/json"}
    )

    for response in (declared, streamed, command, elsewhere):
        assert assert_error(response, 413, "payload_too_large")["details"] == {
            "limit_bytes": 64 * 1024
        }


def test_the_batch_takes_more_than_64_kib_but_not_over_4_mib(server: Server) -> None:
    reporter, admin = server.client("reporter"), server.client("admin")
    acct = f"big_{uuid.uuid4().hex[:8]}"
    item = {"account_id": acct, "category": "spam", "description": "y" * 3000}
    medium = {"violations": [item] * 25}
    huge = json.dumps({"violations": [{**item, "description": "z" * 4000}] * 1100}).encode()
    headers = {"content-type": "application/json"}

    accepted = reporter.post("/v1/violations:batch", json=medium)
    before = requested_events(admin)
    declared = reporter.post("/v1/violations:batch", content=huge, headers=headers)
    streamed = reporter.post(
        "/v1/violations:batch", content=iter([huge[:65536], huge[65536:]]), headers=headers
    )

    assert 64 * 1024 < len(json.dumps(medium)) < 4 * 1024 * 1024
    assert accepted.status_code == 200, accepted.text
    assert [r["status"] for r in accepted.json()["results"]] == [201] * 25
    assert accepted.headers["content-length"] == str(len(accepted.content))  # sent whole
    assert len(huge) > 4 * 1024 * 1024
    for refused in (declared, streamed):
        assert assert_error(refused, 413, "payload_too_large")["details"] == {
            "limit_bytes": 4 * 1024 * 1024
        }
    assert requested_events(admin) == before
    # An answer over 1 MiB is streamed as its items are encoded (STREAM_AFTER_BYTES).
    large = reporter.post("/v1/violations:batch", json={"violations": [item] * 400})
    assert large.status_code == 200, large.text
    assert len(large.content) > 1024 * 1024
    assert large.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in large.headers
    assert [r["status"] for r in large.json()["results"]] == [201] * 400


def test_validation_names_each_bad_field_and_the_allowed_categories(
    server: Server, unchanged: None
) -> None:
    reporter = server.client("reporter")

    several = reporter.post(
        "/v1/violations",
        json={
            "account_id": "has spaces",
            "category": "spam",
            "severity": "extreme",
            "detection": "psychic",
            "evidence_ref": "e" * 2049,
            "colour": "red",
        },
    )
    unknown = reporter.post("/v1/violations", json={"account_id": ACCT, "category": "jaywalking"})
    missing = reporter.post("/v1/violations", json={})
    future = reporter.post(
        "/v1/violations",
        json={"account_id": ACCT, "category": "spam", "occurred_at": "2999-01-01T00:00:00Z"},
    )
    long_key = reporter.post(
        "/v1/violations",
        json={"account_id": ACCT, "category": "spam"},
        headers={"Idempotency-Key": "k" * 201},
    )
    not_object = reporter.post("/v1/violations", json=[1, 2])
    empty_batch = reporter.post("/v1/violations:batch", json={"violations": []})
    abuse = reporter.post(
        "/v1/abuse-reports", json={"reported_account_id": ACCT, "category": "nope"}
    )

    fields = sorted(d["field"] for d in assert_error(several, 422, "validation_failed")["details"])
    assert fields == ["account_id", "colour", "detection", "evidence_ref", "severity"]
    details = assert_error(unknown, 422, "validation_failed")["details"]
    assert [d["field"] for d in details] == ["category"]
    assert details[0]["allowed"] == CATEGORIES
    assert sorted(d["field"] for d in assert_error(missing, 422)["details"]) == [
        "account_id",
        "category",
    ]
    assert [d["field"] for d in assert_error(future, 422)["details"]] == ["occurred_at"]
    assert assert_error(long_key, 422)["details"][0]["field"].lower().endswith("idempotency-key")
    assert assert_error(not_object, 422)["details"]
    assert [d["field"] for d in assert_error(empty_batch, 422)["details"]] == ["violations"]
    abuse_details = assert_error(abuse, 422)["details"]
    assert abuse_details[0]["field"] == "category"
    assert abuse_details[0]["allowed"] == CATEGORIES


def test_text_with_a_nul_character_is_422_on_every_backend(server: Server, unchanged: None) -> None:
    reporter, op = server.client("reporter"), server.client("operator")
    violation = {"account_id": ACCT, "category": "spam"}
    requests = [
        (reporter, "POST", "/v1/violations", {**violation, "source": "a\x00b"}, "source"),
        (reporter, "POST", "/v1/violations", {**violation, "evidence_ref": "\x00"}, "evidence_ref"),
        (reporter, "POST", "/v1/violations", {**violation, "description": "\x00"}, "description"),
        (
            reporter,
            "POST",
            "/v1/abuse-reports",
            {"reported_account_id": ACCT, "category": "spam", "reporter_contact": "a\x00"},
            "reporter_contact",
        ),
        (
            op,
            "PUT",
            f"/v1/accounts/{ACCT}/contact",
            {"webhook_url": "https://x/\x00"},
            "webhook_url",
        ),
        (op, "POST", f"/v1/accounts/{ACCT}/suspend", {"reason": "\x00"}, "reason"),
    ]
    for client, method, path, body, field in requests:
        response = client.request(method, path, json=body)
        assert [d["field"] for d in assert_error(response, 422)["details"]] == [field], path
    batch = reporter.post(
        "/v1/violations:batch", json={"violations": [{**violation, "idempotency_key": "k\x00"}]}
    )
    assert batch.status_code == 200
    assert batch.json()["results"][0]["status"] == 422


def test_bad_query_and_path_parameters_are_422(server: Server, unchanged: None) -> None:
    auditor = server.client("auditor")

    for path, params in (
        (f"/v1/accounts/{ACCT}/events", {"limit": 0}),
        (f"/v1/accounts/{ACCT}/events", {"after_version": -1}),
        (f"/v1/accounts/{ACCT}/events", {"limit": "ten"}),
        ("/v1/events", {"limit": 5001}),
        (f"/v1/accounts/{ACCT}/standing", {"as_of": "2026-13-01T00:00:00Z"}),
        (f"/v1/accounts/{'x' * 129}/standing", {}),
        ("/v1/accounts/bad%20id/verify", {}),
    ):
        assert assert_error(auditor.get(path, params=params), 422)["details"], path
