"""Denial counting, from which the caller raises sustained_abuse and rate_limit_circumvention."""

from __future__ import annotations

import pytest

from enforcement.gate import DenialStats, EmbeddedGate, Gate
from tests.gate.harness import Backend, FakeClock


def test_rate_and_quota_denials_are_counted_per_account(gate: Gate) -> None:
    gate.set_limits("acct", "key", rpm=1, tpd=10, version=1)
    gate.set_limits("acct", "other", rpm=100, tpd=10, version=1)
    assert gate.check("acct", "key").denials_in_window == 0

    denied = [gate.check("acct", "key").denials_in_window for _ in range(4)]
    quota = gate.check("acct", "other", tokens=11)

    assert denied == [1, 2, 3, 4]
    assert quota.reason == "token_quota_exceeded" and quota.denials_in_window == 5
    assert gate.denial_stats("acct") == DenialStats(5, 600, 2)
    assert gate.denial_stats("another") == DenialStats(0, 600, 0)


def test_distinct_denied_keys_in_the_last_minute(gate: Gate) -> None:
    for key in ("a", "b", "c"):
        gate.set_limits("acct", key, rpm=1, tpd=100, version=1)
        gate.check("acct", key)

    seen = [gate.check("acct", key).denied_keys_last_minute for key in ("a", "a", "b", "c", "c")]

    assert seen == [1, 1, 2, 3, 3]


def test_denied_keys_are_capped(gate: Gate) -> None:
    gate.set_limits("acct", None, rpm=1, tpd=100, version=1)
    gate.check("acct", "k0")

    seen = [gate.check("acct", f"k{i}").denied_keys_last_minute for i in range(40)]

    assert seen[:3] == [1, 2, 3] and max(seen) == 32 and seen[-1] == 32


def test_the_denial_window_slides(backend: Backend) -> None:
    gate = backend.make(denial_window_s=2)
    gate.set_limits("acct", "key", rpm=1, tpd=100, version=1)
    gate.check("acct", "key")
    for _ in range(3):
        gate.check("acct", "key")
    assert gate.denial_stats("acct").denials_in_window == 3

    backend.advance(2.2)

    assert gate.denial_stats("acct").denials_in_window == 0
    assert gate.check("acct", "key").denials_in_window == 1


def test_denied_keys_leave_after_a_minute() -> None:
    # Embedded only: on Redis the same 60 s horizon is a TTL, checked in test_gate_redis.
    clock = FakeClock()
    gate = EmbeddedGate(clock=clock)
    gate.set_limits("acct", None, rpm=1, tpd=100, version=1)
    gate.check("acct", "a")
    gate.check("acct", "a")
    clock.advance(30)
    assert gate.check("acct", "b").denied_keys_last_minute == 2

    clock.advance(31)

    assert gate.denial_stats("acct").denied_keys_last_minute == 1  # "a" has left, "b" stays
    assert gate.check("acct", "c").allowed  # the account refilled meanwhile
    assert gate.check("acct", "c").denied_keys_last_minute == 2


@pytest.mark.parametrize("window_s", [60, 600, 3600])
def test_denials_count_within_the_configured_window(window_s: int) -> None:
    clock = FakeClock()
    gate = EmbeddedGate(clock=clock, denial_window_s=window_s)
    gate.set_limits("acct", None, rpm=1, tpd=100, version=1)
    gate.check("acct", "a")
    gate.check("acct", "a")

    clock.advance(window_s * 0.9)
    assert gate.denial_stats("acct").denials_in_window == 1
    clock.advance(window_s * 0.2)
    assert gate.denial_stats("acct").denials_in_window == 0
