"""The application's gate learns an account's standing from the database before checking an
account it holds no status for (``gatekeeping.GateSeeder``): a Redis that lost its data, or a
restarted process's empty embedded gate, refuses a suspended account from the first request,
without waiting for a re-seed. No workers run in these tests: nothing else could tell the gate."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
import redis
from fastapi.testclient import TestClient
from test_service_support import OPERATOR, FakeClock, open_system

from enforcement import gatekeeping
from enforcement import operator_decisions as ops
from enforcement.api.app import create_app
from enforcement.api.deps import get_principal
from enforcement.bootstrap import Container, bootstrap
from enforcement.gate import EmbeddedGate, GateUnavailable, RedisGate
from enforcement.roles import Role
from enforcement.settings import Settings
from enforcement.tokens import Principal


@pytest.fixture
def redis_system(database_url: str, redis_url: str, clock: FakeClock) -> Iterator[Container]:
    container = bootstrap(Settings(database_url=database_url, redis_url=redis_url), clock=clock)
    assert isinstance(container.gate, RedisGate)
    try:
        yield container
    finally:
        container.close()


def test_a_redis_that_lost_its_data_refuses_a_suspended_account_at_once(
    redis_system: Container, redis_url: str
) -> None:
    service, gate = redis_system.service, redis_system.gate
    service.operator("acct_s", ops.Suspend("review"), OPERATOR)
    service.operator("acct_t", ops.ApplyThrottle(0.25, "load"), OPERATOR)
    service.operator("acct_x", ops.Terminate("fraud"), OPERATOR)
    limit = gate.check("acct_t", "key_1").limit_requests

    client = redis.Redis.from_url(redis_url)
    client.flushall()  # Redis restarted without persistence
    client.close()

    assert gate.check("acct_s", "key_1").reason == "suspended"
    assert gate.check("acct_x", "key_1").reason == "terminated"
    throttled = gate.check("acct_t", "key_1")
    assert throttled.allowed and throttled.limit_requests == limit == gate.default_rpm // 4
    assert gate.check("acct_new", "key_1").allowed  # no events: active, default limits


def test_a_restarted_process_gate_refuses_a_suspended_account_before_any_seeding(
    database_url: str, clock: FakeClock
) -> None:
    with open_system(database_url, clock) as first:
        first.service.operator("acct_s", ops.Suspend("review"), OPERATOR)

    with open_system(database_url, clock) as restarted:  # its embedded gate starts empty
        assert isinstance(restarted.gate, EmbeddedGate)
        assert restarted.gate.check("acct_s", "key_1").reason == "suspended"
        restarted.service.operator("acct_s", ops.Reinstate("cleared"), OPERATOR)
        assert restarted.gate.check("acct_s", "key_1").allowed


def test_a_restarted_process_gate_learns_an_account_of_a_single_event(
    database_url: str, clock: FakeClock
) -> None:
    # Version 1 is a standing like any other: only version 0 (no events) has nothing to apply.
    with open_system(database_url, clock) as first:
        first.service.operator("acct_l", ops.ConfigureLimits(7, 1000, key_id="key_1"), OPERATOR)
        assert first.store.head("acct_l").version == 1

    with open_system(database_url, clock) as restarted:  # its embedded gate starts empty
        assert restarted.gate.check("acct_l", "key_1").limit_requests == 7


def test_a_database_that_cannot_answer_makes_the_check_unavailable(
    redis_system: Container,
) -> None:
    redis_system.engine.dispose()
    redis_system.engine.pool._creator = _refuse  # type: ignore[attr-defined]

    with pytest.raises(
        GateUnavailable, match=r"could not learn the account.s standing: .*database down"
    ):
        redis_system.gate.check("acct_unknown", "key_1")


GATE_UNAVAILABLE = (
    "The gate's store, or the database it learns an account's standing from, is unavailable."
)


def _refuse() -> object:
    raise ConnectionRefusedError("database down")


def test_a_status_pushed_to_an_empty_gate_brings_the_rest_of_the_standing(
    database_url: str, redis_url: str, clock: FakeClock
) -> None:
    # A status makes an account known (its seeder no longer runs), so the push of a suspension
    # to a gate that had not learned the account gives it the limits and throttles too.
    # The account-wide ceiling (40 a minute, 10 throttled) binds before the key's (100, 25).
    embedded = Settings(database_url=database_url)
    with_redis = Settings(database_url=database_url, redis_url=redis_url)
    first = bootstrap(with_redis, clock=clock)
    try:
        first.service.operator("acct", ops.ConfigureLimits(100, 1000, key_id="key_1"), OPERATOR)
        first.service.operator("acct", ops.ConfigureLimits(40, 1000), OPERATOR)
        first.service.operator("acct", ops.ApplyThrottle(0.25, "load"), OPERATOR)
        assert first.gate.check("acct", "key_1").limit_requests == 10
        client = redis.Redis.from_url(redis_url)
        client.flushall()  # Redis lost its data
        client.close()
        first.service.operator("acct", ops.Suspend("review"), OPERATOR)
        first.service.operator("acct", ops.Reinstate("cleared"), OPERATOR)
        assert first.gate.check("acct", "key_1").limit_requests == 10
    finally:
        first.close()

    restarted = bootstrap(embedded, clock=clock)  # an empty embedded gate
    try:
        restarted.service.operator("acct", ops.Suspend("again"), OPERATOR)
        restarted.service.operator("acct", ops.Reinstate("cleared"), OPERATOR)
        decision = restarted.gate.check("acct", "key_1")
        assert decision.allowed and decision.limit_requests == 10
    finally:
        restarted.close()


def test_the_check_is_503_when_the_seeder_cannot_read(database_url: str, clock: FakeClock) -> None:
    container = bootstrap(Settings(database_url=database_url), clock=clock)
    app = create_app(container)
    app.dependency_overrides[get_principal] = lambda: Principal("tok_g", "gw", Role.GATEWAY)
    with TestClient(app, raise_server_exceptions=False) as client:
        ok = client.post("/v1/gate/check", json={"account_id": "a1", "key_id": "k", "tokens": 1})
        assert ok.status_code == 200, ok.text
        container.engine.dispose()
        container.engine.pool._creator = _refuse  # type: ignore[attr-defined]
        known = client.post("/v1/gate/check", json={"account_id": "a1", "key_id": "k"})
        down = client.post("/v1/gate/check", json={"account_id": "a2", "key_id": "k"})
    container.close()
    assert known.status_code == 200, known.text  # the gate holds a1's status: no read
    assert down.status_code == 503, down.text
    assert down.json() == {
        "error": {
            "code": "dependency_unavailable",
            "message": GATE_UNAVAILABLE,
            "details": None,
        }
    }


def test_the_check_answers_each_decision_with_its_status(system: Container) -> None:
    """200 when allowed, 429 for a rate or token quota, 403 for a suspended or terminated
    account: each with the decision itself as its body, not the error body."""
    for account_id, command in (
        ("acct_r", ops.ConfigureLimits(requests_per_minute=1, tokens_per_day=1000, key_id="k")),
        ("acct_q", ops.ConfigureLimits(requests_per_minute=600, tokens_per_day=0, key_id="k")),
        ("acct_s", ops.Suspend("review", notify=False)),
        ("acct_t", ops.Terminate("fraud", notify=False)),
    ):
        system.service.operator(account_id, command, OPERATOR)
    app = create_app(system)
    app.dependency_overrides[get_principal] = lambda: Principal("tok_g", "gw", Role.GATEWAY)
    with TestClient(app) as client:
        answers = [
            client.post("/v1/gate/check", json={"account_id": account_id, "key_id": "k"})
            for account_id in ("acct_r", "acct_r", "acct_q", "acct_s", "acct_t")
        ]

    assert [(a.status_code, a.json()["allowed"], a.json()["reason"]) for a in answers] == [
        (200, True, "ok"),
        (429, False, "rate_limited"),
        (429, False, "token_quota_exceeded"),
        (403, False, "suspended"),
        (403, False, "terminated"),
    ]


def test_embedded_gates_of_two_processes_learn_each_others_decisions_in_time(
    database_url: str, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two serve processes on one database without Redis: each tells only its own gate what it
    # decides; the other learns it when it learns the account again (EMBEDDED_RELEARN_S).
    monkeypatch.setattr(gatekeeping, "EMBEDDED_RELEARN_S", 2.0)
    settings = Settings(database_url=database_url)
    a, b = bootstrap(settings, clock=clock), bootstrap(settings, clock=clock)
    try:
        a.service.operator("acct", ops.Suspend("review"), OPERATOR)
        assert b.gate.check("acct", "key_1").reason == "suspended"  # learned: never told
        a.service.operator("acct", ops.Reinstate("cleared"), OPERATOR)
        assert a.gate.check("acct", "key_1").allowed
        assert b.gate.check("acct", "key_1").reason == "suspended"  # learned under 2 s ago
        clock.advance(timedelta(seconds=2.05))  # the embedded gates read the use cases' clock
        assert b.gate.check("acct", "key_1").allowed
    finally:
        a.close()
        b.close()
