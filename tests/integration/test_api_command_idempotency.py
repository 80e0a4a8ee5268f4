"""An ``Idempotency-Key`` on ``POST /v1/abuse-reports`` and on every account command that records
events, as ``POST /v1/violations`` has it: the same key with the same request (route, account,
path ids and validated body, however written) records nothing more and answers 200 with the
first answer's events; with another request (body, command or account) it is a 409; a request
without one is recorded each time, as before. Keys are checked as the violations' are (422)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient
from test_service_support import OPERATOR, REPORTER, FakeClock, open_system

from enforcement import operator_decisions as ops
from enforcement.api.app import create_app
from enforcement.bootstrap import Container
from enforcement.migrations import upgrade
from enforcement.policy import ViolationReport
from enforcement.roles import Role
from enforcement.tokens import create_token
from events.timefmt import format_time

ACCOUNT, OTHER = "acct_cmd", "acct_cmd_other"


@pytest.fixture
def client(system: Container) -> Iterator[TestClient]:
    with TestClient(create_app(system)) as test_client:
        yield test_client


def headers_of(system: Container, role: Role, key: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {create_token(system.engine, role, role.value)}"}
    return headers if key is None else {**headers, "Idempotency-Key": key}


@dataclass(frozen=True)
class Command:
    """One request of an account command on ``ACCOUNT``: its ``body`` (None: none), the same
    body written another way (``alike``: a default written out or left out) and another one."""

    method: str
    path: str  # below /v1/accounts/{account}
    body: dict[str, Any] | None
    alike: dict[str, Any] | None
    other: dict[str, Any] | None

    def send(
        self, client: TestClient, headers: dict[str, str], body: Any, account: str = ACCOUNT
    ) -> Any:
        url = f"/v1/accounts/{account}/{self.path}"
        return client.request(self.method, url, json=body, headers=headers)


def _violation(system: Container) -> dict[str, dict[str, Any]]:
    """A first spam violation's events' data by type (a warning and a remediation with it)."""
    report = ViolationReport("spam", system.clock(), description="bulk mail")
    events = system.service.report_violation(ACCOUNT, report, REPORTER).events
    return {e.type: dict(e.data) for e in events}


def _suspended(system: Container) -> str:
    return system.service.operator(ACCOUNT, ops.Suspend("review"), OPERATOR).events[0].event_id


def _appealed(system: Container) -> str:
    outcome = system.service.file_appeal(ACCOUNT, _suspended(system), "it was not me", OPERATOR)
    return str(outcome.events[0].data["appeal_id"])


def _throttled(system: Container) -> str:
    outcome = system.service.operator(ACCOUNT, ops.ApplyThrottle(0.5, "load"), OPERATOR)
    return str(outcome.events[0].data["throttle_id"])


def _reported(system: Container) -> str:
    outcome = system.service.file_abuse_report(ACCOUNT, "spam", "spam", None, None, REPORTER)
    return str(outcome.events[0].data["report_id"])


def dismiss(system: Container) -> Command:
    violation_id = _violation(system)["ViolationReported"]["violation_id"]
    reason = {"reason": "false positive"}
    return Command("POST", f"violations/{violation_id}/dismiss", reason, reason, {})


def complete(system: Container) -> Command:
    remediation_id = _violation(system)["RemediationRequested"]["remediation_id"]
    path = f"remediations/{remediation_id}/complete"
    return Command("POST", path, {}, {"note": ""}, {"note": "fixed"})


def suspend(system: Container) -> Command:
    until = format_time(system.clock().replace(year=2027))
    body = {"reason": "review", "until": until}
    alike = {"until": until.replace("Z", "+00:00"), "notify": True, "reason": "review"}
    return Command("POST", "suspend", body, alike, {**body, "notify": False})


def reinstate(system: Container) -> Command:
    _suspended(system)
    return Command("POST", "reinstate", {"reason": "ok"}, {"reason": "ok"}, {})


def terminate(system: Container) -> Command:
    body = {"reason": "fraud"}
    return Command("POST", "terminate", body, {"notify": True, **body}, {})


def throttle(system: Container) -> Command:
    body = {"factor": 0.5, "reason": "load"}
    alike = {"reason": "load", "factor": 0.5, "key_id": None, "expires_at": None}
    return Command("POST", "throttles", body, alike, {**body, "factor": 0.25})


def lift(system: Container) -> Command:
    return Command("DELETE", f"throttles/{_throttled(system)}", None, None, None)


def adult_content(system: Container) -> Command:
    body = {"approved": True}
    return Command(
        "PUT", "adult-content-approval", body, {**body, "reason": ""}, {"approved": False}
    )


def key_limits(system: Container) -> Command:
    body = {"requests_per_minute": 60, "tokens_per_day": 1000}
    alike = {"tokens_per_day": 1000, "requests_per_minute": 60.0}
    other = {**body, "requests_per_minute": 61}
    return Command("PUT", "keys/key%2F1/limits", body, alike, other)


def limits(system: Container) -> Command:
    body = {"requests_per_minute": 60, "tokens_per_day": 1000}
    return Command(
        "PUT", "limits", body, dict(reversed(body.items())), {**body, "tokens_per_day": 1}
    )


def triage(system: Container) -> Command:
    path = f"abuse-reports/{_reported(system)}/triage"
    body = {"outcome": "confirmed"}
    return Command("POST", path, body, {**body, "severity": None}, {"outcome": "rejected"})


def appeal(system: Container) -> Command:
    body = {"decision_event_id": _suspended(system), "statement": "not me"}
    return Command("POST", "appeals", body, dict(reversed(body.items())), {**body, "statement": ""})


def decide_appeal(system: Container) -> Command:
    body = {"outcome": "upheld", "reason": "checked"}
    other = {**body, "outcome": "overturned"}
    return Command(
        "POST",
        f"appeals/{_appealed(system)}/decide",
        body,
        {"reason": "checked", "outcome": "upheld"},
        other,
    )


def resend(system: Container) -> Command:
    path = f"notices/{_violation(system)['NoticeIssued']['notice_id']}/resend"
    body = {"reason": "bounced"}
    return Command("POST", path, body, dict(body), {"reason": ""})


# Each command of CONTRACT.md "Account commands" that records events, made possible on ACCOUNT,
# and the commands added to them (``resend``).
COMMANDS: dict[str, Callable[[Container], Command]] = {
    make.__name__: make
    for make in (
        dismiss,
        complete,
        suspend,
        reinstate,
        terminate,
        throttle,
        lift,
        adult_content,
        key_limits,
        limits,
        triage,
        appeal,
        decide_appeal,
        resend,
    )
}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_a_command_sent_again_with_its_key_is_recorded_once(
    system: Container, client: TestClient, name: str
) -> None:
    """Given a command's first answer under a key, the same request again (its body written
    the same or another way) answers 200 with the first answer's events and records nothing;
    another body, or the same request for another account, is a 409."""
    command = COMMANDS[name](system)
    headers = headers_of(system, Role.OPERATOR, f"op-{name}")
    first = command.send(client, headers, command.body)
    assert first.status_code == 200, first.text
    recorded = [e["event_id"] for e in first.json()["events"]]
    assert recorded
    version = system.store.head(ACCOUNT).version

    for body in (command.body, command.alike):
        again = command.send(client, headers, body)
        assert again.status_code == 200, (body, again.text)
        assert [e["event_id"] for e in again.json()["events"]] == recorded
        assert again.json()["standing"]["version"] == version
    if command.other is not None:
        other = command.send(client, headers, command.other)
        assert other.status_code == 409, other.text
        assert other.json()["error"]["code"] == "idempotency_key_reused"
    elsewhere = command.send(client, headers, command.body, account=OTHER)
    assert elsewhere.status_code == 409, elsewhere.text
    assert elsewhere.json()["error"]["code"] == "idempotency_key_reused"

    assert system.store.head(ACCOUNT).version == version
    assert system.store.head(OTHER).version == 0


def test_one_key_for_another_command_is_a_conflict_not_a_replay(
    system: Container, client: TestClient
) -> None:
    operator = headers_of(system, Role.OPERATOR, "op-decision-7")
    suspended = client.post(f"/v1/accounts/{ACCOUNT}/suspend", json={}, headers=operator)
    assert suspended.status_code == 200, suspended.text

    terminated = client.post(f"/v1/accounts/{ACCOUNT}/terminate", json={}, headers=operator)

    assert terminated.status_code == 409, terminated.text
    assert terminated.json()["error"]["code"] == "idempotency_key_reused"
    assert system.service.standing(ACCOUNT).status == "suspended"


def test_without_a_key_each_command_is_recorded(system: Container, client: TestClient) -> None:
    operator = headers_of(system, Role.OPERATOR)
    body = {"factor": 0.5, "reason": "load"}
    first = client.post(f"/v1/accounts/{ACCOUNT}/throttles", json=body, headers=operator)
    second = client.post(f"/v1/accounts/{ACCOUNT}/throttles", json=body, headers=operator)

    assert (first.status_code, second.status_code) == (200, 200)
    throttles = system.service.standing(ACCOUNT).to_json()["active_throttles"]
    assert len(throttles) == 2


def test_a_refused_first_attempt_records_nothing_and_its_retry_is_decided_afresh(
    system: Container, client: TestClient
) -> None:
    operator = headers_of(system, Role.OPERATOR, "op-reinstate")
    url = f"/v1/accounts/{ACCOUNT}/reinstate"
    refused = client.post(url, json={"reason": "ok"}, headers=operator)
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"]["code"] == "not_suspended"

    _suspended(system)
    retried = client.post(url, json={"reason": "ok"}, headers=operator)

    assert retried.status_code == 200, retried.text
    assert retried.json()["events"][0]["type"] == "AccountReinstated"


@pytest.mark.parametrize(
    "key", ["k" * 201, "notice-delivered:0190c0de", "gate:sustained_abuse:acct_1:1", ""]
)
def test_a_bad_key_is_422_and_nothing_is_recorded(
    system: Container, client: TestClient, key: str
) -> None:
    operator = headers_of(system, Role.OPERATOR, key)
    reporter = headers_of(system, Role.REPORTER, key)
    report = {"reported_account_id": ACCOUNT, "category": "spam"}
    for response in (
        client.post(f"/v1/accounts/{ACCOUNT}/suspend", json={}, headers=operator),
        client.delete(f"/v1/accounts/{ACCOUNT}/throttles/thr_1", headers=operator),
        client.post("/v1/abuse-reports", json=report, headers=reporter),
    ):
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["code"] == "validation_failed"
        assert [d["field"].lower() for d in error["details"]] == ["header.idempotency-key"]
    assert system.store.head(ACCOUNT).version == 0


def test_an_abuse_report_sent_again_with_its_key_is_filed_once(
    system: Container, client: TestClient
) -> None:
    reporter = headers_of(system, Role.REPORTER, "abuse-1")
    report = {"reported_account_id": ACCOUNT, "category": "spam", "description": "spam"}

    first = client.post("/v1/abuse-reports", json=report, headers=reporter)
    assert first.status_code == 202, first.text
    version = system.store.head(ACCOUNT).version
    spelled = {**report, "reporter_contact": None, "evidence_ref": None}
    again = client.post("/v1/abuse-reports", json=spelled, headers=reporter)
    other = client.post(
        "/v1/abuse-reports", json={**report, "description": "more"}, headers=reporter
    )
    elsewhere = client.post(
        "/v1/abuse-reports", json={**report, "reported_account_id": OTHER}, headers=reporter
    )

    assert again.status_code == 200, again.text
    assert again.json() == first.json()
    for refused in (other, elsewhere):
        assert refused.status_code == 409, refused.text
        assert refused.json()["error"]["code"] == "idempotency_key_reused"
    assert system.store.head(ACCOUNT).version == version
    assert system.store.head(OTHER).version == 0
    assert system.service.standing(ACCOUNT).open_abuse_reports == 1

    unkeyed = headers_of(system, Role.REPORTER)
    for _ in range(2):
        response = client.post("/v1/abuse-reports", json=report, headers=unkeyed)
        assert response.status_code == 202, response.text
    assert system.service.standing(ACCOUNT).open_abuse_reports == 3

    bare = {"reported_account_id": ACCOUNT, "category": "spam"}  # no description: an empty one
    assert client.post("/v1/abuse-reports", json=bare, headers=unkeyed).status_code == 202
    received = [e for e in system.store.iter_stream(ACCOUNT) if e.type == "AbuseReportReceived"]
    assert [e.data["description"] for e in received] == ["spam"] * 3 + [""]


THREADS = 8


@pytest.mark.postgres
@pytest.mark.parametrize("name", ["terminate", "suspend"])
def test_racing_retries_of_one_command_are_recorded_once(
    pg_url: str, clock: FakeClock, name: str
) -> None:
    """Threads of two processes' worth of services (each its own engine and account locks,
    so only the database keeps them apart) send one command under one key at once: each
    answers 200 with the same events, recorded once. A second terminate would be refused, so
    a request that decides after the first is recorded must answer that one's events."""
    upgrade(pg_url)
    start = threading.Barrier(THREADS)
    with ExitStack() as stack:
        systems = [stack.enter_context(open_system(pg_url, clock)) for _ in range(2)]
        clients = [stack.enter_context(TestClient(create_app(s))) for s in systems]
        command = COMMANDS[name](systems[0])
        headers = headers_of(systems[0], Role.OPERATOR, f"race-{name}")

        def send(thread: int) -> Any:
            start.wait()
            return command.send(clients[thread % 2], headers, command.body)

        with ThreadPoolExecutor(THREADS) as pool:
            answers = list(pool.map(send, range(THREADS)))

        assert [a.status_code for a in answers] == [200] * THREADS, [a.text for a in answers]
        recorded = {tuple(e["event_id"] for e in a.json()["events"]) for a in answers}
        assert len(recorded) == 1
        kind = "AccountTerminated" if name == "terminate" else "AccountSuspended"
        log = list(systems[0].store.iter_stream(ACCOUNT))
        assert [e.type for e in log].count(kind) == 1
