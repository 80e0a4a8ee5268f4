"""Reporting over HTTP: violations (idempotent), batches, abuse reports and their triage."""

from __future__ import annotations

import uuid

from tests.e2e.harness import Server, assert_error, requested_events, settled_events


def account(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def test_a_violation_is_recorded_and_decided_at_once(server: Server) -> None:
    reporter = server.client("reporter")
    acct = account("rep")

    response = reporter.post(
        "/v1/violations",
        json={
            "account_id": acct,
            "category": "phishing",
            "severity": "low",
            "key_id": "key_7",
            "source": "mail-classifier",
            "detection": "automated",
            "evidence_ref": "s3://evidence/123",
            "description": "phishing kit ✓",
        },
    )

    assert response.status_code == 201, response.text
    body = response.json()
    assert body["violation_id"].startswith("vio_")
    assert body["account_id"] == acct
    # phishing's floor is medium: first minor violation → warning notice and a remediation.
    assert [e["type"] for e in body["decisions"]] == ["NoticeIssued", "RemediationRequested"]
    assert body["standing"]["status"] == "remediation_due"
    assert body["standing"]["strikes"] == 1
    assert body["standing"]["open_violations"] == [body["violation_id"]]
    assert body["standing"]["version"] == 3


def test_idempotency_key_replays_the_same_events_and_refuses_another_body(server: Server) -> None:
    reporter, auditor = server.client("reporter"), server.client("auditor")
    acct = account("idem")
    key = f"idem-{uuid.uuid4()}"
    payload = {"account_id": acct, "category": "spam", "description": "bulk mail"}

    first = reporter.post("/v1/violations", json=payload, headers={"Idempotency-Key": key})
    before = requested_events(auditor)
    again = reporter.post("/v1/violations", json=payload, headers={"Idempotency-Key": key})
    other = reporter.post(
        "/v1/violations", json={**payload, "description": "other"}, headers={"Idempotency-Key": key}
    )

    assert first.status_code == 201, first.text
    assert again.status_code == 200, again.text
    assert again.json()["violation_id"] == first.json()["violation_id"]
    assert [e["event_id"] for e in again.json()["decisions"]] == [
        e["event_id"] for e in first.json()["decisions"]
    ]
    assert_error(other, 409, "idempotency_key_reused")
    assert requested_events(auditor) == before


def test_without_a_key_each_post_is_a_new_violation(server: Server) -> None:
    reporter = server.client("reporter")
    payload = {"account_id": account("nokey"), "category": "spam"}

    first = reporter.post("/v1/violations", json=payload)
    second = reporter.post("/v1/violations", json=payload)

    assert (first.status_code, second.status_code) == (201, 201)
    assert first.json()["violation_id"] != second.json()["violation_id"]
    # The second minor strike throttles the account (POLICY.md ladder).
    assert second.json()["standing"]["strikes"] == 2
    assert second.json()["standing"]["status"] == "throttled"


def test_a_batch_answers_each_item_and_one_bad_item_stops_no_other(server: Server) -> None:
    reporter, auditor = server.client("reporter"), server.client("auditor")
    acct = account("batch")
    key = f"batch-{uuid.uuid4()}"
    items = [
        {"account_id": acct, "category": "spam", "idempotency_key": key},
        {"account_id": acct, "category": "no_such_category"},
        {"account_id": "not a valid id!", "category": "spam"},
        {"account_id": acct, "category": "spam", "idempotency_key": key, "description": "x"},
        {"account_id": acct, "category": "spam", "idempotency_key": key},
        {"account_id": acct, "category": "impersonation", "unknown_field": 1},
        {"account_id": acct, "category": "ip_infringement"},
        "not an object",
        None,
    ]

    response = reporter.post("/v1/violations:batch", json={"violations": items})

    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["status"] for r in results] == [201, 422, 422, 409, 200, 422, 201, 422, 422]
    assert results[0]["violation_id"].startswith("vio_")
    assert results[4]["violation_id"] == results[0]["violation_id"]
    assert results[6]["violation_id"] not in (None, results[0]["violation_id"])
    unknown = results[1]["error"]
    assert unknown["code"] == "validation_failed"
    assert [d["field"] for d in unknown["details"]] == ["category"]
    assert "spam" in unknown["details"][0]["allowed"]
    assert [d["field"] for d in results[2]["error"]["details"]] == ["account_id"]
    assert results[3]["error"]["code"] == "idempotency_key_reused"
    assert [d["field"] for d in results[5]["error"]["details"]] == ["unknown_field"]
    for not_object in results[7:]:
        assert (not_object["account_id"], not_object["error"]["code"]) == (
            None,
            "validation_failed",
        )
        assert [d["field"] for d in not_object["error"]["details"]] == ["item"]
    for failed in (results[1], results[2], results[3], results[5], *results[7:]):
        assert failed["violation_id"] is None
        assert set(failed["error"]) == {"code", "message", "details"}

    stream = auditor.get(f"/v1/accounts/{acct}/events", params={"limit": 1000}).json()["events"]
    reported = [e["data"]["violation_id"] for e in stream if e["type"] == "ViolationReported"]
    assert reported == [results[0]["violation_id"], results[6]["violation_id"]]
    assert requested_events(auditor)  # the feed is readable after a batch


def test_an_abuse_report_retried_with_its_idempotency_key_is_filed_once(server: Server) -> None:
    reporter, auditor = server.client("reporter"), server.client("auditor")
    report = {"reported_account_id": account("abuse"), "category": "spam", "description": "spam"}
    key = {"Idempotency-Key": f"abuse-{uuid.uuid4()}"}

    first = reporter.post("/v1/abuse-reports", json=report, headers=key)
    before = requested_events(auditor)
    again = reporter.post("/v1/abuse-reports", json=report, headers=key)
    other = reporter.post("/v1/abuse-reports", json={**report, "description": "x"}, headers=key)

    assert first.status_code == 202, first.text
    assert again.status_code == 200, again.text
    assert again.json() == first.json()
    assert_error(other, 409, "idempotency_key_reused")
    assert requested_events(auditor) == before


def test_an_abuse_report_is_no_strike_until_triaged(server: Server) -> None:
    reporter, operator = server.client("reporter"), server.client("operator")
    acct = account("abuse")
    report = {
        "reported_account_id": acct,
        "category": "impersonation",
        "description": "pretends to be a bank",
        "reporter_contact": "victim@example.com",
        "evidence_ref": "s3://evidence/9",
    }

    filed = reporter.post("/v1/abuse-reports", json=report)
    rejected_id = reporter.post("/v1/abuse-reports", json=report).json()["report_id"]

    assert filed.status_code == 202, filed.text
    assert list(filed.json()) == ["report_id"]
    report_id = filed.json()["report_id"]
    standing = operator.get(f"/v1/accounts/{acct}/standing").json()
    assert (standing["strikes"], standing["open_abuse_reports"]) == (0, 2)
    assert standing["status"] == "good_standing"
    events = operator.get(f"/v1/accounts/{acct}/events").json()["events"]
    assert [e["type"] for e in events] == ["AbuseReportReceived", "AbuseReportReceived"]

    confirmed = operator.post(
        f"/v1/accounts/{acct}/abuse-reports/{report_id}/triage",
        json={"outcome": "confirmed", "severity": "medium"},
    )
    rejected = operator.post(
        f"/v1/accounts/{acct}/abuse-reports/{rejected_id}/triage", json={"outcome": "rejected"}
    )
    twice = operator.post(
        f"/v1/accounts/{acct}/abuse-reports/{report_id}/triage", json={"outcome": "rejected"}
    )

    assert confirmed.status_code == 200, confirmed.text
    types = [e["type"] for e in confirmed.json()["events"]]
    assert types[0] == "AbuseReportTriaged" and "ViolationReported" in types
    assert confirmed.json()["standing"]["strikes"] == 1
    assert rejected.status_code == 200, rejected.text
    assert [e["type"] for e in rejected.json()["events"]] == ["AbuseReportTriaged"]
    assert rejected.json()["standing"]["open_abuse_reports"] == 0
    assert rejected.json()["standing"]["strikes"] == 1
    assert_error(twice, 409)
    assert_error(
        operator.post(
            f"/v1/accounts/{acct}/abuse-reports/abr_nope/triage", json={"outcome": "confirmed"}
        ),
        404,
    )


def test_an_idempotency_key_header_is_utf8_text(server: Server) -> None:
    """The header's octets are read as UTF-8, as a batch item's key is: the same key either way
    is one key, its 200 characters are characters; octets that are not UTF-8 are a 422."""
    reporter, auditor = server.client("reporter"), server.client("auditor")
    acct = account("utf8")
    violation = {"account_id": acct, "category": "spam"}
    key = f"clé-🔑-{uuid.uuid4().hex[:8]}"

    first = reporter.post(
        "/v1/violations", json=violation, headers={"Idempotency-Key": key.encode()}
    )
    assert first.status_code == 201, first.text
    batch = reporter.post(
        "/v1/violations:batch", json={"violations": [{**violation, "idempotency_key": key}]}
    )
    [again] = batch.json()["results"]
    assert (again["status"], again["violation_id"]) == (200, first.json()["violation_id"])

    longest = f"{uuid.uuid4().hex}{'é' * 168}"  # 200 characters, 368 octets
    for length, status in ((200, 201), (201, 422)):
        key_header = {"Idempotency-Key": (longest + "é" * (length - 200)).encode()}
        answer = reporter.post("/v1/violations", json=violation, headers=key_header)
        assert answer.status_code == status, answer.text
    recorded = settled_events(auditor, acct)  # the workers' delivery outcomes in too

    writes = [
        ("/v1/violations", violation),
        ("/v1/violations:batch", {"violations": [violation]}),
        ("/v1/abuse-reports", {"reported_account_id": acct, "category": "spam"}),
    ]
    for path, body in writes:
        for octets in (b"cl\xe9", b"\xff", "é".encode()[:1]):
            refused = reporter.post(path, json=body, headers={"Idempotency-Key": octets})
            details = assert_error(refused, 422, "validation_failed")["details"]
            assert [d["field"].lower()[-15:] for d in details] == ["idempotency-key"], details
    assert auditor.get(f"/v1/accounts/{acct}/events").json()["events"] == recorded
