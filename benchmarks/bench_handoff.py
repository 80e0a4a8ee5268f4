"""The report queue's hand-off to a worker thread: ``SerialThread`` against AnyIO's pool.

Every ``POST /v1/violations`` that finds the server idle crosses to a worker thread and back:
the event loop hands the report to a thread, the thread records it and wakes the loop with the
answer. ``enforcement/api/coalesce.py`` does that with ``SerialThread.run``
(``enforcement/api/serial_thread.py``); before, with AnyIO's ``to_thread.run_sync``, which the
constant route of ``bench_http.py``'s ceiling (a plain ``def`` route) still uses through
Starlette.

This measures the round trip alone: one coroutine awaits an empty job ``--calls`` times in a row
(as one client's requests do), on asyncio's default loop, in rounds that alternate which side
goes first; the table gives the median over rounds of the mean µs per call, and the ratio.

Run from the repository root: ``.venv/bin/python benchmarks/bench_handoff.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from anyio import to_thread
from common import load_average
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from enforcement.api.serial_thread import SerialThread  # noqa: E402


def _job() -> int:
    return 1


async def _round(call: Callable[[], Awaitable[int]], calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        await call()
    return (time.perf_counter() - started) / calls * 1e6


async def _measure(calls: int, rounds: int) -> dict[str, list[float]]:
    serial = SerialThread("bench-handoff")
    sides: dict[str, Callable[[], Awaitable[int]]] = {
        "SerialThread.run": lambda: serial.run(_job),
        "anyio to_thread.run_sync": lambda: to_thread.run_sync(_job),
    }
    for call in sides.values():  # start the threads
        await _round(call, 100)
    figures: dict[str, list[float]] = {name: [] for name in sides}
    order = list(sides)
    for _ in range(rounds):
        for name in order:
            figures[name].append(await _round(sides[name], calls))
        order.reverse()
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="round trips per round")
    parser.add_argument("--rounds", type=int, default=10, help="rounds per side")
    args = parser.parse_args(argv)
    console = Console()
    console.print(
        f"[bold]conditions[/]: {os.cpu_count()} cores, {platform.machine()}, Python "
        f"{platform.python_version()}; an empty job, {args.calls} calls per round, "
        f"{args.rounds} rounds per side alternating; load average before: {load_average()}"
    )
    figures = asyncio.run(_measure(args.calls, args.rounds))
    table = Table(title="Event loop → worker thread → event loop, per call")
    table.add_column("hand-off")
    table.add_column("median µs", justify="right")
    table.add_column("min µs", justify="right")
    table.add_column("max µs", justify="right")
    for name, values in figures.items():
        table.add_row(
            name,
            f"{statistics.median(values):.1f}",
            f"{min(values):.1f}",
            f"{max(values):.1f}",
        )
    console.print(table)
    ours, theirs = (statistics.median(v) for v in figures.values())
    console.print(f"SerialThread takes {ours / theirs:.2f}x the time of AnyIO's hand-off")


if __name__ == "__main__":
    main()
