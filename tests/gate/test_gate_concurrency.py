"""Many callers at once on one key never get more than the limit."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.synchronize import Barrier

import pytest

from enforcement.gate import Gate, RedisGate

THREADS = 8


def hammer(calls: int, check: Callable[[int], bool]) -> tuple[int, float]:
    """Run ``check(i)`` from THREADS threads at once; (how many allowed, seconds taken)."""
    started = time.monotonic()
    with ThreadPoolExecutor(THREADS) as pool:
        allowed = sum(pool.map(check, range(calls)))
    return allowed, time.monotonic() - started


def bound(limit: int, interval_s: float, elapsed_s: float) -> int:
    """The most GCRA may allow: the burst, plus what refilled while the test ran."""
    return limit + int(elapsed_s // interval_s)


def test_threads_on_one_key_never_exceed_the_limit(gate: Gate) -> None:
    gate.set_limits("acct", "key", rpm=20, tpd=10**9, version=1)  # one per 3 s after the burst

    allowed, elapsed = hammer(400, lambda _: gate.check("acct", "key").allowed)

    assert 20 <= allowed <= bound(20, 3, elapsed)


def test_threads_on_many_keys_never_exceed_the_account_ceiling(gate: Gate) -> None:
    gate.set_limits("acct", None, rpm=20, tpd=10**9, version=1)

    allowed, elapsed = hammer(400, lambda i: gate.check("acct", f"key{i % 16}").allowed)

    assert 20 <= allowed <= bound(20, 3, elapsed)


def test_threads_never_exceed_the_token_quota(gate: Gate) -> None:
    gate.set_limits("acct", "key", rpm=10_000, tpd=100, version=1)

    allowed, _ = hammer(400, lambda _: gate.check("acct", "key", tokens=7).allowed)

    assert allowed == 14  # 98 of 100 tokens


def _process_worker(
    url: str, calls: int, barrier: Barrier, results: multiprocessing.Queue[int]
) -> None:
    gate = RedisGate.from_url(url)
    gate.check("warm-up", "key")  # connect and load the script before the race
    barrier.wait()
    results.put(sum(gate.check("acct", "key").allowed for _ in range(calls)))


@pytest.mark.redis
def test_processes_on_one_key_never_exceed_the_limit(redis_url: str) -> None:
    """Redis only: processes share nothing else."""
    RedisGate.from_url(redis_url).set_limits("acct", "key", rpm=20, tpd=10**9, version=1)
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(4), ctx.Queue()
    workers = [
        ctx.Process(target=_process_worker, args=(redis_url, 100, barrier, results))
        for _ in range(4)
    ]
    started = time.monotonic()
    for worker in workers:
        worker.start()
    allowed = sum(results.get(timeout=30) for _ in workers)
    elapsed = time.monotonic() - started
    for worker in workers:
        worker.join(timeout=10)

    assert all(worker.exitcode == 0 for worker in workers)
    assert 20 <= allowed <= bound(20, 3, elapsed)
