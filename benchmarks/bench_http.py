"""HTTP throughput and latency of ``POST /v1/violations``, against FastAPI's own ceiling.

One ``enforcement serve`` process (embedded mode, as deployed without Redis: its relay and
notice workers run inside it) per backend, on a fresh database (SQLite: a file in a temporary
directory; PostgreSQL: a temporary database, dropped at the end). Beside it, in the same run and
started the same way under uvicorn, a minimal FastAPI app with one ``POST`` route that parses a
JSON object body and returns a constant: what this framework, server and client can do on this
machine at all. The ratio ours/ceiling is the figure to quote.

Workloads (each first warmed up, then timed for ``--seconds``):

- ``single``: ``POST /v1/violations`` with 1, 8 and 32 concurrent clients. Every request reports a
  first-time ``spam`` violation on a new account, so every request records three events
  (ViolationReported, NoticeIssued, RemediationRequested) and the standing stays small.
- ``batch``: ``POST /v1/violations:batch`` with ``--batch`` violations (new accounts) per
  request; the figure is violations per second. The ceiling gets the same body.

Clients: one asyncio event loop in this process, one keep-alive connection per concurrent
client; each client sends its next request when the previous answer arrives (closed loop).
Latency is per request, from send to the whole answer read. The client shares the machine with
the servers, so it should cost as little as it can: by default (``--client raw``) it is a
minimal HTTP/1.1 client on asyncio streams (the request written in one piece, the answer read
by its ``Content-Length``), which costs a fraction of what ``httpx.AsyncClient``
(``--client httpx``, the client of the runs before commit 5e0e6d2) costs per
request. The heavier client takes CPU from both servers alike, which flatters the ratio: the
ceiling's own work is the smaller part of its latency.

Run from the repository root:

    .venv/bin/python benchmarks/bench_http.py                     # both backends, ~2-3 minutes
    .venv/bin/python benchmarks/bench_http.py --backends sqlite --seconds 3
    .venv/bin/python benchmarks/bench_http.py --no-workers        # serve --no-workers
    .venv/bin/python benchmarks/bench_http.py --client httpx      # the earlier, heavier client
    .venv/bin/python benchmarks/bench_http.py --profile           # + py-spy hot spots (x8)

``--profile`` needs ``py-spy`` (``.venv/bin/pip install py-spy``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
from common import add_pg_url_argument, load_average, pg_database
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from enforcement.migrations import upgrade  # noqa: E402
from enforcement.roles import Role  # noqa: E402
from enforcement.tokens import create_token  # noqa: E402
from events import create_engine  # noqa: E402

ENFORCEMENT = str(Path(sys.executable).with_name("enforcement"))

CEILING_APP = '''
"""The framework's ceiling: one POST route that parses a JSON object and returns a constant."""
import sys
from typing import Any

import uvicorn
from fastapi import FastAPI

app = FastAPI()


@app.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/v1/violations", status_code=201)
def report(body: dict[str, Any]) -> dict[str, str]:
    return {"violation_id": "vio_constant"}


@app.post("/v1/violations:batch")
def batch(body: dict[str, Any]) -> dict[str, str]:
    return {"results": "constant"}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_config=None, access_log=False)
'''


# --------------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    name: str
    base_url: str
    token: str | None
    pid: int


def _wait_healthy(base_url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"server did not become healthy:\n{log.read_text()}")


@contextmanager
def running(
    name: str, command: list[str], env: dict[str, str], workdir: Path, token: str | None
) -> Iterator[Server]:
    port = free_port()
    log = workdir / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*command, str(port)], env=env, cwd=workdir, stdout=out, stderr=subprocess.STDOUT
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(base_url, proc, log)
        yield Server(name, base_url, token, proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _uvicorn_stack() -> str:
    """The event loop and HTTP parser uvicorn picks for both servers (its "auto": uvloop and
    httptools when installed, as the project's dependencies ask, else asyncio and h11)."""
    import uvicorn
    from uvicorn.loops.auto import auto_loop_factory
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    loop = auto_loop_factory(use_subprocess=False)
    loop_name = "asyncio" if isinstance(loop, type) else loop.__module__.split(".")[0]
    parser = "httptools" if "httptools" in AutoHTTPProtocol.__module__ else "h11"
    return f"uvicorn {uvicorn.__version__} on {loop_name} and {parser}"


@contextmanager
def ceiling_server(workdir: Path) -> Iterator[Server]:
    script = workdir / "ceiling_app.py"
    script.write_text(CEILING_APP)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with running("ceiling", [sys.executable, str(script)], env, workdir, None) as server:
        yield server


@contextmanager
def database(backend: str, workdir: Path, pg_url: str) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{workdir / 'bench_http.db'}"
        return
    with pg_database(pg_url, "bench_http") as url:
        yield url


@contextmanager
def our_server(backend: str, workdir: Path, pg_url: str, workers: bool) -> Iterator[Server]:
    with database(backend, workdir, pg_url) as url:
        upgrade(url)
        engine = create_engine(url)
        token = create_token(engine, Role.REPORTER, "bench_http")
        engine.dispose()
        env = {k: v for k, v in os.environ.items() if not k.startswith("ENFORCEMENT_")}
        env.update(
            {
                "ENFORCEMENT_DATABASE_URL": url,
                "PYTHONUNBUFFERED": "1",
                "ENFORCEMENT_MAIL_DIR": str(workdir / "notices"),
            }
        )
        command = [ENFORCEMENT, "serve", *([] if workers else ["--no-workers"]), "--port"]
        with running(f"ours-{backend}", command, env, workdir, token) as server:
            yield server


# --------------------------------------------------------------------------- load


@dataclass
class Result:
    requests: int
    items: int
    errors: int
    seconds: float
    latencies: list[float]

    @property
    def rate(self) -> float:
        return self.items / self.seconds

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


Body = Callable[[], tuple[str, dict[str, Any], int]]  # (path, json, items it carries)
Post = Callable[[str, dict[str, Any]], Awaitable[int]]  # (path, json) -> the answer's status


class RawConnection:
    """One keep-alive HTTP/1.1 connection that POSTs JSON and reads each answer whole by its
    ``Content-Length`` (both servers send one): the least a client can do per request.

    It reconnects when the server ends the connection (``Connection: close``, or a kept-alive
    connection found closed before the next request got any answer) and gives up on an answer
    after ``TIMEOUT`` seconds, as the httpx client did."""

    TIMEOUT = 300.0

    def __init__(self, base_url: str, token: str | None) -> None:
        url = httpx.URL(base_url)
        if url.scheme != "http":
            raise ValueError(f"the raw client speaks plain HTTP only, not {url.scheme!r}")
        self.host, self.port = url.host, url.port or 80
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        self.headers = (
            f"Host: {self.host}:{self.port}\r\n{auth}Content-Type: application/json\r\n"
        ).encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, payload: dict[str, Any]) -> int:
        body = json.dumps(payload).encode()
        request = b"POST %s HTTP/1.1\r\n%sContent-Length: %d\r\n\r\n%s" % (
            path.encode(),
            self.headers,
            len(body),
            body,
        )
        reused = self.writer is not None
        try:
            return await asyncio.wait_for(self._exchange(request), self.TIMEOUT)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            await self.close()
            answered = isinstance(exc, asyncio.IncompleteReadError) and exc.partial
            if not reused or answered:
                raise
            # The server closed the idle kept-alive connection: once more on a new one.
            return await asyncio.wait_for(self._exchange(request), self.TIMEOUT)

    async def _exchange(self, request: bytes) -> int:
        if self.reader is None or self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        length, close = None, False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection":
                close = value.strip().lower() == b"close"
            elif name == b"transfer-encoding":
                raise RuntimeError("a chunked answer: this client reads Content-Length only")
        if length is None:
            raise RuntimeError(f"an answer without Content-Length: {head[:200]!r}")
        await self.reader.readexactly(length)
        if close:
            await self.close()
        return int(head[9:12])

    async def close(self) -> None:
        writer, self.reader, self.writer = self.writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def _run(posts: list[Post], body: Body, seconds: float) -> Result:
    """One closed loop per ``posts`` entry, started together, sending until ``seconds`` have
    passed; the rate counts every request sent in that time over the time until the last
    answer."""
    latencies: list[float] = []
    counts = {"items": 0, "errors": 0}
    start = time.perf_counter()
    stop_at = start + seconds

    async def worker(post: Post) -> None:
        while time.perf_counter() < stop_at:
            path, payload, items = body()
            sent = time.perf_counter()
            status = await post(path, payload)
            latencies.append(time.perf_counter() - sent)
            counts["items"] += items
            if status not in (200, 201):
                counts["errors"] += 1

    await asyncio.gather(*(worker(post) for post in posts))
    elapsed = time.perf_counter() - start
    return Result(len(latencies), counts["items"], counts["errors"], elapsed, latencies)


ClientKind = Literal["raw", "httpx"]


async def _load(
    server: Server, body: Body, clients: int, warmup: float, seconds: float, kind: ClientKind
) -> Result:
    if kind == "raw":
        connections = [RawConnection(server.base_url, server.token) for _ in range(clients)]
        try:
            posts: list[Post] = [c.post for c in connections]
            await _run(posts, body, warmup)  # connections open, caches warm
            return await _run(posts, body, seconds)
        finally:
            for connection in connections:
                await connection.close()
    headers = {"Authorization": f"Bearer {server.token}"} if server.token else {}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(
        base_url=server.base_url, headers=headers, limits=limits, timeout=300
    ) as pool:

        async def post(path: str, payload: dict[str, Any]) -> int:
            return (await pool.post(path, json=payload)).status_code

        await _run([post] * clients, body, warmup)
        return await _run([post] * clients, body, seconds)


def measure(
    server: Server,
    body: Body,
    clients: int,
    warmup: float,
    seconds: float,
    kind: ClientKind = "raw",
) -> Result:
    return asyncio.run(_load(server, body, clients, warmup, seconds, kind))


def single_body() -> tuple[str, dict[str, Any], int]:
    account = f"bench_{uuid.uuid4().hex[:16]}"
    return (
        "/v1/violations",
        {
            "account_id": account,
            "category": "spam",
            "source": "bench_http",
            "description": "bulk mail",
        },
        1,
    )


def batch_body(size: int) -> Body:
    def make() -> tuple[str, dict[str, Any], int]:
        prefix = uuid.uuid4().hex[:12]
        items = [
            {"account_id": f"bench_{prefix}_{i}", "category": "spam", "source": "bench_http"}
            for i in range(size)
        ]
        return "/v1/violations:batch", {"violations": items}, size

    return make


# --------------------------------------------------------------------------- profile


@contextmanager
def py_spy(pid: int, seconds: float, out: Path) -> Iterator[None]:
    """Sample the server with py-spy (``pip install py-spy``) while the block runs."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    proc = subprocess.Popen(
        [
            exe,
            "record",
            "-p",
            str(pid),
            "-r",
            "200",
            "-d",
            str(int(seconds)),
            "-f",
            "raw",
            "-o",
            str(out),
            "--nonblocking",
            "--threads",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        proc.wait(timeout=seconds + 30)


def hot_spots(raw: Path, top: int = 12) -> Table:
    """Own-time frames, and where the request threads spend their time in our code."""
    own: Counter[str] = Counter()
    ours: Counter[str] = Counter()
    total = requests = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n, frames = int(count), stack.split(";")
        total += n
        own[frames[-1]] += n
        if any("report_violation (" in f and "routes" in f for f in frames):
            requests += n
            mine = [
                f
                for f in frames
                if f.split(" (")[-1].startswith(("events/", "enforcement/", "projections/"))
            ]
            ours[" > ".join(f.split(" (")[0] for f in mine[-2:]) or "(outside our code)"] += n
    out = Table(title=f"py-spy: {total} samples, {requests} in request threads")
    out.add_column("share")
    out.add_column("own time (all threads)")
    out.add_column("share of request samples")
    out.add_column("innermost frames of our code (request threads)")
    for (frame, n), (path, m) in zip(own.most_common(top), ours.most_common(top), strict=False):
        out.add_row(f"{n / total:.1%}", frame, f"{m / max(requests, 1):.1%}", path)
    return out


# --------------------------------------------------------------------------- report


@dataclass
class Row:
    backend: str
    workload: str
    clients: int
    ours: Result
    ceiling: Result
    unit: str


def table(rows: list[Row], goal: float) -> Table:
    out = Table(title="POST /v1/violations over HTTP: ours vs a minimal FastAPI app (ceiling)")
    for column in (
        "backend",
        "workload",
        "clients",
        "ours /s",
        "ours p50 ms",
        "ours p99 ms",
        "ceiling /s",
        "ceiling p50 ms",
        "ceiling p99 ms",
        "ours/ceiling",
        "errors",
    ):
        out.add_column(column, justify="right" if column not in ("backend", "workload") else "left")
    for r in rows:
        ratio = r.ours.rate / r.ceiling.rate if r.ceiling.rate else float("nan")
        style = "green" if ratio >= goal or r.workload != "single" else "red"
        out.add_row(
            r.backend,
            r.workload,
            str(r.clients),
            f"{r.ours.rate:,.0f} {r.unit}",
            f"{r.ours.percentile(0.50):.1f}",
            f"{r.ours.percentile(0.99):.1f}",
            f"{r.ceiling.rate:,.0f} {r.unit}",
            f"{r.ceiling.percentile(0.50):.1f}",
            f"{r.ceiling.percentile(0.99):.1f}",
            f"[{style}]{ratio:.2f}x[/]",
            str(r.ours.errors + r.ceiling.errors),
        )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--clients", default="1,8,32", help="concurrent clients for `single`")
    parser.add_argument("--seconds", type=float, default=4.0, help="timed seconds per figure")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=100, help="violations per batch request")
    parser.add_argument("--batch-clients", type=int, default=4)
    add_pg_url_argument(parser)
    parser.add_argument("--no-workers", action="store_true", help="serve --no-workers")
    parser.add_argument("--goal", type=float, default=0.5, help="ratio to reach for `single`")
    parser.add_argument(
        "--client",
        choices=("raw", "httpx"),
        default="raw",
        help="load generator: a minimal HTTP/1.1 client (default) or httpx.AsyncClient",
    )
    parser.add_argument(
        "--profile", action="store_true", help="py-spy the server during `single` with 8 clients"
    )
    args = parser.parse_args(argv)
    backends = [b for b in args.backends.split(",") if b]
    clients = [int(c) for c in args.clients.split(",") if c]

    console = Console(width=max(Console().width, 150))
    client_name = (
        "a minimal HTTP/1.1 client (--client raw)"
        if args.client == "raw"
        else f"httpx {httpx.__version__} (--client httpx)"
    )
    console.print(
        f"[bold]machine[/]: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}; client: {client_name} on asyncio "
        f"(one process, closed loop, a keep-alive connection per client); server: "
        f"{_uvicorn_stack()}, one process; "
        f"workers {'off' if args.no_workers else 'on (embedded)'}"
    )
    console.print(f"[bold]load average before[/]: {load_average(all_three=True)}")
    rows: list[Row] = []
    profiles: list[tuple[str, Path]] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_http_") as tmp:
        workdir = Path(tmp)
        with ceiling_server(workdir) as ceiling:
            for backend in backends:
                with our_server(backend, workdir, args.pg_url, not args.no_workers) as ours:
                    for n in clients:
                        # Interleaved: the ceiling runs right before ours, in the same conditions.
                        top = measure(
                            ceiling, single_body, n, args.warmup, args.seconds, args.client
                        )
                        if args.profile and n == 8:
                            raw = workdir / f"py-spy-{backend}.txt"
                            with py_spy(ours.pid, args.seconds + args.warmup, raw):
                                mine = measure(
                                    ours, single_body, n, args.warmup, args.seconds, args.client
                                )
                            profiles.append((backend, raw))
                        else:
                            mine = measure(
                                ours, single_body, n, args.warmup, args.seconds, args.client
                            )
                        rows.append(Row(backend, "single", n, mine, top, "req"))
                        console.print(
                            f"  {backend} single x{n}: {mine.rate:,.0f} vs {top.rate:,.0f} req/s"
                        )
                    if args.batch_clients == 0:  # --batch-clients 0: no batch rows
                        continue
                    body = batch_body(args.batch)
                    top = measure(
                        ceiling, body, args.batch_clients, args.warmup, args.seconds, args.client
                    )
                    mine = measure(
                        ours, body, args.batch_clients, args.warmup, args.seconds, args.client
                    )
                    rows.append(
                        Row(backend, f"batch of {args.batch}", args.batch_clients, mine, top, "vio")
                    )
                    console.print(f"  {backend} batch: {mine.rate:,.0f} vs {top.rate:,.0f} vio/s")
            for backend, raw in profiles:
                console.print(f"[bold]{backend}[/]")
                console.print(hot_spots(raw))
    console.print(table(rows, args.goal))
    console.print(
        f"[bold]load average after[/]: {load_average(all_three=True)}; "
        f"total {time.perf_counter() - started:.0f}s"
    )


if __name__ == "__main__":
    main()
