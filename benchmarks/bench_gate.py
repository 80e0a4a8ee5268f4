"""Benchmark: gate checks per second and latency on Redis over loopback.

Side by side, in one run and on the same Redis: the gate's full check (one EVALSHA: key and
account limits, token quota, throttles, status), the ``limits`` library's fixed-window and
moving-window limiters (``limits.storage.RedisStorage``), and a trivial ``EVALSHA`` of
``return 1`` through redis-py, the floor for one round trip. Clients are separate *processes*
(no shared GIL), each with its own connection; every call is timed.

    .venv/bin/python benchmarks/bench_gate.py [--redis-url URL] [--duration 3] [--clients 1,8]

Without ``--redis-url`` it starts its own ``redis-server`` (tests/redis_server.py). Not a test.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import queue
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

ACCOUNTS = 1000  # requests are spread over this many accounts, one key each
RPM = 1_000_000  # high enough that every check in the run is allowed
TPD = 10**12
TOKENS = 100
WARMUP_S = 0.3


def floor_op(url: str) -> Callable[[int], object]:
    client = redis.Redis.from_url(url)
    sha = client.script_load("return 1")
    return lambda _: client.evalsha(sha, 0)


def gate_op(url: str) -> Callable[[int], object]:
    from enforcement.gate import RedisGate

    gate = RedisGate.from_url(url)
    ids = [(f"acct_{i}", f"key_{i}") for i in range(ACCOUNTS)]
    return lambda n: gate.check(*ids[n % ACCOUNTS], TOKENS)


def limits_op(url: str, strategy: str) -> Callable[[int], object]:
    from limits import RateLimitItemPerMinute, storage, strategies

    store = storage.RedisStorage(url)
    limiter = (
        strategies.FixedWindowRateLimiter(store)
        if strategy == "fixed"
        else strategies.MovingWindowRateLimiter(store)
    )
    item = RateLimitItemPerMinute(RPM)
    ids = [(strategy, f"acct_{i}", f"key_{i}") for i in range(ACCOUNTS)]  # own keys per strategy
    return lambda n: limiter.hit(item, *ids[n % ACCOUNTS])


CASES: dict[str, Callable[[str], Callable[[int], object]]] = {
    "EVALSHA `return 1` (floor)": floor_op,
    "enforcement.gate RedisGate.check": gate_op,
    "limits FixedWindowRateLimiter": lambda url: limits_op(url, "fixed"),
    "limits MovingWindowRateLimiter": lambda url: limits_op(url, "moving"),
}


def client_process(
    case: str, url: str, duration: float, offset: int, barrier: Any, results: Any
) -> None:
    """One client: warm up, wait for the others, then call as fast as it can for ``duration``."""
    op = CASES[case](url)
    n = offset
    warm_until = time.perf_counter() + WARMUP_S
    while time.perf_counter() < warm_until:
        op(n)
        n += 1
    barrier.wait()
    latencies: list[int] = []
    clock = time.perf_counter_ns
    started = clock()
    deadline = started + int(duration * 1e9)
    now = started
    while now < deadline:
        op(n)
        n += 1
        after = clock()
        latencies.append(after - now)
        now = after
    results.put((len(latencies) / ((now - started) / 1e9), latencies))


@dataclass(frozen=True)
class Result:
    case: str
    clients: int
    per_second: float
    p50_us: float
    p99_us: float


def run_case(case: str, url: str, clients: int, duration: float) -> Result:
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(clients), ctx.Queue()
    procs = [
        ctx.Process(
            target=client_process,
            args=(case, url, duration, i * (ACCOUNTS // clients), barrier, results),
        )
        for i in range(clients)
    ]
    for proc in procs:
        proc.start()
    try:
        outcomes = [results.get(timeout=duration + 30) for _ in procs]
    except queue.Empty:
        codes = [proc.exitcode for proc in procs]
        raise RuntimeError(f"a client of {case!r} failed (exit codes {codes})") from None
    for proc in procs:
        proc.join()
    latencies = sorted(ns for _, lat in outcomes for ns in lat)
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return Result(case, clients, sum(rate for rate, _ in outcomes), cuts[49] / 1e3, cuts[98] / 1e3)


def configure(url: str) -> None:
    """Give every account and key configured limits, and a tenth of them a throttle."""
    from enforcement.gate import RedisGate

    gate = RedisGate.from_url(url)
    for i in range(ACCOUNTS):
        gate.set_limits(f"acct_{i}", None, RPM, TPD, version=1)
        gate.set_limits(f"acct_{i}", f"key_{i}", RPM, TPD, version=2)
        if i % 10 == 0:
            gate.apply_throttle(f"acct_{i}", "t1", None, 0.5, None, version=3)


def table(results: list[Result], title: str) -> Table:
    out = Table(title=title)
    for column in ("case", "clients", "checks/s", "p50 µs", "p99 µs", "x floor (checks/s)"):
        out.add_column(column, justify="left" if column == "case" else "right")
    floors = {r.clients: r.per_second for r in results if "floor" in r.case}
    for r in results:
        out.add_row(
            r.case,
            str(r.clients),
            f"{r.per_second:,.0f}",
            f"{r.p50_us:.1f}",
            f"{r.p99_us:.1f}",
            f"{r.per_second / floors[r.clients]:.2f}x",
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", help="use this Redis instead of starting one")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per case")
    parser.add_argument("--clients", default="1,8", help="client process counts, e.g. 1,8")
    args = parser.parse_args()
    console = Console()
    server = None
    url = args.redis_url
    if url is None:
        from tests.redis_server import RedisServer

        server = RedisServer().start()
        url = server.url
    try:
        client = redis.Redis.from_url(url)
        version = client.info("server")["redis_version"]
        client.flushdb()
        configure(url)
        results = [
            run_case(case, url, clients, args.duration)
            for clients in (int(c) for c in args.clients.split(","))
            for case in CASES
        ]
    finally:
        if server is not None:
            server.close()
    console.print(
        table(
            results,
            f"Gate checks on Redis {version} over loopback — clients are processes; "
            f"{os.cpu_count()} CPUs, Python {platform.python_version()}, "
            f"{args.duration:g} s per case",
        )
    )


if __name__ == "__main__":
    main()
