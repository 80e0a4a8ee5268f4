"""``POST /v1/gate/check`` over HTTP (CONTRACT.md, "Gate"): the answer, the headers of a
denial, and key ids as gateways name them."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from tests.e2e.harness import Server, assert_error, requested_events, start_server

DECISION_FIELDS = {
    "allowed",
    "reason",
    "limit_requests",
    "remaining_requests",
    "reset_requests_s",
    "limit_tokens",
    "remaining_tokens",
    "reset_tokens_s",
    "retry_after_s",
}
RATE_HEADERS = {
    f"x-ratelimit-{what}-{unit}"
    for what in ("limit", "remaining", "reset")
    for unit in ("requests", "tokens")
}


def account(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def checker(server: Server, acct: str, key_id: str) -> Callable[..., httpx.Response]:
    gateway = server.client("gateway")

    def check(tokens: int = 0) -> httpx.Response:
        body: dict[str, Any] = {"account_id": acct, "key_id": key_id, "tokens": tokens}
        return gateway.post("/v1/gate/check", json=body)

    return check


def test_a_gateway_key_id_with_any_characters_is_checked_and_limited(server: Server) -> None:
    op, acct = server.client("operator"), account("gate")
    key_id = "sk-proj/AbC+9=ü"  # base64-ish, and not ASCII: the contract gives key ids no alphabet
    check = checker(server, acct, key_id)

    allowed = check(tokens=5)
    limits = op.put(
        f"/v1/accounts/{acct}/keys/{quote(key_id, safe='')}/limits",
        json={"requests_per_minute": 1, "tokens_per_day": 100},
    )
    first, second = check(), check()

    assert allowed.status_code == 200, allowed.text
    assert set(allowed.json()) == DECISION_FIELDS
    assert allowed.json()["allowed"] is True and allowed.json()["reason"] == "ok"
    assert set(allowed.headers) >= RATE_HEADERS
    assert limits.status_code == 200, limits.text
    assert limits.json()["events"][0]["data"]["key_id"] == key_id
    # The key's one request a minute: this one's (the limit was met once it applied), then 429.
    assert first.status_code in (200, 429) and first.json()["limit_requests"] == 1
    assert_error_free_denial(second, 429, "rate_limited")
    assert 0 < second.json()["retry_after_s"] <= 60
    assert 1 <= int(second.headers["retry-after"]) <= 60
    assert second.headers["x-ratelimit-limit-requests"] == "1"


def assert_error_free_denial(response: httpx.Response, status: int, reason: str) -> None:
    """A denial answers the decision itself (not the error body), with every header."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == DECISION_FIELDS
    assert (body["allowed"], body["reason"]) == (False, reason)
    assert RATE_HEADERS | {"retry-after"} <= set(response.headers)


def test_suspended_and_terminated_accounts_are_403_with_retry_after(server: Server) -> None:
    op, acct = server.client("operator"), account("gate")
    check = checker(server, acct, "key_1")

    timed = op.post(
        f"/v1/accounts/{acct}/suspend",
        json={"reason": "review", "until": "2099-01-01T00:00:00Z", "notify": False},
    )
    # Each decision reaches the gate as it is committed: the very next check is refused.
    suspended = check()
    op.post(f"/v1/accounts/{acct}/suspend", json={"reason": "pending", "notify": False})
    indefinite = check()
    op.post(f"/v1/accounts/{acct}/terminate", json={"reason": "fraud", "notify": False})
    terminated = check()

    assert timed.status_code == 200, timed.text
    assert_error_free_denial(suspended, 403, "suspended")
    assert int(suspended.headers["retry-after"]) > 365 * 86_400  # until 2099
    # No wait ends these; the contract lists retry-after on every denial all the same.
    for denial, reason in ((indefinite, "suspended"), (terminated, "terminated")):
        assert_error_free_denial(denial, 403, reason)
        assert denial.headers["retry-after"] == "86400"
        assert "retry-after-ms" not in denial.headers


def test_key_ids_are_refused_only_when_too_long_unroutable_or_with_control_characters(
    server: Server,
) -> None:
    reporter, op, acct = server.client("reporter"), server.client("operator"), account("keys")
    before = requested_events(server.client("admin"))
    refused = [
        checker(server, acct, key)()
        for key in ("k" * 201, "key\x00", "key\n", "key\x7f", "key\x85", ".", "..")
    ]
    longest = checker(server, acct, "k" * 200)()
    # Sent as a standard client encodes it: "." and ".." are path steps to it, not a key.
    dotted = op.put(
        f"/v1/accounts/{acct}/keys/%2E%2E/limits",
        json={"requests_per_minute": 3, "tokens_per_day": 10},
    )
    after = requested_events(server.client("admin"))  # a gate check records nothing
    longest_limits = op.put(  # the longest key id fits a stored standing's record key
        f"/v1/accounts/{acct}/keys/{'k' * 200}/limits",
        json={"requests_per_minute": 3, "tokens_per_day": 10},
    )
    reported = reporter.post(
        "/v1/violations", json={"account_id": acct, "category": "spam", "key_id": "kü 😀/+="}
    )

    for response in refused:
        assert_error(response, 422, "validation_failed")
    assert_error(dotted, 422, "validation_failed")
    assert longest.status_code == 200, longest.text
    assert longest_limits.status_code == 200, longest_limits.text
    assert after == before
    assert reported.status_code == 201, reported.text
    events = server.client("auditor").get(f"/v1/accounts/{acct}/events").json()["events"]
    assert [e["data"]["key_id"] for e in events if e["type"] == "ViolationReported"] == ["kü 😀/+="]


def test_a_key_id_in_the_path_that_is_not_utf8_is_refused(server: Server) -> None:
    """The server would decode ``%FF`` to U+FFFD: a key id nobody sent."""
    op, acct = server.client("operator"), account("keys")
    limits = {"requests_per_minute": 3, "tokens_per_day": 10}
    before = requested_events(server.client("admin"))
    refused = [
        op.put(f"/v1/accounts/{acct}/keys/{escaped}/limits", json=limits)
        for escaped in ("%FF", "key%C3", "%ED%B2%80")
    ]
    after = requested_events(server.client("admin"))
    replacement = op.put(f"/v1/accounts/{acct}/keys/%EF%BF%BD/limits", json=limits)

    for response in refused:
        error = assert_error(response, 422, "validation_failed")
        assert [d["field"] for d in error["details"]] == ["path.key_id"]
    assert after == before
    assert replacement.status_code == 200, replacement.text
    assert replacement.json()["events"][0]["data"]["key_id"] == "\ufffd"


def test_a_restarted_server_refuses_a_suspended_account_from_its_first_check(
    tmp_path: Path,
) -> None:
    # Embedded mode keeps the gate in the server's memory. A server without its workers never
    # re-seeds that gate from the stored standings: it learns each account from the database
    # before the account's first check instead (gatekeeping.GateSeeder).
    url, acct = f"sqlite:///{tmp_path / 'enforcement.db'}", account("restart")
    first = start_server(url, tmp_path, "sqlite")
    server = next(first)
    suspended = server.client("operator").post(
        f"/v1/accounts/{acct}/suspend", json={"reason": "review", "notify": False}
    )
    assert suspended.status_code == 200, suspended.text
    first.close()  # stops the server

    again = start_server(url, tmp_path, "sqlite", "--no-workers")
    restarted = next(again)
    try:
        refused = checker(restarted, acct, "key_1")()
        other = checker(restarted, account("other"), "key_1")()
    finally:
        again.close()

    assert refused.status_code == 403, refused.text
    assert refused.json()["reason"] == "suspended"
    assert other.status_code == 200
