"""The write path on PostgreSQL: ``EnforcementService.report_violation`` in process, with the
store's pipelined appends (``events.writing.write_pipelined``) against the store reading every
head under the lock as before (``EventStore(pipeline_known_heads=False)``), side by side in one
run, on the same database server.

Each figure reports violations through the service (load the standing, decide, append with the
standing written in the same transaction) on a fresh database of its own:

- new accounts: every violation to an account with no events (the first append of a stream);
- existing accounts: round robin over 50 accounts that already have events (the decisions
  escalate as the strikes add up, as they would);
- 1 thread (latency) and 8 threads (throughput), in one process;
- directly on the server (loopback), and through a TCP proxy in this process that forwards
  every chunk 0.25 ms after it arrived, each way (in a process of its own): a database half a
  millisecond away or more, as on another machine (asyncio's timers round each hop's delay
  up: the run prints what a round trip through the proxy measured). Both sides pay it alike.

Run from the repository root: ``.venv/bin/python benchmarks/bench_write_path.py --help``.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import platform
import socket
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402
from common import add_pg_url_argument, load_average, pg_database  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from enforcement.migrations import upgrade  # noqa: E402
from enforcement.policy import ViolationReport, load_policy  # noqa: E402
from enforcement.service import Actor, EnforcementService  # noqa: E402
from events import EventStore, create_engine  # noqa: E402
from projections.stored import StandingRepository  # noqa: E402

EXISTING_ACCOUNTS = 50
ACTOR = Actor("bench_write_path", "req_bench")


# --------------------------------------------------------------------------- the proxy


class LatencyProxy:
    """A TCP proxy, in a process of its own, on a free loopback port to ``target``: every chunk
    is forwarded ``delay`` seconds after it arrived, in order, each way."""

    def __init__(self, target: tuple[str, int], delay: float) -> None:
        self.target, self.delay = target, delay
        self.port = 0
        ports: multiprocessing.Queue[int] = multiprocessing.Queue()
        self._ports = ports
        self._process = multiprocessing.Process(
            target=_serve_proxy, args=(target, delay, ports), name="latency-proxy", daemon=True
        )

    def __enter__(self) -> LatencyProxy:
        self._process.start()
        self.port = self._ports.get(timeout=10)
        return self

    def __exit__(self, *_exc: object) -> None:
        self._process.terminate()
        self._process.join(10)


def _serve_proxy(target: tuple[str, int], delay: float, ports: Any) -> None:
    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes | None]] = asyncio.Queue()

        async def send() -> None:
            while True:
                due, data = await queue.get()
                if data is None:
                    break
                if (wait := due - loop.time()) > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()
            writer.close()

        sender = asyncio.create_task(send())
        try:
            while data := await reader.read(65536):
                queue.put_nowait((loop.time() + delay, data))
        except ConnectionError:
            pass
        queue.put_nowait((0.0, None))
        await sender

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(*target)
        await asyncio.gather(
            pipe(client_r, server_w), pipe(server_r, client_w), return_exceptions=True
        )

    async def serve() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        ports.put(server.sockets[0].getsockname()[1])
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


# --------------------------------------------------------------------------- the service


@contextmanager
def service(url: str, pipelined: bool) -> Iterator[EnforcementService]:
    engine = create_engine(url)
    store = EventStore(engine, pipeline_known_heads=pipelined)
    policy = load_policy(None)
    try:
        yield EnforcementService(
            store=store, standings=StandingRepository(store), policy=policy, clock=_now
        )
    finally:
        engine.dispose()


def _now() -> datetime:
    return datetime.now(UTC)


def report(svc: EnforcementService, account_id: str) -> None:
    violation = ViolationReport(
        category="spam", occurred_at=_now(), source="bench", description="bulk mail"
    )
    svc.report_violation(account_id, violation, ACTOR)


@dataclass
class Figure:
    rate: float
    p50_ms: float


def measure(svc: EnforcementService, existing: bool, threads: int, per_thread: int) -> Figure:
    accounts = [f"acct_{i:03d}" for i in range(EXISTING_ACCOUNTS)]
    if existing:
        for account in accounts:  # every account has events before the timing starts
            report(svc, account)
    latencies: list[float] = []
    lock = threading.Lock()

    def worker(k: int) -> None:
        mine = []
        for j in range(per_thread):
            account = (
                accounts[(k * per_thread + j) % EXISTING_ACCOUNTS]
                if existing
                else f"new_{uuid.uuid4().hex[:16]}"
            )
            start = time.perf_counter()
            report(svc, account)
            mine.append(time.perf_counter() - start)
        with lock:
            latencies.extend(mine)

    started = time.perf_counter()
    pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - started
    return Figure(threads * per_thread / elapsed, statistics.median(latencies) * 1e3)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_pg_url_argument(parser)
    parser.add_argument("--violations", type=int, default=400, help="per figure (default 400)")
    parser.add_argument("--delay-ms", type=float, default=0.25, help="proxy delay, each way")
    args = parser.parse_args(argv)
    console = Console()
    console.print(f"[bold]{__doc__.splitlines()[0]}")
    console.print(
        f"machine: {os.cpu_count()} cores, {platform.machine()}, Python "
        f"{platform.python_version()}; load average before: {load_average(True)}"
    )
    target = sa.make_url(args.pg_url)
    host, port = target.host or "127.0.0.1", target.port or 5432
    socket.create_connection((host, port), timeout=5).close()
    table = Table(title="EnforcementService.report_violation on PostgreSQL, violations/s")
    for column in ("network", "accounts", "threads", "pipelined", "before", "ratio"):
        table.add_column(column, justify="right" if column in ("threads", "ratio") else "left")
    round_trips: list[float] = []
    for network in ("loopback", f"+{args.delay_ms:g} ms each way"):
        proxied = network != "loopback"
        with LatencyProxy((host, port), args.delay_ms / 1000) if proxied else _no_proxy() as px:
            for existing in (False, True):
                for threads in (1, 8):
                    per_thread = max(1, args.violations // threads)
                    if proxied and threads == 1:
                        per_thread = max(1, per_thread // 4)  # a round trip costs ~1 ms here
                    figures = {}
                    for pipelined in (True, False):  # each on a database of its own
                        with pg_database(args.pg_url, "bench_write") as url:
                            upgrade(url)
                            if px is not None:
                                proxied_url = sa.make_url(url).set(host="127.0.0.1", port=px.port)
                                url = proxied_url.render_as_string(hide_password=False)
                            if px is not None and not round_trips:
                                round_trips.append(round_trip_ms(url))
                            with service(url, pipelined) as svc:
                                report(svc, "warm_up")
                                figures[pipelined] = measure(svc, existing, threads, per_thread)
                    new, old = figures[True], figures[False]
                    table.add_row(
                        network,
                        "existing" if existing else "new",
                        str(threads),
                        f"{new.rate:,.0f}/s (p50 {new.p50_ms:.1f} ms)",
                        f"{old.rate:,.0f}/s (p50 {old.p50_ms:.1f} ms)",
                        f"{new.rate / old.rate:.2f}x",
                    )
                    console.print(
                        f"  {network}, {'existing' if existing else 'new'} accounts, "
                        f"x{threads}: {new.rate:,.0f} vs {old.rate:,.0f}/s"
                    )
    console.print(table)
    if round_trips:
        console.print(
            f"  a round trip (SELECT 1) through the proxy: median {round_trips[0]:.2f} ms "
            "(asyncio's timers round each hop's delay up)"
        )
    console.print(f"load average after: {load_average(True)}")


def round_trip_ms(url: str) -> float:
    """The median time of a ``SELECT 1`` on a connection to ``url``."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            times = []
            for _ in range(50):
                start = time.perf_counter()
                conn.exec_driver_sql("SELECT 1").scalar()
                times.append(time.perf_counter() - start)
        return statistics.median(times) * 1e3
    finally:
        engine.dispose()


@contextmanager
def _no_proxy() -> Iterator[None]:
    yield None


if __name__ == "__main__":
    main()
