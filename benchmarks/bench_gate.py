"""Benchmark: gate checks per second and latency on Redis over loopback.

Side by side, in one run and on the same Redis: the gate's full check (one EVALSHA: key and
account limits, token quota, throttles, status), the ``limits`` library's fixed-window and
moving-window limiters (``limits.storage.RedisStorage``), and a trivial ``EVALSHA`` of
``return 1`` through redis-py, the floor for one round trip (the issue's yardstick). The gate
sends its check pre-packed over connections of its own (``enforcement/gate/wire.py``), so a
fifth case, a trivial ``EVALSHA`` of ``return 0`` over that same transport, shows what the
check's script itself costs. Clients are separate *processes*
(no shared GIL), each with its own connection; every call is timed. The cases run interleaved,
round by round (the order rotates each round), so they share alike whatever else the machine is
doing.

The workload: 1,000 accounts with one key each, requests spread round-robin; every account and
key has configured limits (1,000,000 rpm, 10**12 tokens/day, so every check is allowed) and a
tenth of the accounts an account-wide throttle of 0.5; each check asks for 100 tokens. ``limits``
gets the same 1,000 (account, key) identifiers and one per-minute limit of 1,000,000 (its own
keys, in the same Redis database). All four go through redis-py's ``execute_command`` (the
floor through ``Redis.evalsha``, ``limits`` through its registered ``Script`` objects).

    .venv/bin/python benchmarks/bench_gate.py [--redis-url URL] [--duration 3] [--clients 1,8]

Without ``--redis-url`` it starts its own ``redis-server`` (tests/redis_server.py); with ``--pin``
(2 or more CPUs) it pins it to the first CPU and the clients to the others, as in production
where Redis has a core of its own. "Redis µs/call" is Redis's own
``usec_per_call`` for EVALSHA while the case ran (every case is one EVALSHA per call): the
server's cost, which bounds how many checks one Redis can serve. Below the table, the issue's
goal is checked for each client count: the gate at ≥ 0.8x the floor's checks/s and faster than
both ``limits`` limiters. Not a test.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import queue
import statistics
import subprocess
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


def raw_floor_op(url: str) -> Callable[[int], object]:
    """The floor on the gate's own transport (a pre-packed command on a kept connection)."""
    from enforcement.gate.wire import Packed, Wire

    client = redis.Redis.from_url(url)
    sha = client.script_load("return 0")
    command = Packed(("EVALSHA", sha)).with_last(0)
    wire = Wire(client)
    return lambda _: wire.call(command)


def gate_op(url: str) -> Callable[[int], object]:
    from enforcement.gate import RedisGate

    gate = RedisGate.from_url(url)

    # As the server's gate: with a seeder (here: every account active, without events), so the
    # check runs the script that asks for an account's standing when it holds no status. Each
    # account is learned once, in the warm-up; the timed checks are of known accounts.
    def seed(account_id: str) -> None:
        gate.set_status(account_id, "active", None, 0)

    gate.set_seeder(seed)
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


FLOOR = "EVALSHA `return 1` (floor)"
RAW_FLOOR = "EVALSHA `return 0`, gate's wire"
CASES: dict[str, Callable[[str], Callable[[int], object]]] = {
    FLOOR: floor_op,
    RAW_FLOOR: raw_floor_op,
    "enforcement.gate RedisGate.check": gate_op,
    "limits FixedWindowRateLimiter": lambda url: limits_op(url, "fixed"),
    "limits MovingWindowRateLimiter": lambda url: limits_op(url, "moving"),
}


@dataclass(frozen=True)
class Plan:
    url: str
    rounds: int
    slice_s: float
    cpus: frozenset[int] | None  # pin the clients here


def client_process(plan: Plan, index: int, barrier: Any, results: Any) -> None:
    """One client: build every case, then in each round run each case for ``plan.slice_s``,
    starting together with the other clients. Client 0 also reads Redis's own time per call."""
    if plan.cpus:
        os.sched_setaffinity(0, plan.cpus)
    ops = {case: make(plan.url) for case, make in CASES.items()}
    stats = redis.Redis.from_url(plan.url) if index == 0 else None
    n = index * 7919
    for op in ops.values():
        warm_until = time.perf_counter() + WARMUP_S
        while time.perf_counter() < warm_until:
            op(n)
            n += 1
    clock = time.perf_counter_ns
    order = list(ops.items())
    for round_ in range(plan.rounds):
        # Rotate which case goes first, so none always follows the same neighbour.
        shift = round_ % len(order)
        for case, op in order[shift:] + order[:shift]:
            barrier.wait()
            if stats is not None:
                stats.config_resetstat()
            latencies: list[int] = []
            started = clock()
            deadline = started + int(plan.slice_s * 1e9)
            now = started
            while now < deadline:
                op(n)
                n += 1
                after = clock()
                latencies.append(after - now)
                now = after
            server_us = None
            if stats is not None:
                server_us = stats.info("commandstats")["cmdstat_evalsha"]["usec_per_call"]
            results.put((case, len(latencies) / ((now - started) / 1e9), latencies, server_us))


@dataclass(frozen=True)
class Result:
    case: str
    clients: int
    per_second: float
    p50_us: float
    p99_us: float
    server_us: float


def run(plan: Plan, clients: int) -> list[Result]:
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(clients), ctx.Queue()
    procs = [
        ctx.Process(target=client_process, args=(plan, i, barrier, results)) for i in range(clients)
    ]
    for proc in procs:
        proc.start()
    rates: dict[str, list[float]] = {case: [0.0] * plan.rounds for case in CASES}
    latencies: dict[str, list[int]] = {case: [] for case in CASES}
    server: dict[str, list[float]] = {case: [] for case in CASES}
    done = dict.fromkeys(CASES, 0)
    try:
        for _ in range(plan.rounds * len(CASES) * clients):
            case, rate, lat, server_us = results.get(timeout=plan.slice_s + 60)
            rates[case][done[case] // clients] += rate  # a round's rate: the clients' sum
            done[case] += 1
            latencies[case].extend(lat)
            if server_us is not None:
                server[case].append(server_us)
    except queue.Empty:
        codes = [proc.exitcode for proc in procs]
        raise RuntimeError(f"a client failed (exit codes {codes})") from None
    for proc in procs:
        proc.join()
    out = []
    for case in CASES:
        cuts = statistics.quantiles(sorted(latencies[case]), n=100, method="inclusive")
        out.append(
            Result(
                case,
                clients,
                statistics.median(rates[case]),
                cuts[49] / 1e3,
                cuts[98] / 1e3,
                statistics.median(server[case]),
            )
        )
    return out


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
    columns = ("case", "clients", "checks/s", "vs floor", "p50 µs", "p50 vs floor", "p99 µs")
    for column in (*columns, "Redis µs/call"):
        out.add_column(column, justify="left" if column == "case" else "right")
    floors = {r.clients: r for r in results if r.case == FLOOR}
    for r in results:
        floor = floors[r.clients]
        out.add_row(
            r.case,
            str(r.clients),
            f"{r.per_second:,.0f}",
            f"{r.per_second / floor.per_second:.2f}x",
            f"{r.p50_us:.1f}",
            f"{r.p50_us / floor.p50_us:.2f}x",
            f"{r.p99_us:.1f}",
            f"{r.server_us:.1f}",
        )
    return out


GATE = "enforcement.gate RedisGate.check"
LIMITS = ("limits FixedWindowRateLimiter", "limits MovingWindowRateLimiter")
GOAL = 0.8


def verdict(results: list[Result]) -> list[str]:
    """The issue's goal per client count: ≥ 0.8x the floor and faster than both limiters."""
    lines = []
    for clients in sorted({r.clients for r in results}):
        rate = {r.case: r.per_second for r in results if r.clients == clients}
        ratio = rate[GATE] / rate[FLOOR]
        ahead = [rate[GATE] / rate[case] for case in LIMITS]
        met = ratio >= GOAL and all(a > 1 for a in ahead)
        lines.append(
            f"{clients} client(s): gate {ratio:.2f}x the floor (goal ≥ {GOAL}x), "
            f"{ahead[0]:.2f}x FixedWindow, {ahead[1]:.2f}x MovingWindow: "
            + ("goal met" if met else "goal NOT met")
            + f"; {rate[GATE] / rate[RAW_FLOOR]:.2f}x a trivial EVALSHA on its own wire"
        )
    return lines


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for name in ("redis", "hiredis", "limits"):
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            found.append(f"no {name}")
    return ", ".join(found)


def gate_revision() -> str:
    """The commit measured, and whether enforcement/gate had uncommitted changes (read-only)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "enforcement/gate"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown commit"
    return f"{commit or 'unknown commit'}{' + uncommitted changes' if dirty else ''}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", help="use this Redis instead of starting one")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per case")
    parser.add_argument("--rounds", type=int, default=6, help="the duration is split in rounds")
    parser.add_argument("--clients", default="1,8", help="client process counts, e.g. 1,8")
    parser.add_argument("--pin", action="store_true", help="Redis on one CPU, clients on the rest")
    args = parser.parse_args()
    server = None
    url = args.redis_url
    cpus = sorted(os.sched_getaffinity(0))
    pinned = None
    if url is None:
        from tests.redis_server import RedisServer

        server = RedisServer().start()
        url = server.url
        if len(cpus) >= 2 and args.pin and server.pid is not None:
            os.sched_setaffinity(server.pid, {cpus[0]})
            pinned = frozenset(cpus[1:])
    load_before = os.getloadavg()[0]
    try:
        client = redis.Redis.from_url(url)
        version = client.info("server")["redis_version"]
        config = client.config_get("save") | client.config_get("appendonly")
        persistence = f"save {config.get('save')!r}, appendonly {config.get('appendonly')}"
        client.flushdb()
        configure(url)
        plan = Plan(url, args.rounds, args.duration / args.rounds, pinned)
        results = [r for n in args.clients.split(",") for r in run(plan, int(n))]
    finally:
        if server is not None:
            server.close()
    placement = (
        f"redis-server on CPU {cpus[0]}, clients on CPUs {sorted(pinned)}"
        if pinned
        else "not pinned"
    )
    title = (
        f"Gate checks on Redis {version} over loopback ({persistence}); clients are processes; "
        f"{len(cpus)} CPUs, {cpu_model()} ({placement}); Python {platform.python_version()}, "
        f"{versions()}; enforcement/gate at {gate_revision()}; {ACCOUNTS:,} accounts x 1 key, "
        f"{TOKENS} tokens per check, a tenth throttled; {args.duration:g} s per case in "
        f"{args.rounds} interleaved rounds (order rotating), checks/s = the median round; "
        f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    )
    console = Console(width=150)
    console.print(table(results, title))
    for line in verdict(results):
        console.print(line)


if __name__ == "__main__":
    main()
