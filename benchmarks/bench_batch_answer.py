"""A large batch answer, streamed against built whole: the server's memory and its event loop.

Every item of a batch's answer carries the account's whole standing, so a batch to an account
with many open violations answers hundreds of megabytes. The API streams an answer over
``responses.STREAM_AFTER_BYTES`` as its items are encoded, in the thread pool. This runs the
same batch against two servers on copies of one seeded SQLite database: one as shipped
(streamed), one with the threshold raised so that the answer is built whole first. For each:
the server's peak resident memory (VmHWM) before and after, the time to the first byte and to
the last, and the longest ``GET /healthz`` while the batch runs (polled every 10 ms on another
connection: how long the event loop was held).

    .venv/bin/python benchmarks/bench_batch_answer.py                  # 5,000 open, 1,000 items
    .venv/bin/python benchmarks/bench_batch_answer.py --open 10000 --items 1000

Linux only (/proc). Not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from common import load_average
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench_http import free_port  # noqa: E402

from enforcement.migrations import upgrade  # noqa: E402
from enforcement.roles import Role  # noqa: E402
from enforcement.tokens import create_token  # noqa: E402
from events import create_engine  # noqa: E402

ACCOUNT = "acct_big"
# The API as `enforcement serve --no-workers` runs it, with the streaming threshold given.
SERVER = """
import sys
import enforcement.api.responses as responses
responses.STREAM_AFTER_BYTES = int(sys.argv[1])
from enforcement.cli import main
sys.argv = ["enforcement", "serve", "--no-workers", "--port", sys.argv[2]]
main()
"""


@dataclass
class Figures:
    answer_bytes: int
    first_byte_s: float
    total_s: float
    hwm_before_mb: int
    hwm_after_mb: int
    healthz_max_ms: float
    healthz_polls: int


def seed(url: str, open_violations: int) -> str:
    """A migrated database whose account has ``open_violations`` violations; a token."""
    from fastapi.testclient import TestClient

    from enforcement.api.app import create_app
    from enforcement.bootstrap import bootstrap
    from enforcement.settings import Settings

    upgrade(url)
    engine = create_engine(url)
    token = create_token(engine, Role.REPORTER, "bench_batch_answer")
    engine.dispose()
    container = bootstrap(Settings(database_url=url))
    with TestClient(create_app(container)) as client:
        for start in range(0, open_violations, 1000):
            items = [{"account_id": ACCOUNT, "category": "spam"}] * min(
                1000, open_violations - start
            )
            answer = client.post(
                "/v1/violations:batch",
                json={"violations": items},
                headers={"Authorization": f"Bearer {token}"},
            )
            answer.raise_for_status()
    return token


def peak_mb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError("no VmHWM")


def measure(db: Path, token: str, items: int, threshold: int, workdir: Path) -> Figures:
    port = free_port()
    env = {**os.environ, "ENFORCEMENT_DATABASE_URL": f"sqlite:///{db}", "PYTHONPATH": str(ROOT)}
    log = (workdir / f"server-{threshold}.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(threshold), str(port)],
        env=env,
        cwd=workdir,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            raise SystemExit(f"the server did not start; see {log.name}")
        stop, waits = threading.Event(), []

        def poll() -> None:
            with httpx.Client(timeout=None) as client:  # a long hold is the figure, not an error
                while not stop.is_set():
                    started = time.perf_counter()
                    with contextlib.suppress(httpx.TransportError):
                        client.get(f"{base}/healthz")
                    waits.append(time.perf_counter() - started)
                    time.sleep(0.01)

        poller = threading.Thread(target=poll)
        poller.start()
        before = peak_mb(server.pid)
        body = {"violations": [{"account_id": ACCOUNT, "category": "spam"}] * items}
        size, first = 0, None
        started = time.perf_counter()
        with httpx.stream(
            "POST",
            f"{base}/v1/violations:batch",
            json=body,
            headers={"Authorization": f"Bearer {token}"},
            timeout=600,
        ) as answer:
            answer.raise_for_status()
            for chunk in answer.iter_bytes():
                first = first or time.perf_counter() - started
                size += len(chunk)
        total = time.perf_counter() - started
        stop.set()
        poller.join()
        longest = max(waits, default=total) * 1000  # no poll answered: the loop held throughout
        return Figures(
            size, first or total, total, before, peak_mb(server.pid), longest, len(waits)
        )
    finally:
        server.terminate()
        server.wait(timeout=20)
        log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--open", type=int, default=5000, help="open violations on the account")
    parser.add_argument("--items", type=int, default=1000, help="items in the measured batch")
    args = parser.parse_args()
    console = Console()
    console.print(
        f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}; SQLite, one "
        f"`serve --no-workers` process per side; load average before: {load_average(True)}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        seeded = workdir / "seeded.db"
        console.print(f"seeding {args.open:,} open violations on {ACCOUNT} …")
        token = seed(f"sqlite:///{seeded}", args.open)
        rows = []
        for name, threshold in (("streamed (as shipped)", 1 << 20), ("built whole", 1 << 62)):
            db = workdir / f"{threshold}.db"
            shutil.copy(seeded, db)
            rows.append((name, measure(db, token, args.items, threshold, workdir)))
    table = Table(
        title=f"one batch of {args.items:,} items to an account with {args.open:,} open "
        "violations (each on its own copy of the seeded database)"
    )
    for column in (
        "answer",
        "MB answered",
        "first byte s",
        "last byte s",
        "server peak MB before → after",
        "rise MB",
        "longest /healthz ms",
    ):
        table.add_column(column, justify="left" if column == "answer" else "right")
    for name, f in rows:
        table.add_row(
            name,
            f"{f.answer_bytes / 1e6:,.0f}",
            f"{f.first_byte_s:.2f}",
            f"{f.total_s:.2f}",
            f"{f.hwm_before_mb} → {f.hwm_after_mb}",
            f"{f.hwm_after_mb - f.hwm_before_mb}",
            f"{f.healthz_max_ms:.0f} ({f.healthz_polls} polls)",
        )
    console.print(table)
    console.print(f"load average after: {load_average(True)}")


if __name__ == "__main__":
    main()
