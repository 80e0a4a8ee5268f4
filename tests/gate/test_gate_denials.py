"""Denial counting, from which the caller raises sustained_abuse and rate_limit_circumvention."""

from __future__ import annotations

import pytest

from enforcement.gate import DenialStats, EmbeddedGate, Gate
from enforcement.policy import DEFAULT_POLICY
from tests.gate.harness import Backend, FakeClock, embedded_backend


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


def test_a_denied_key_leaves_the_minute_at_its_end() -> None:
    backend = embedded_backend()
    gate = starved(backend)
    gate.check("acct", "key")
    backend.advance(60)  # exactly: Redis drops a score at the horizon too
    assert gate.denial_stats("acct").denied_keys_last_minute == 0


def test_denied_keys_are_capped(gate: Gate) -> None:
    gate.set_limits("acct", None, rpm=1, tpd=100, version=1)
    gate.check("acct", "k0")

    seen: list[int] = []
    held: list[int] = []
    for i in range(40):
        seen.append(gate.check("acct", f"k{i}").denied_keys_last_minute)
        held.append(gate.denial_stats("acct").denied_keys_last_minute)

    assert seen[:3] == [1, 2, 3] and max(seen) == 32 and seen[-1] == 32
    assert held == seen  # each check reports what it leaves: the 32 latest, the others dropped


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


def test_keys_denied_less_than_a_minute_apart_count_together_to_the_microsecond() -> None:
    # Embedded only: the fake clock. Times were kept in whole milliseconds: "a", denied 0.9 ms
    # into its millisecond, was taken as a minute old by "b", denied 59.9996 s later.
    backend = embedded_backend()
    gate = starved(backend)
    backend.advance(0.0009)
    gate.check("acct", "a")
    backend.advance(59.9996)

    assert gate.check("acct", "b").denied_keys_last_minute == 2
    backend.advance(0.0005)  # a minute and 0.1 ms after "a"
    assert gate.check("acct", "b").denied_keys_last_minute == 1


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


def starved(backend: Backend, **settings: int) -> Gate:
    """A gate on which every check of "acct" is a (token quota) denial."""
    gate = backend.make(**settings)
    gate.set_limits("acct", None, rpm=600, tpd=0, version=1)
    return gate


def deny(gate: Gate) -> int:
    decision = gate.check("acct", "key")
    assert decision.reason == "token_quota_exceeded"
    return decision.denials_in_window


@pytest.mark.parametrize(
    ("start_s", "step_s", "seen"),
    [(0.9, 0.75, [1, 2, 3]), (0, 1.0, [1, 2, 2])],
    ids=["under the window", "the window apart"],
)
def test_count_denials_reach_the_count_only_within_the_window(
    backend: Backend, start_s: float, step_s: float, seen: list[int]
) -> None:
    # POLICY.md: `count` denials within `window`: the count-th most recent less than the
    # window before the latest. On Redis these are real seconds (0.5 s to spare under the
    # window; the window apart is a little more than the window there). The gate had counted
    # denials in buckets (here of 1 s), each for between the window less one bucket and the
    # window: a first denial 0.9 s into its bucket was forgotten 1.5 s later.
    gate = starved(backend, denial_window_s=2, denial_count=3)
    backend.advance(start_s)
    counts = [deny(gate)]
    for _ in range(2):
        backend.advance(step_s)
        counts.append(deny(gate))

    assert counts == seen


def test_each_denial_leaves_the_count_as_it_ages(backend: Backend) -> None:
    # On Redis these are real seconds: every count has 0.6 s to spare on a loaded machine.
    gate = starved(backend, denial_window_s=3, denial_count=3)
    deny(gate)
    backend.advance(1)
    deny(gate)
    backend.advance(1)
    assert deny(gate) == 3

    left = []
    for _ in range(3):
        backend.advance(1 if left else 1.4)  # 3.4 s after the first, then 1 s after each
        left.append(gate.denial_stats("acct").denials_in_window)

    assert left == [2, 1, 0]
    assert deny(gate) == 1


def test_the_count_stops_at_the_policy_count(backend: Backend) -> None:
    # Exact up to the count, and no more: the gate keeps only the latest `count` denials.
    gate = starved(backend, denial_count=3)

    seen = [deny(gate) for _ in range(6)]

    assert seen == [1, 2, 3, 3, 3, 3]
    assert gate.denial_stats("acct") == DenialStats(3, 600, 1)
    if isinstance(gate, EmbeddedGate):  # on Redis: test_gate_redis
        assert len(gate._accounts["acct"].denials) == 3


@pytest.mark.parametrize(("span_s", "counted"), [(599.999, 100), (600, 99), (600.001, 99)])
def test_a_hundred_denials_count_within_ten_minutes_to_the_millisecond(
    span_s: float, counted: int
) -> None:
    # The defaults (POLICY.md: 100 denials within 10 minutes), the first denial 9 s into the
    # 10 s bucket that had counted it: by the hundredth, 593 s later, it had been forgotten.
    # Embedded only: the fake clock puts the denials exactly there.
    backend = embedded_backend()
    gate = starved(backend)
    backend.advance(9)
    start = backend.now()
    seen = []
    for i in range(100):
        backend.advance(start + span_s * i / 99 - backend.now())
        seen.append(deny(gate))

    assert seen[:-1] == list(range(1, 100))
    assert seen[-1] == counted


@pytest.mark.parametrize("count", [0, 10_001, True])
def test_the_count_is_a_whole_number_from_one_to_ten_thousand(backend: Backend, count: int) -> None:
    with pytest.raises(ValueError, match="denial_count"):
        backend.make(denial_count=count)


@pytest.mark.parametrize("count", [1, 10_000])
def test_the_count_may_be_one_or_ten_thousand(backend: Backend, count: int) -> None:
    assert deny(starved(backend, denial_count=count)) == 1


def test_an_unconfigured_gate_counts_denials_as_the_default_policy() -> None:
    rule = DEFAULT_POLICY.sustained_abuse_denials
    gate = EmbeddedGate()
    assert (gate.denial_count, gate.denial_window_s) == (rule.count, rule.window.total_seconds())
