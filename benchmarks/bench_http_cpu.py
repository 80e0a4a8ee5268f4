"""Where a violation's server CPU goes: CPU per request by thread role, ours beside the ceiling.

``bench_http.py`` gives rates and the ratio; this one says what the server process spends per
request and in which threads, so that the ratio can be explained. For each configuration it
starts the server as ``bench_http.py`` does (one ``enforcement serve`` process on a fresh
database; beside it the minimal FastAPI app), drives it with ``bench_http``'s raw client, and
reads each thread's CPU time (user + system, ``/proc/<pid>/task/<tid>/stat``) before and after
the timed load. A short py-spy sample taken during the load (``--idle``, so idle threads show
too) names each thread by what its stacks hold:

- ``event loop``: uvicorn's loop (HTTP parsing, middleware, validation, sending the answer);
- ``request``: the thread pool running the use case (decide, append, commit, the answer's JSON);
- ``notice worker``, ``relay``, ``consumer``: the embedded workers (``serve`` without
  ``--no-workers``): a delivery attempt and its recorded outcome, the outbox relay, Dramatiq;
- ``other``: anything else.

Linux only (``/proc``); needs ``py-spy`` (``.venv/bin/pip install py-spy``). Run from the
repository root:

    .venv/bin/python benchmarks/bench_http_cpu.py                          # SQLite, 1 and 8
    .venv/bin/python benchmarks/bench_http_cpu.py --backends sqlite,postgres --workers both
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import bench_http
from common import DEFAULT_PG_URL, load_average
from rich.console import Console
from rich.table import Table

# Thread roles by a frame their stacks hold (the first that matches).
ROLES: list[tuple[str, str]] = [
    ("notice worker", "deliver_notice"),
    ("request", "record_violation"),
    ("relay", "relay"),
    ("consumer", "consumer"),
    ("event loop", "uvicorn"),
    ("request", "AnyIO worker thread"),  # a pool thread sampled between requests
    ("request", "serial_thread.py"),  # the report queue's thread, sampled between reports
]
_TICKS = os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of every thread of ``pid`` so far."""
    seconds: dict[int, float] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as stat:
                fields = stat.read().rpartition(")")[2].split()
        except FileNotFoundError:
            continue  # the thread ended meanwhile
        seconds[int(tid)] = (int(fields[11]) + int(fields[12])) / _TICKS
    return seconds


def thread_roles(raw: Path) -> dict[int, str]:
    """Each sampled thread's role, by the stacks py-spy recorded for it (``--threads``)."""
    seen: defaultdict[int, Counter[str]] = defaultdict(Counter)
    for line in raw.read_text().splitlines():
        match = re.match(r"thread \((\d+)\)", line)
        if match is None:
            continue
        role = next((role for role, frame in ROLES if frame in line), "other")
        seen[int(match.group(1))][role] += 1
    return {tid: roles.most_common(1)[0][0] for tid, roles in seen.items()}


def sample(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    command = [exe, "record", "-p", str(pid), "-d", str(max(1, int(seconds))), "-r", "50"]
    command += ["-f", "raw", "--threads", "--idle", "--nonblocking", "-o", str(out)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def measure(
    server: bench_http.Server, clients: int, seconds: float, warmup: float, raw: Path
) -> tuple[float, dict[str, float], int]:
    """Requests per second, CPU milliseconds per request by role, and the failed requests
    (any answer but 200/201: then the figures are not those of recorded violations)."""
    bench_http.measure(server, bench_http.single_body, clients, warmup, warmup)
    before = thread_cpu(server.pid)
    spy = sample(server.pid, min(3.0, seconds), raw)
    result = bench_http.measure(server, bench_http.single_body, clients, 0.0, seconds)
    after = thread_cpu(server.pid)
    spy.wait(timeout=60)
    roles = thread_roles(raw) if raw.exists() else {}
    per_role: defaultdict[str, float] = defaultdict(float)
    for tid, cpu in after.items():
        per_role[roles.get(tid, "other")] += cpu - before.get(tid, 0.0)
    per_request = {r: s / result.requests * 1000 for r, s in per_role.items()}
    return result.rate, per_request, result.errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="sqlite")
    parser.add_argument("--clients", default="1,8")
    parser.add_argument("--workers", choices=("off", "on", "both"), default="off")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL)
    args = parser.parse_args()
    console = Console(width=150)
    clients = [int(c) for c in args.clients.split(",")]
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.workers]
    console.print(f"load average before: {load_average(True)}")
    roles = ["event loop", "request", "notice worker", "relay", "consumer", "other"]
    out = Table(title="server CPU per POST /v1/violations (ms, user + system), by thread role")
    for column in ["server", "clients", "req/s", "total", *roles, "errors"]:
        out.add_column(column, justify="left" if column == "server" else "right")
    with tempfile.TemporaryDirectory() as directory:
        workdir = Path(directory)
        with bench_http.ceiling_server(workdir) as ceiling:
            for n in clients:
                rate, cpu, errors = measure(
                    ceiling, n, args.seconds, args.warmup, workdir / "c.txt"
                )
                total = f"{sum(cpu.values()):.2f}"
                out.add_row(
                    "ceiling", str(n), f"{rate:,.0f}", total, *[""] * len(roles), str(errors)
                )
        for backend in args.backends.split(","):
            for workers in modes:
                name = f"ours: {backend}, workers {'on' if workers else 'off'}"
                # A directory (so a SQLite database) of its own: a workers-on server on the
                # database of a workers-off one would first deliver that one's notices.
                own = Path(tempfile.mkdtemp(dir=workdir))
                with bench_http.our_server(backend, own, args.pg_url, workers) as ours:
                    for n in clients:
                        raw = workdir / f"{backend}-{workers}-{n}.txt"
                        rate, cpu, errors = measure(ours, n, args.seconds, args.warmup, raw)
                        cells = [f"{cpu.get(r, 0.0):.2f}" if cpu.get(r) else "" for r in roles]
                        total = f"{sum(cpu.values()):.2f}"
                        out.add_row(name, str(n), f"{rate:,.0f}", total, *cells, str(errors))
                        console.print(f"  {name} x{n}: {rate:,.0f} req/s, {total} ms CPU/req")
    console.print(out)
    console.print(
        f"load average after: {load_average(True)}; one client process on the same machine; "
        f"{args.seconds:g} s timed per row after {args.warmup:g} s of warm-up"
    )


if __name__ == "__main__":
    started = time.perf_counter()
    main()
    print(f"total {time.perf_counter() - started:.0f}s")
