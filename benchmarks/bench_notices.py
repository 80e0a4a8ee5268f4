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
import bisect
import itertools
import json
import multiprocessing
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from operator import itemgetter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402
from common import add_pg_url_argument, pg_database  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from enforcement.bootstrap import Container, bootstrap  # noqa: E402
from enforcement.migrations import upgrade  # noqa: E402
from enforcement.policy import ViolationReport  # noqa: E402
from enforcement.service import Actor  # noqa: E402
from enforcement.settings import Settings  # noqa: E402
from enforcement.tables import contacts  # noqa: E402
from enforcement.workers.relay import CHECKPOINT  # noqa: E402
from enforcement.workers.runtime import build_actors, start_background  # noqa: E402
from events.schema import events  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402

CLI = str(Path(sys.executable).with_name("enforcement"))
CONFIGS = ("embedded", "redis-sqlite", "redis-postgres")
REPORTER = Actor(name="reporter:bench", correlation_id="bench")
SECRET = "bench-secret"


# ------------------------------------------------------------------ the webhook receiver


def serve_receiver(ready: Any) -> None:
    """The webhook receiver's process: answers every POST with 200 at once and remembers when
    each notice's first request arrived; ``GET /seen`` returns those times as JSON."""
    first_seen: dict[str, float] = {}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            now = time.time()
            with lock:
                first_seen.setdefault(self.headers["X-Enforcement-Event-Id"], now)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:
            with lock:
                body = json.dumps(first_seen).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 256

    server = Server(("127.0.0.1", 0), Handler)
    ready.send(server.server_port)
    server.serve_forever(poll_interval=0.05)


class Receiver:
    """The webhook receiver in a process of its own: it stands for the account holder's
    endpoint, so it must not take CPU time (and the GIL) from the process under test."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        self.process = context.Process(target=serve_receiver, args=(child,), daemon=True)
        self.process.start()
        self.port = int(parent.recv())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/enforcement"

    def first_seen(self) -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/seen", timeout=30) as answer:
            seen: dict[str, float] = json.loads(answer.read())
        return seen

    def close(self) -> None:
        self.process.terminate()
        self.process.join()


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


def post(container: Container, account_ids: list[str]) -> None:
    """One violation per account: one ``report_violation`` call, or one ``report_batch`` call
    when there are several (as a service forwarding what it detected in the last moment)."""
    reports = [
        ViolationReport("spam", datetime.now(UTC), description="bulk mail (benchmark)")
        for _ in account_ids
    ]
    if len(account_ids) == 1:
        container.service.report_violation(account_ids[0], reports[0], REPORTER)
        return
    results = container.service.report_batch(
        [(a, r, None, None) for a, r in zip(account_ids, reports, strict=True)], REPORTER
    )
    failed = [r for r in results if r.status >= 400]
    if failed:
        raise RuntimeError(f"{len(failed)} batch items failed, first: {failed[0]!r}")


class RelayWatch:
    """Polls the relay's checkpoint (advanced only after a page's messages were enqueued) every
    few milliseconds, so that each event's relay lag is known: recorded -> enqueued."""

    def __init__(self, container: Container, interval: float = 0.005):
        self.container = container
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        with self.container.engine.connect() as conn:
            while not self.stop.is_set():
                position = self.container.store.get_checkpoint(conn, CHECKPOINT)
                conn.rollback()  # a fresh snapshot next time
                self.samples.append((time.time(), position))
                self.stop.wait(self.interval)

    def passed(self, position: int) -> float | None:
        """When the checkpoint was first seen at or past ``position``."""
        index = bisect.bisect_left(self.samples, position, key=itemgetter(1))
        return self.samples[index][0] if index < len(self.samples) else None

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


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


def post_all(
    container: Container, accounts: list[str], threads: int, rate: float | None, batch: int
) -> float:
    """Post one violation per account from ``threads`` threads, ``batch`` accounts per call,
    paced at ``rate`` violations/s when given; returns the wall time the posting took."""
    chunks = [accounts[i : i + batch] for i in range(0, len(accounts), batch)]
    counter = itertools.count()
    # A paced phase starts its schedule once every thread runs; a burst starts at once (with the
    # lead, a burst shorter than it took a negative time).
    start = time.perf_counter() + (0.05 if rate is not None else 0.0)
    errors: list[BaseException] = []

    def poster() -> None:
        while (i := next(counter)) < len(chunks):
            if rate is not None:
                delay = start + i * batch / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            try:
                post(container, chunks[i])
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
    batch: int
    notices: int
    posted_per_s: float
    notices_per_s: float | None
    lag_relayed: list[float]
    lag_handled: list[float]
    lag_recorded: list[float]


def lags(
    container: Container, after: int, receiver: Receiver, watch: RelayWatch
) -> tuple[list[float], list[float], list[float]]:
    """Per notice, seconds from ``NoticeIssued.recorded_at`` to: the relay's checkpoint passing
    it (enqueued), the receiver's first request (handled), ``NoticeDelivered`` (recorded)."""
    issued: dict[str, tuple[datetime, int]] = {}
    recorded: list[float] = []
    for event in container.store.iter_all(after):
        if event.type == "NoticeIssued":
            issued[event.event_id] = (event.recorded_at, event.position)
        elif event.type == "NoticeDelivered":
            start = issued[event.data["notice_event_id"]][0]
            recorded.append((event.recorded_at - start).total_seconds())
    first_seen = receiver.first_seen()
    handled = [first_seen[n] - t.timestamp() for n, (t, _) in issued.items()]
    relayed = []
    for t, position in issued.values():
        passed = watch.passed(position)
        if passed is None:
            raise RuntimeError(f"the relay checkpoint never passed position {position}")
        relayed.append(passed - t.timestamp())
    return relayed, handled, recorded


def measure(run: Run, args: argparse.Namespace, receiver: Receiver) -> list[Result]:
    container = run.poster
    tag = uuid.uuid4().hex[:6]
    warmup = [f"warm_{tag}_{i}" for i in range(args.posters)]
    add_contacts(container, warmup, receiver.url)
    after = container.store.max_position()
    post_all(container, warmup, args.posters, None, 1)
    wait_delivered(container, after, len(warmup), timeout=120)  # the workers are up

    results: list[Result] = []
    watch = RelayWatch(container)
    try:
        for batch in args.batches:
            phases: list[tuple[str, float | None, int]] = [
                ("burst (as fast as posted)", None, args.burst)
            ]
            phases += [
                (f"steady {rate:g}/s for {args.seconds:g}s", rate, int(rate * args.seconds))
                for rate in args.rates
            ]
            for phase, rate, count in phases:
                accounts = [f"{tag}_{batch}_{len(results)}_{i}" for i in range(count)]
                add_contacts(container, accounts, receiver.url)
                after = container.store.max_position()
                started = time.time()
                posting = post_all(container, accounts, args.posters, rate, batch)
                finished = wait_delivered(container, after, count, timeout=args.timeout)
                time.sleep(0.05)  # the watch has seen the checkpoint pass the last notice
                relayed, handled, recorded = lags(container, after, receiver, watch)
                results.append(
                    Result(
                        run,
                        phase,
                        batch,
                        count,
                        count / posting,
                        count / (finished - started) if rate is None else None,
                        relayed,
                        handled,
                        recorded,
                    )
                )
    finally:
        watch.close()
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
        "RemediationRequested) with a webhook contact only; the receiver is http.server in a "
        "process of its own on loopback, answering 200 at once. Lags in ms as p50 / p99 / max from "
        "NoticeIssued.recorded_at: 'relayed' = to the relay's checkpoint passing it (its "
        "messages enqueued; polled every 5 ms), 'handled' = to the webhook request at the "
        "receiver, 'recorded' = to NoticeDelivered.recorded_at. Posting: "
        f"{args.posters} threads through the use case, 'per call' violations in each call "
        "(1: report_violation, more: report_batch)."
    )
    t = Table(title="Notices end to end: violation posted -> NoticeDelivered", caption=caption)
    for column, justify in (
        ("mode", "left"), ("database", "left"), ("broker", "left"), ("workers", "left"),
        ("load", "left"), ("per call", "right"), ("notices", "right"), ("posted/s", "right"),
        ("notices/s end to end", "right"), ("lag relayed ms", "right"),
        ("lag handled ms", "right"), ("lag recorded ms", "right"),
    ):  # fmt: skip
        t.add_column(column, justify=justify)  # type: ignore[arg-type]
    for r in results:
        t.add_row(
            r.run.name,
            r.run.database,
            r.run.broker,
            r.run.workers,
            r.phase,
            str(r.batch),
            f"{r.notices:,}",
            f"{r.posted_per_s:,.0f}",
            "-" if r.notices_per_s is None else f"{r.notices_per_s:,.0f}",
            ms(r.lag_relayed),
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
    parser.add_argument(
        "--batches",
        type=lambda text: [int(b) for b in text.split(",")],
        default=[1, 10],
        help="violations per posting call, comma-separated (1 = report_violation, more = "
        "report_batch; default 1,10)",
    )
    parser.add_argument("--worker-threads", type=int, default=8)
    parser.add_argument("--worker-processes", type=int, default=2, help="Redis modes only")
    parser.add_argument("--timeout", type=float, default=300.0, help="per phase, seconds")
    add_pg_url_argument(parser)
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
