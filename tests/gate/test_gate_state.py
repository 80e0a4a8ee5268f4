"""Account status (AUP §6) and state updates from the event log: versioned, idempotent."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from enforcement.gate import EmbeddedGate, Gate
from tests.gate.harness import Backend, FakeClock


def test_a_suspended_account_is_refused_and_nothing_is_counted(gate: Gate) -> None:
    gate.set_limits("acct", "key", rpm=5, tpd=100, version=1)
    gate.set_status("acct", "suspended", None, version=2)

    refused = [gate.check("acct", "key", tokens=50) for _ in range(10)]

    assert {(d.allowed, d.reason) for d in refused} == {(False, "suspended")}
    assert refused[0].retry_after_s == 0  # indefinite: no wait ends it
    # The contract lists retry-after on every denial: a day, and no exact wait (-ms).
    headers = refused[0].headers()
    assert (headers["retry-after"], "retry-after-ms" in headers) == ("86400", False)
    assert gate.denial_stats("acct").denials_in_window == 0  # not a rate/quota denial
    gate.set_status("acct", "active", None, version=3)
    reinstated = gate.check("acct", "key", tokens=50)
    assert reinstated.allowed
    assert (reinstated.remaining_requests, reinstated.remaining_tokens) == (4, 50)


def test_a_terminated_account_is_refused_with_that_reason(gate: Gate) -> None:
    gate.set_status("acct", "terminated", None, version=7)

    decision = gate.check("acct", "any-key", tokens=1)

    assert (decision.allowed, decision.reason, decision.retry_after_s) == (False, "terminated", 0)
    assert decision.headers()["retry-after"] == "86400"
    assert gate.check("other-acct", "any-key").allowed


def test_termination_outranks_an_exhausted_limit(gate: Gate) -> None:
    gate.set_limits("acct", "key", rpm=1, tpd=100, version=1)
    gate.check("acct", "key")
    gate.set_status("acct", "terminated", None, version=2)

    assert gate.check("acct", "key").reason == "terminated"


def test_a_suspension_with_until_ends_by_itself(backend: Backend, gate: Gate) -> None:
    # On Redis these are real seconds: the first check has 0.9 s to spare on a loaded machine.
    gate.set_status("acct", "suspended", backend.at(0.9), version=4)
    refused = gate.check("acct", "key")
    # Up to 0.9 s, and the millisecond the gate rounds ``until`` up to.
    assert refused.reason == "suspended" and 0 < refused.retry_after_s <= 0.901
    assert refused.headers()["retry-after"] == "1"

    backend.advance(1.0)

    assert gate.check("acct", "key").allowed


def test_a_stale_status_never_overwrites_a_newer_one(gate: Gate) -> None:
    assert gate.set_status("acct", "suspended", None, version=5)
    assert not gate.set_status("acct", "active", None, version=3)  # late delivery of v3
    assert not gate.set_status("acct", "suspended", None, version=5)  # redelivery

    assert gate.check("acct", "key").reason == "suspended"


def test_a_stale_limit_never_overwrites_a_newer_one(gate: Gate) -> None:
    assert gate.set_limits("acct", "key", rpm=5, tpd=100, version=2)
    assert not gate.set_limits("acct", "key", rpm=500, tpd=10_000, version=1)
    assert not gate.set_limits("acct", "key", rpm=500, tpd=10_000, version=2)

    assert gate.check("acct", "key").limit_requests == 5


def test_versions_are_per_item(gate: Gate) -> None:
    assert gate.set_limits("acct", "a", rpm=5, tpd=100, version=9)
    assert gate.set_limits("acct", "b", rpm=7, tpd=100, version=3)
    assert gate.set_limits("acct", None, rpm=50, tpd=1000, version=4)
    assert gate.apply_throttle("acct", "t1", None, 0.5, None, version=2)
    assert gate.set_status("acct", "active", None, version=1)

    assert gate.check("acct", "b").limit_requests == 3  # 7 x 0.5


def test_a_stale_throttle_update_is_ignored(gate: Gate) -> None:
    gate.set_limits("acct", "key", rpm=100, tpd=1000, version=1)
    assert gate.apply_throttle("acct", "t1", "key", 0.5, None, version=3)
    assert not gate.lift_throttle("acct", "t1", version=2)
    assert gate.check("acct", "key").limit_requests == 50

    assert gate.lift_throttle("acct", "t1", version=4)
    assert not gate.apply_throttle("acct", "t1", "key", 0.5, None, version=3)  # redelivered

    assert gate.check("acct", "key").limit_requests == 100


def test_a_lift_leaves_the_other_throttles_and_counts_once(backend: Backend, gate: Gate) -> None:
    gate.apply_throttle("acct", "t1", None, 0.5, backend.at(3600), version=1)
    gate.apply_throttle("acct", "t2", None, 0.25, backend.at(3600), version=2)
    assert gate.lift_throttle("acct", "t2", version=3)
    assert not gate.lift_throttle("acct", "t2", version=3)  # redelivered

    assert gate.check("acct", "key").limit_requests == 300


def test_a_lift_that_overtakes_its_throttle_wins(gate: Gate) -> None:
    assert gate.lift_throttle("acct", "t9", version=6)
    assert not gate.apply_throttle("acct", "t9", None, 0.1, None, version=5)

    assert gate.check("acct", "key").limit_requests == 600


def test_lifted_throttle_tombstones_are_bounded(gate: Gate) -> None:
    for version in range(1, 101):
        gate.apply_throttle("acct", f"t{version}", None, 0.5, None, version=2 * version)
        gate.lift_throttle("acct", f"t{version}", version=2 * version + 1)
    gate.apply_throttle("acct", "live", None, 0.5, None, version=1000)

    assert gate.check("acct", "key").limit_requests == 300
    assert not gate.apply_throttle("acct", "t100", None, 0.5, None, version=200)  # still known
    assert not gate.apply_throttle("acct", "t69", None, 0.5, None, version=138)  # the 32nd
    assert gate.apply_throttle("acct", "t68", None, 0.5, None, version=136)  # forgotten


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda g: g.check("acct", "key", tokens=-1), "tokens"),
        (lambda g: g.check("bad{id}", "key"), "account_id"),
        (lambda g: g.check("acct", ""), "key_id"),
        (lambda g: g.set_limits("acct", None, rpm=0, tpd=1, version=1), "rpm"),
        pytest.param(lambda g: g.check(["acct"], "key"), "account_id", id="unhashable-account"),
        pytest.param(lambda g: g.check("acct", ["key"]), "key_id", id="unhashable-key"),
        pytest.param(
            lambda g: g.set_limits("acct", None, rpm=10**7 + 1, tpd=1, version=1),
            "rpm",
            id="rpm-over",
        ),
        pytest.param(
            lambda g: g.set_limits("acct", None, rpm=1, tpd=-1, version=1), "tpd", id="tpd-negative"
        ),
        pytest.param(
            lambda g: g.set_limits("acct", None, rpm=1, tpd=10**15 + 1, version=1),
            "tpd",
            id="tpd-over",
        ),
        pytest.param(
            lambda g: g.set_limits("acct", "k" * 257, rpm=1, tpd=1, version=1),
            "key_id",
            id="limits-key",
        ),
        pytest.param(
            lambda g: g.set_limits("bad{id}", None, rpm=1, tpd=1, version=1),
            "account_id",
            id="limits-account",
        ),
        pytest.param(
            lambda g: g.apply_throttle("bad{id}", "t", None, 0.5, None, 1),
            "account_id",
            id="throttle-account",
        ),
        pytest.param(
            lambda g: g.apply_throttle("acct", "", None, 0.5, None, 1),
            "throttle_id",
            id="throttle-id",
        ),
        pytest.param(
            lambda g: g.apply_throttle("acct", "t", "", 0.5, None, 1), "key_id", id="throttle-key"
        ),
        pytest.param(
            lambda g: g.apply_throttle("acct", "t", None, 0.5, None, -1),
            "version",
            id="throttle-version",
        ),
        pytest.param(lambda g: g.lift_throttle("bad{id}", "t", 1), "account_id", id="lift-account"),
        pytest.param(lambda g: g.lift_throttle("acct", "", 1), "throttle_id", id="lift-id"),
        pytest.param(lambda g: g.lift_throttle("acct", "t", -1), "version", id="lift-version"),
        pytest.param(lambda g: g.denial_stats("bad{id}"), "account_id", id="stats-account"),
        pytest.param(lambda g: g.throttle_ids("bad{id}"), "account_id", id="throttle-ids-account"),
        pytest.param(lambda g: g.holds_status("bad{id}"), "account_id", id="holds-account"),
        pytest.param(
            lambda g: g.set_status("bad{id}", "active", None, 1), "account_id", id="status-account"
        ),
        pytest.param(
            lambda g: g.set_status("acct", "active", None, -1), "version", id="status-version"
        ),
        (lambda g: g.set_limits("acct", None, rpm=1, tpd=1, version=-1), "version"),
        (lambda g: g.apply_throttle("acct", "t", None, 0, None, 1), "factor"),
        (lambda g: g.apply_throttle("acct", "t", None, 1.5, None, 1), "factor"),
        (lambda g: g.apply_throttle("acct", "t", None, 0.5, datetime(2030, 1, 1), 1), "aware"),
        (lambda g: g.set_status("acct", "banned", None, 1), "status"),
        (lambda g: g.set_status("acct", "terminated", datetime(2030, 1, 1), 1), "until"),
    ],
)
def test_bad_arguments_are_refused(gate: Gate, call: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call(gate)  # type: ignore[operator]


@pytest.mark.parametrize(("name", "value"), [("rpm", 0), ("tpd", -1)])
def test_bad_default_limits_are_refused(name: str, value: int) -> None:
    with pytest.raises(ValueError, match=name):
        EmbeddedGate(**{f"default_{name}": value})


def test_the_largest_limits_ids_and_factor_are_accepted(gate: Gate) -> None:
    assert gate.set_limits("acct", None, rpm=10**7, tpd=10**15, version=1)
    assert gate.set_limits("acct", "k" * 256, rpm=10**7, tpd=10**15, version=1)
    assert gate.apply_throttle("acct", "t" * 256, "k" * 256, 1, None, version=2)
    decision = gate.check("acct", "k" * 256, tokens=10**15)
    assert (decision.limit_requests, decision.remaining_tokens) == (10**7, 0)


def test_the_gate_names_the_throttles_it_holds_and_has_not_lifted(gate: Gate) -> None:
    assert gate.throttle_ids("acct") == set()
    gate.apply_throttle("acct", "thr_a", None, 0.5, None, version=1)
    gate.apply_throttle("acct", "thr_k", "key", 0.25, None, version=2)
    gate.lift_throttle("acct", "thr_gone", version=3)  # a lift before its throttle: a tombstone
    assert gate.throttle_ids("acct") == {"thr_a", "thr_k"}
    gate.lift_throttle("acct", "thr_a", version=4)
    assert gate.throttle_ids("acct") == {"thr_k"}
    assert gate.throttle_ids("other") == set()


def test_a_restriction_ending_within_a_millisecond_holds_until_its_microsecond() -> None:
    """The gate keeps times in milliseconds, the standing in microseconds: a suspension or
    throttle the policy records ends at ``now + span``, rarely on a whole millisecond. Rounded
    down, the gate let the account through for up to a millisecond while its standing still
    said suspended; rounded up, it never ends before the standing's does."""
    until = datetime(2026, 11, 24, 10, 1, 0, 500, tzinfo=UTC)  # .000500: mid-millisecond
    clock = FakeClock(until.timestamp() - 0.0001)  # 100 µs before it ends
    gate = EmbeddedGate(clock=clock)
    gate.set_status("acct", "suspended", until, version=1)
    gate.apply_throttle("other", "thr_1", None, 0.5, until, version=1)
    gate.set_limits("other", "key", rpm=10, tpd=100, version=1)

    assert gate.check("acct", "key").reason == "suspended"
    assert gate.check("other", "key").limit_requests == 5

    clock.advance(0.001)  # past it by more than the rounding
    assert gate.check("acct", "key").allowed
    assert gate.check("other", "key").limit_requests == 10
