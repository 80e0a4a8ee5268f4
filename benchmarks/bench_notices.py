"""Notices end to end: from a posted violation to ``NoticeDelivered`` in the log.

For each configuration the benchmark runs the real relay and Dramatiq workers and a webhook
receiver on loopback (``http.server``, answering 200 at once), then:

- throughput: ``--burst`` violations (first-time ``spam`` on fresh accounts, each with a webhook
  contact and no email) are posted as fast as ``--posters`` threads can, and the clock stops when
  the last ``NoticeDelivered`` is recorded: notices/s = notices / (last receipt - first post);
- steady load: each of ``--rates`` violations/s for ``--seconds``, paced; for each notice the lag
  from ``NoticeIssued.recorded_at`` to the webhook request reaching the receiver (the message
  handled) and to ``NoticeDelivered.recorded_at`` (the outcome in the log), as p50/p99/max.
  A light load (10/s) shows the relay's own lag; 200/s is the target load. When "posted/s" stays
  below the target, recording violations (the write path) is the bottleneck, and the lag
  includes the workers' backlog (they share the database with the posters).

Configurations:

- ``embedded``: SQLite, the in-memory broker, relay and worker threads in the posting process,
  as ``enforcement serve`` runs them;
- ``redis-sqlite`` and ``redis-postgres``: a real ``redis-server`` (``tests/redis_server.py``),
  the real ``enforcement worker`` as a subprocess (relay + ``--worker-processes`` consumer
  processes of ``--worker-threads`` threads), violations posted from this process.

Violations are posted through the use case (``EnforcementService.report_violation``), not over
HTTP: the HTTP layer is not what is measured. Run from the repository root:
``.venv/bin/python benchmarks/bench_notices.py --help``.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402
from common import pg_database  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from enforcement.bootstrap import Container, bootstrap  # noqa: E402
from enforcement.migrations import upgrade  # noqa: E402
from enforcement.policy import ViolationReport  # noqa: E402
from enforcement.service import Actor  # noqa: E402
from enforcement.settings import Settings  # noqa: E402
from enforcement.tables import contacts  # noqa: E402
from enforcement.workers.runtime import build_actors, start_background  # noqa: E402
from events.schema import events  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402

DEFAULT_PG_URL = "postgresql+psycopg://enforcement:enforcement@127.0.0.1:5432/postgres"
CLI = str(Path(sys.executable).with_name("enforcement"))
CONFIGS = ("embedded", "redis-sqlite", "redis-postgres")
REPORTER = Actor(name="reporter:bench", correlation_id="bench")
SECRET = "bench-secret"


# ------------------------------------------------------------------ the webhook receiver


class Receiver:
    """Answers 200 at once; remembers when each notice's first request arrived."""

    def __init__(self) -> None:
        self.first_seen: dict[str, float] = {}
        self.requests = 0
        lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                now = time.time()
                with lock:
                    receiver.requests += 1
                    receiver.first_seen.setdefault(self.headers["X-Enforcement-Event-Id"], now)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 256

        self.server = Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/hooks/enforcement"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# ------------------------------------------------------------------ the system under test


@dataclass
class Run:
    """One configuration, running: ``poster`` records violations, the workers deliver."""

    name: str
    database: str
    broker: str
    workers: str
    poster: Container
    stop: Callable[[], None]


def worker_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENFORCEMENT_")}
    env.update(
        {
            "ENFORCEMENT_DATABASE_URL": settings.database_url,
            "ENFORCEMENT_REDIS_URL": settings.redis_url or "",
            "ENFORCEMENT_MAIL_DIR": settings.mail_dir,
            "ENFORCEMENT_WEBHOOK_SECRET": SECRET,
            "ENFORCEMENT_WEBHOOK_ALLOW_PRIVATE": "true",
            "ENFORCEMENT_WORKER_PROCESSES": str(settings.worker_processes),
            "ENFORCEMENT_WORKER_THREADS": str(settings.worker_threads),
            "ENFORCEMENT_SWEEP_SECONDS": "3600",
        }
    )
    return env


@contextmanager
def running(config: str, args: argparse.Namespace, workdir: Path) -> Iterator[Run]:
    cleanup = ExitStack()
    if config.endswith("postgres"):
        url = cleanup.enter_context(pg_database(args.pg_url, "bench_notices"))
        database = "PostgreSQL"
    else:
        url = f"sqlite:///{workdir / f'{config}.db'}"
        database = "SQLite (WAL)"
    upgrade(url)
    settings = Settings(
        database_url=url,
        mail_dir=str(workdir / "mail"),
        webhook_secret=SECRET,
        webhook_allow_private=True,
        worker_threads=args.worker_threads,
        worker_processes=args.worker_processes,
        sweep_seconds=3600,
    )
    try:
        if config == "embedded":
            container = bootstrap(settings)
            actors = build_actors(container)
            stop = start_background(container, actors, consumers=True, relay=True)
            workers = f"{args.worker_threads} threads in the posting process"
            yield Run(config, database, "in-memory (StubBroker)", workers, container, stop)
            stop()
            container.close()
            return
        with RedisServer() as redis_server:
            settings = replace(settings, redis_url=redis_server.url)
            log = (workdir / f"{config}-worker.log").open("wb")
            proc = subprocess.Popen(
                [CLI, "worker"],
                env=worker_env(settings),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

            def stop_worker() -> None:
                proc.send_signal(signal.SIGTERM)
                with suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=30)
                with suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                log.close()

            container = bootstrap(replace(settings, redis_url=None))
            workers = (
                f"`enforcement worker`: {args.worker_processes} processes x "
                f"{args.worker_threads} threads"
            )
            try:
                yield Run(config, database, "Redis", workers, container, stop_worker)
            finally:
                stop_worker()
                container.close()
    finally:
        cleanup.close()


# ------------------------------------------------------------------ measuring


def add_contacts(container: Container, accounts: list[str], url: str) -> None:
    now = datetime.now(UTC)
    rows = [
        {"account_id": a, "email": None, "webhook_url": url, "updated_at": now} for a in accounts
    ]
    with container.engine.begin() as conn:
        for start in range(0, len(rows), 500):
            conn.execute(contacts.insert(), rows[start : start + 500])


def post(container: Container, account_id: str) -> None:
    report = ViolationReport("spam", datetime.now(UTC), description="bulk mail (benchmark)")
    container.service.report_violation(account_id, report, REPORTER)


def delivered_count(container: Container, after_position: int) -> int:
    query = sa.select(sa.func.count()).where(
        events.c.type == "NoticeDelivered", events.c.position > after_position
    )
    with container.engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def wait_delivered(container: Container, after: int, count: int, timeout: float) -> float:
    """Wall time when ``count`` notices after position ``after`` were recorded as delivered."""
    deadline = time.monotonic() + timeout
    while delivered_count(container, after) < count:
        if time.monotonic() > deadline:
            got = delivered_count(container, after)
            raise RuntimeError(f"only {got} of {count} notices delivered within {timeout:.0f}s")
        time.sleep(0.02)
    return time.time()


def post_all(container: Container, accounts: list[str], threads: int, rate: float | None) -> float:
    """Post one violation per account from ``threads`` threads, paced at ``rate``/s when given;
    returns the wall time the posting took."""
    counter = itertools.count()
    start = time.perf_counter() + 0.05
    errors: list[BaseException] = []

    def poster() -> None:
        while (i := next(counter)) < len(accounts):
            if rate is not None:
                delay = start + i / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            try:
                post(container, accounts[i])
            except BaseException as exc:  # reported after the run
                errors.append(exc)

    pool = [threading.Thread(target=poster) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    if errors:
        raise RuntimeError(f"{len(errors)} posts failed, first: {errors[0]!r}")
    return time.perf_counter() - start


@dataclass
class Result:
    run: Run
    phase: str
    notices: int
    posted_per_s: float
    notices_per_s: float | None
    lag_handled: list[float]
    lag_recorded: list[float]


def lags(container: Container, after: int, receiver: Receiver) -> tuple[list[float], list[float]]:
    issued: dict[str, datetime] = {}
    recorded: list[float] = []
    for event in container.store.iter_all(after):
        if event.type == "NoticeIssued":
            issued[event.event_id] = event.recorded_at
        elif event.type == "NoticeDelivered":
            start = issued[event.data["notice_event_id"]]
            recorded.append((event.recorded_at - start).total_seconds())
    handled = [receiver.first_seen[n] - t.timestamp() for n, t in issued.items()]
    return handled, recorded


def measure(run: Run, args: argparse.Namespace, receiver: Receiver) -> list[Result]:
    container = run.poster
    tag = uuid.uuid4().hex[:6]
    warmup = [f"warm_{tag}_{i}" for i in range(args.posters)]
    add_contacts(container, warmup, receiver.url)
    after = container.store.max_position()
    post_all(container, warmup, args.posters, None)
    wait_delivered(container, after, len(warmup), timeout=120)  # the workers are up

    results = []
    burst = [f"burst_{tag}_{i}" for i in range(args.burst)]
    add_contacts(container, burst, receiver.url)
    after = container.store.max_position()
    started = time.time()
    posting = post_all(container, burst, args.posters, None)
    finished = wait_delivered(container, after, len(burst), timeout=args.timeout)
    handled, recorded = lags(container, after, receiver)
    results.append(
        Result(
            run,
            "burst (as fast as posted)",
            len(burst),
            len(burst) / posting,
            len(burst) / (finished - started),
            handled,
            recorded,
        )
    )

    for rate in args.rates:
        steady = [f"steady_{tag}_{rate:g}_{i}" for i in range(int(rate * args.seconds))]
        add_contacts(container, steady, receiver.url)
        after = container.store.max_position()
        posting = post_all(container, steady, args.posters, rate)
        wait_delivered(container, after, len(steady), timeout=args.timeout)
        handled, recorded = lags(container, after, receiver)
        phase = f"steady {rate:g}/s for {args.seconds:g}s"
        results.append(
            Result(run, phase, len(steady), len(steady) / posting, None, handled, recorded)
        )
    return results


# ------------------------------------------------------------------ reporting


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ms(values: list[float]) -> str:
    if not values:
        return "-"
    return (
        f"{statistics.median(values) * 1000:,.0f} / {pct(values, 0.99) * 1000:,.0f} / "
        f"{max(values) * 1000:,.0f}"
    )


def table(results: list[Result], args: argparse.Namespace) -> Table:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    caption = (
        f"{os.cpu_count()} CPUs, load average {load} at the end; Python "
        f"{platform.python_version()}, {platform.system()} {platform.release()}. Each violation "
        "is a first-time `spam` on a fresh account (ViolationReported, NoticeIssued, "
        "RemediationRequested) with a webhook contact only; the receiver is http.server on "
        "loopback answering 200 at once. Lags in ms as p50 / p99 / max: 'handled' = "
        "NoticeIssued.recorded_at to the webhook request at the receiver, 'recorded' = to "
        f"NoticeDelivered.recorded_at. Posting: {args.posters} threads through the use case."
    )
    t = Table(title="Notices end to end: violation posted -> NoticeDelivered", caption=caption)
    for column, justify in (
        ("mode", "left"), ("database", "left"), ("broker", "left"), ("workers", "left"),
        ("load", "left"), ("notices", "right"), ("posted/s", "right"),
        ("notices/s end to end", "right"), ("lag handled ms", "right"),
        ("lag recorded ms", "right"),
    ):  # fmt: skip
        t.add_column(column, justify=justify)  # type: ignore[arg-type]
    for r in results:
        t.add_row(
            r.run.name,
            r.run.database,
            r.run.broker,
            r.run.workers,
            r.phase,
            f"{r.notices:,}",
            f"{r.posted_per_s:,.0f}",
            "-" if r.notices_per_s is None else f"{r.notices_per_s:,.0f}",
            ms(r.lag_handled),
            ms(r.lag_recorded),
        )
    return t


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset")
    parser.add_argument("--burst", type=int, default=1000, help="violations in the burst")
    parser.add_argument(
        "--rates",
        type=lambda text: [float(r) for r in text.split(",")],
        default=[10.0, 200.0],
        help="steady loads, comma-separated violations/s (default 10,200)",
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="steady-load duration")
    parser.add_argument("--posters", type=int, default=4, help="posting threads")
    parser.add_argument("--worker-threads", type=int, default=8)
    parser.add_argument("--worker-processes", type=int, default=2, help="Redis modes only")
    parser.add_argument("--timeout", type=float, default=300.0, help="per phase, seconds")
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("BENCH_PG_URL", DEFAULT_PG_URL),
        help="admin URL of a PostgreSQL server where a database may be created and dropped",
    )
    args = parser.parse_args(argv)
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = sorted(set(configs) - set(CONFIGS))
    if unknown or not configs:
        parser.error(f"unknown configuration(s): {', '.join(unknown) or '(none)'}")

    console = Console(width=max(160, Console().width))
    receiver = Receiver()
    results: list[Result] = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-notices-") as tmp:
            for config in configs:
                console.print(f"[bold]{config}[/]: starting")
                with running(config, args, Path(tmp)) as run:
                    results += measure(run, args, receiver)
                console.print(f"[bold]{config}[/]: done")
    finally:
        receiver.close()
    console.print(table(results, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
