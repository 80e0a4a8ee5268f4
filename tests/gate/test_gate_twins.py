"""The two backends are one behaviour: the same random history gives the same answers.

Effective limits are kept to divisors of 60 per minute, so every emission interval is a whole
number of seconds and the few milliseconds of real time the Redis run takes never change a
count; the times (resets, retry-after) are compared loosely for the same reason. The embedded
gate's clock is frozen, so the run must not straddle a UTC midnight either (``redis_client``
starts it clear of one).
"""

from __future__ import annotations

import random
import time
from typing import Any

import pytest
import redis

from enforcement.gate import EmbeddedGate, Gate, RedisGate
from tests.gate.harness import FakeClock

pytestmark = pytest.mark.redis

ACCOUNTS = ["acct_1", "acct_2"]
KEYS = [None, "k1", "k2", "k3"]
RPMS = [6, 12, 20, 60]  # x 0.5, 0.25 or 0.1 still divides 60 (120: a 0.5 s interval)
FACTORS = [0.5, 0.25, 0.1]
TIMED = ("reset_requests_s", "reset_tokens_s", "retry_after_s")


def operation(rng: random.Random) -> tuple[str, tuple[Any, ...]]:
    account = rng.choice(ACCOUNTS)
    version = rng.randint(1, 40)
    roll = rng.random()
    if roll < 0.1:
        limits = (rng.choice(RPMS), rng.choice([50, 100, 1000]))
        return "set_limits", (account, rng.choice(KEYS), *limits, version)
    if roll < 0.17:
        throttle = (f"t{rng.randint(1, 4)}", rng.choice(KEYS), rng.choice(FACTORS))
        return "apply_throttle", (account, *throttle, None, version)
    if roll < 0.21:
        return "lift_throttle", (account, f"t{rng.randint(1, 4)}", version)
    if roll < 0.25:
        status = rng.choice(["active", "active", "suspended", "terminated"])
        return "set_status", (account, status, None, version)
    return "check", (account, rng.choice(KEYS[1:]), rng.choice([0, 0, 1, 5, 20, 60]))


def answer(gate: Gate, name: str, args: tuple[Any, ...]) -> Any:
    result = getattr(gate, name)(*args)
    if name != "check":
        return result
    fields = result.__class__.__dataclass_fields__
    return {f: getattr(result, f) for f in fields if f not in TIMED}, result


@pytest.mark.parametrize("seed", range(6))
def test_same_history_same_answers(redis_client: redis.Redis, seed: int) -> None:
    settings = {"default_rpm": 60, "default_tpd": 500}
    embedded = EmbeddedGate(clock=FakeClock(time.time()), **settings)  # frozen at Redis' now
    on_redis = RedisGate(redis_client, **settings)
    rng = random.Random(seed)
    started = time.monotonic()

    for step in range(300):
        name, args = operation(rng)
        expected, got = answer(embedded, name, args), answer(on_redis, name, args)
        if name != "check":
            assert got == expected, (step, name, args)
            continue
        assert got[0] == expected[0], (step, name, args)
        # Redis' clock runs on while the embedded gate's is frozen: its times (the day's reset
        # above all) may be off by as long as the run has taken so far.
        drift = time.monotonic() - started
        for field in TIMED:
            expected_time = getattr(expected[1], field)
            assert getattr(got[1], field) == pytest.approx(expected_time, abs=1 + drift)
