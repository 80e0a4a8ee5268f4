"""Every account command over HTTP, with the transitions it may not make (409)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from tests.e2e.harness import Server, assert_error, requested_events, run_cli, settled_events


def account(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def later(**delta: float) -> str:
    return (datetime.now(UTC) + timedelta(**delta)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def ok(response: httpx.Response, *types: str) -> dict[str, Any]:
    """A command's answer: 200 with ``{"events", "standing"}``, the events of ``types``."""
    assert response.status_code == 200, response.text
    body = response.json()
    assert {"events", "standing"} <= set(body)
    assert [e["type"] for e in body["events"]] == list(types)
    return body


def report(server: Server, acct: str, category: str = "spam", **fields: Any) -> dict[str, Any]:
    response = server.client("reporter").post(
        "/v1/violations", json={"account_id": acct, "category": category, **fields}
    )
    assert response.status_code == 201, response.text
    return response.json()


def test_suspend_then_reinstate_and_no_reinstate_when_not_suspended(server: Server) -> None:
    op, acct = server.client("operator"), account("susp")
    base = f"/v1/accounts/{acct}"

    suspended = ok(
        op.post(f"{base}/suspend", json={"reason": "review", "until": later(days=2)}),
        "AccountSuspended",
        "NoticeIssued",
    )
    reinstated = ok(
        op.post(f"{base}/reinstate", json={"reason": "ok"}), "AccountReinstated", "NoticeIssued"
    )
    again = op.post(f"{base}/reinstate", json={"reason": "again"})
    quiet = ok(
        op.post(f"{base}/suspend", json={"reason": "quiet", "notify": False}), "AccountSuspended"
    )

    assert suspended["standing"]["status"] == "suspended"
    assert suspended["standing"]["suspension"]["until"] is not None
    assert suspended["events"][0]["data"]["statement_of_reasons"]["automated_decision"] is False
    assert reinstated["standing"]["status"] == "good_standing"
    assert_error(again, 409, "not_suspended")
    assert quiet["standing"]["suspension"]["until"] is None


def test_a_command_retried_with_its_idempotency_key_is_recorded_once(server: Server) -> None:
    op, auditor, acct = server.client("operator"), server.client("auditor"), account("idem")
    base, key = f"/v1/accounts/{acct}", {"Idempotency-Key": f"op-{uuid.uuid4()}"}
    suspension = {"reason": "review", "until": later(days=2)}

    first = ok(
        op.post(f"{base}/suspend", json=suspension, headers=key), "AccountSuspended", "NoticeIssued"
    )
    before = requested_events(auditor)
    again = ok(
        op.post(f"{base}/suspend", json=suspension, headers=key), "AccountSuspended", "NoticeIssued"
    )
    other = op.post(f"{base}/suspend", json={**suspension, "notify": False}, headers=key)
    terminate = op.post(f"{base}/terminate", json={"reason": "review"}, headers=key)
    elsewhere = op.post(f"/v1/accounts/{account('idem')}/suspend", json=suspension, headers=key)
    bad = op.post(f"{base}/suspend", json=suspension, headers={"Idempotency-Key": "k" * 201})

    assert [e["event_id"] for e in again["events"]] == [e["event_id"] for e in first["events"]]
    for conflict in (other, terminate, elsewhere):
        assert_error(conflict, 409, "idempotency_key_reused")
    assert assert_error(bad, 422)["details"][0]["field"].lower().endswith("idempotency-key")
    assert requested_events(auditor) == before
    # Without a key, each request is a command of its own.
    for _ in range(2):
        ok(op.post(f"{base}/throttles", json={"factor": 0.5}), "ThrottleApplied", "NoticeIssued")
    standing = op.get(f"{base}/standing").json()
    assert (standing["status"], len(standing["active_throttles"])) == ("suspended", 2)


def test_terminated_is_not_reinstated_but_an_overturned_appeal_reverses_it(server: Server) -> None:
    op, acct = server.client("operator"), account("term")
    base = f"/v1/accounts/{acct}"

    terminated = ok(
        op.post(f"{base}/terminate", json={"reason": "fraud"}), "AccountTerminated", "NoticeIssued"
    )
    before = requested_events(op)
    refused = op.post(f"{base}/reinstate", json={"reason": "please"})
    after = requested_events(op)
    decision = terminated["events"][0]["event_id"]
    filed = op.post(
        f"{base}/appeals", json={"decision_event_id": decision, "statement": "it was not me"}
    )
    duplicate = op.post(
        f"{base}/appeals", json={"decision_event_id": decision, "statement": "again"}
    )
    assert filed.status_code == 200, filed.text
    appeal_id = filed.json()["appeal_id"]
    standing = op.get(f"{base}/standing").json()
    overturned = op.post(
        f"{base}/appeals/{appeal_id}/decide",
        json={"outcome": "overturned", "reason": "mistaken identity"},
    )
    decided_twice = op.post(
        f"{base}/appeals/{appeal_id}/decide", json={"outcome": "upheld", "reason": "no"}
    )

    assert terminated["standing"]["status"] == "terminated"
    assert terminated["standing"]["terminated"] is True
    assert_error(refused, 409, "account_terminated")
    assert after == before
    assert filed.json()["events"][0]["type"] == "AppealFiled"
    assert_error(duplicate, 409)
    assert standing["open_appeals"] == 1
    assert overturned.status_code == 200, overturned.text
    assert "AppealDecided" in [e["type"] for e in overturned.json()["events"]]
    assert overturned.json()["standing"]["terminated"] is False
    assert overturned.json()["standing"]["status"] == "good_standing"
    assert overturned.json()["standing"]["open_appeals"] == 0
    assert_error(decided_twice, 409)
    assert_error(op.post(f"{base}/appeals/apl_nope/decide", json={"outcome": "upheld"}), 404)


def test_an_upheld_appeal_leaves_the_decision_standing(server: Server) -> None:
    op, acct = server.client("operator"), account("upheld")
    base = f"/v1/accounts/{acct}"
    decision = report(server, acct, "weapons_development")["decisions"][0]
    assert decision["type"] == "AccountTerminated"

    filed = op.post(
        f"{base}/appeals", json={"decision_event_id": decision["event_id"], "statement": "research"}
    )
    assert filed.status_code == 200, filed.text
    upheld = op.post(
        f"{base}/appeals/{filed.json()['appeal_id']}/decide",
        json={"outcome": "upheld", "reason": "confirmed"},
    )

    assert upheld.status_code == 200, upheld.text
    assert upheld.json()["standing"]["status"] == "terminated"
    assert upheld.json()["events"][0]["type"] == "AppealDecided"


def test_dismiss_a_violation_and_complete_a_remediation(server: Server) -> None:
    op, acct = server.client("operator"), account("dismiss")
    base = f"/v1/accounts/{acct}"
    first = report(server, acct, "spam")
    remediation = first["standing"]["open_remediations"][0]
    second = report(server, acct, "disinformation")

    completed = ok(
        op.post(
            f"{base}/remediations/{remediation['remediation_id']}/complete",
            json={"note": "filters added"},
        ),
        "RemediationCompleted",
    )
    completed_twice = op.post(
        f"{base}/remediations/{remediation['remediation_id']}/complete", json={"note": "again"}
    )
    dismissed = ok(
        op.post(
            f"{base}/violations/{second['violation_id']}/dismiss", json={"reason": "false positive"}
        ),
        "ViolationDismissed",
    )
    dismissed_twice = op.post(
        f"{base}/violations/{second['violation_id']}/dismiss", json={"reason": "again"}
    )
    unknown = op.post(f"{base}/violations/vio_nope/dismiss", json={"reason": "x"})

    assert remediation["violation_ids"] == [first["violation_id"]]
    assert second["standing"]["strikes"] == 2
    assert remediation["remediation_id"] not in [
        r["remediation_id"] for r in completed["standing"]["open_remediations"]
    ]
    assert_error(completed_twice, 409, "remediation_not_open")
    assert dismissed["standing"]["strikes"] == 1
    assert second["violation_id"] not in dismissed["standing"]["open_violations"]
    assert_error(dismissed_twice, 409, "already_dismissed")
    assert_error(unknown, 404, "violation_not_found")
    assert_error(op.post(f"{base}/remediations/rem_nope/complete", json={}), 404)


def test_throttles_are_applied_and_lifted(server: Server) -> None:
    op, acct = server.client("operator"), account("thr")
    base = f"/v1/accounts/{acct}"

    applied = ok(
        op.post(
            f"{base}/throttles",
            json={
                "key_id": "key_7",
                "factor": 0.5,
                "expires_at": later(hours=1),
                "reason": "burst",
            },
        ),
        "ThrottleApplied",
        "NoticeIssued",
    )
    throttle = applied["standing"]["active_throttles"][0]
    lifted = ok(op.delete(f"{base}/throttles/{throttle['throttle_id']}"), "ThrottleLifted")
    lifted_twice = op.delete(f"{base}/throttles/{throttle['throttle_id']}")
    unknown = op.delete(f"{base}/throttles/thr_nope")
    past = op.post(f"{base}/throttles", json={"factor": 0.5, "expires_at": later(hours=-1)})
    # POLICY.md: every restriction has a notice unless the operator asks for none.
    quiet = ok(
        op.post(f"{base}/throttles", json={"factor": 0.5, "notify": False}), "ThrottleApplied"
    )

    assert applied["standing"]["status"] == "throttled"
    assert quiet["standing"]["active_throttles"][0]["factor"] == 0.5
    assert (throttle["key_id"], throttle["factor"]) == ("key_7", 0.5)
    assert lifted["standing"]["active_throttles"] == []
    assert lifted["standing"]["status"] == "good_standing"
    # Lifting a lifted throttle is an impossible transition (409), not an unknown id.
    assert_error(lifted_twice, 409, "throttle_not_active")
    assert_error(unknown, 404, "throttle_not_found")
    assert [d["field"] for d in assert_error(past, 422)["details"]] == ["expires_at"]


def test_adult_content_approval_turns_the_category_into_no_strike(server: Server) -> None:
    op, acct = server.client("operator"), account("adult")
    base = f"/v1/accounts/{acct}"

    approved = ok(
        op.put(
            f"{base}/adult-content-approval", json={"approved": True, "reason": "age-gated product"}
        ),
        "AdultContentApprovalChanged",
    )
    reported = report(server, acct, "unapproved_adult_content")
    revoked = ok(
        op.put(f"{base}/adult-content-approval", json={"approved": False}),
        "AdultContentApprovalChanged",
    )

    assert approved["standing"]["adult_content_approved"] is True
    assert [e["type"] for e in reported["decisions"]] == ["ViolationDismissed"]
    assert reported["standing"]["strikes"] == 0
    assert revoked["standing"]["adult_content_approved"] is False


def test_key_and_account_limits_are_configured(server: Server) -> None:
    op, acct = server.client("operator"), account("lim")
    base = f"/v1/accounts/{acct}"
    limits = {"requests_per_minute": 120, "tokens_per_day": 50_000}

    key = ok(op.put(f"{base}/keys/key_7/limits", json=limits), "RateLimitsConfigured")
    whole = ok(
        op.put(f"{base}/limits", json={**limits, "requests_per_minute": 300}),
        "RateLimitsConfigured",
    )
    bad = op.put(f"{base}/limits", json={"requests_per_minute": 0})

    assert key["events"][0]["data"] == {"key_id": "key_7", **limits}
    assert whole["events"][0]["data"]["key_id"] is None
    assert whole["events"][0]["data"]["requests_per_minute"] == 300
    fields = sorted(d["field"] for d in assert_error(bad, 422)["details"])
    assert fields == ["requests_per_minute", "tokens_per_day"]


def test_contact_is_mutable_data_and_not_an_event(server: Server) -> None:
    op, acct = server.client("operator"), account("contact")
    report(server, acct)  # a standing with something in it
    before = requested_events(op)

    first = op.put(f"/v1/accounts/{acct}/contact", json={"email": "ops@example.com"})
    second = op.put(
        f"/v1/accounts/{acct}/contact",
        json={"email": "abuse@example.com", "webhook_url": "https://example.com/h"},
    )
    bad = op.put(f"/v1/accounts/{acct}/contact", json={"email": "not an address"})

    assert first.status_code == 200, first.text
    # Answered as every account command is (CONTRACT.md), with the contact as stored besides.
    standing = op.get(f"/v1/accounts/{acct}/standing").json()
    assert standing["status"] == "remediation_due"
    answers = [first.json(), second.json()]
    stable = ("account_id", "status", "strikes", "open_violations", "open_remediations")
    for answer in answers:  # (the notice's delivery may be recorded in between: version, as_of)
        answered = answer.pop("standing")
        assert {k: answered[k] for k in stable} == {k: standing[k] for k in stable}
    assert answers[0] == {
        "account_id": acct,
        "email": "ops@example.com",
        "webhook_url": None,
        "events": [],
    }
    assert answers[1] == {
        "account_id": acct,
        "email": "abuse@example.com",
        "webhook_url": "https://example.com/h",
        "events": [],
    }
    assert [d["field"] for d in assert_error(bad, 422)["details"]] == ["email"]
    assert requested_events(op) == before


def test_a_notice_that_failed_for_good_is_sent_again_once_the_contact_is_set(
    server: Server,
) -> None:
    op, acct = server.client("operator"), account("resend")
    decided = report(server, acct)
    [notice] = [e for e in decided["events"] if e["type"] == "NoticeIssued"]
    [failed] = [
        e for e in settled_events(op, acct) if e["metadata"]["causation_id"] == notice["event_id"]
    ]
    assert (failed["type"], failed["data"]["final"]) == ("NoticeDeliveryFailed", True)
    notice_id = notice["data"]["notice_id"]
    url = f"/v1/accounts/{acct}/notices/{notice_id}/resend"
    failed = op.get(f"/v1/accounts/{acct}/notices", params={"state": "failed"}).json()
    assert [n["notice_id"] for n in failed["notices"]] == [notice_id]
    since = {"since": notice["recorded_at"], "state": "failed"}
    everyone = op.get("/v1/notices", params=since).json()["notices"]
    assert failed["notices"][0] in everyone  # every account's, the other tests' too

    assert_error(server.client("reporter").post(url, json={}), 403)
    assert_error(op.post(f"/v1/accounts/{acct}/notices/ntc_none/resend", json={}), 404)
    assert op.put(f"/v1/accounts/{acct}/contact", json={"email": "desk@example.com"}).is_success
    body = ok(op.post(url, json={"reason": "contact corrected"}), "NoticeIssued")

    [copy_] = body["events"]
    assert body["notice_id"] == copy_["data"]["notice_id"] != notice_id
    assert copy_["schema_version"] == 2
    assert copy_["metadata"]["causation_id"] == notice["event_id"]
    assert copy_["data"]["resend_of"] == {
        "notice_id": notice_id,
        "notice_event_id": notice["event_id"],
        "issued_at": notice["recorded_at"],
        "reason": "contact corrected",
        "channels": None,
    }
    assert body["standing"]["status"] == "remediation_due"
    outcomes = [
        (e["type"], e["data"]["channel"])
        for e in settled_events(op, acct)
        if e["metadata"]["causation_id"] == copy_["event_id"]
    ]
    assert outcomes == [("NoticeDelivered", "email")]
    listed = op.get(f"/v1/accounts/{acct}/notices")
    assert listed.status_code == 200, listed.text
    assert [(n["notice_id"], n["resend_of"], n["state"]) for n in listed.json()["notices"]] == [
        (notice_id, None, "sent_again"),
        (copy_["data"]["notice_id"], notice_id, "delivered"),
    ]
    resent = op.get(f"/v1/accounts/{acct}/notices", params={"state": "sent_again"}).json()
    assert [n["sent_again_as"] for n in resent["notices"]] == [[copy_["data"]["notice_id"]]]


def test_the_cli_sends_a_failed_notice_again_and_the_running_server_delivers_the_copy(
    server: Server,
) -> None:
    """``enforcement resend``, a process of its own, appends the copy; the server's relay
    reads it from the log and delivers it (the log is the outbox)."""
    op, acct = server.client("operator"), account("cliresend")
    [notice] = [e for e in report(server, acct)["events"] if e["type"] == "NoticeIssued"]
    settled_events(op, acct)  # undeliverable: the account has no contact
    assert op.put(f"/v1/accounts/{acct}/contact", json={"email": "desk@example.com"}).is_success

    done = run_cli(server.env, server.workdir, "resend", acct, "--reason", "contact set", "--json")

    assert done.returncode == 0, done.stderr
    [resent] = json.loads(done.stdout)["notices"]
    assert (resent["notice_id"], resent["outcome"]) == (notice["data"]["notice_id"], "sent")
    events = settled_events(op, acct)
    [copy_] = [e for e in events if e["type"] == "NoticeIssued" and e["data"] != notice["data"]]
    assert copy_["data"]["notice_id"] == resent["copy_notice_id"]
    assert copy_["metadata"]["source"] == "cli"
    outcomes = [
        (e["type"], e["data"]["channel"])
        for e in events
        if e["metadata"]["causation_id"] == copy_["event_id"]
    ]
    assert outcomes == [("NoticeDelivered", "email")]
