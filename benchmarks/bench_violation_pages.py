"""What one violation writes on SQLite, with the policy's event ids time-ordered or random.

Two services in this process, each on a fresh SQLite file of its own (migrated, WAL,
``synchronous=FULL``), report first-time ``spam`` violations on new accounts through
``EnforcementService.report_violation`` (three events and the stored standing per violation, as
``bench_http.py``'s requests do):

- ``time-ordered``: the production id factory, so events get ``events.new_event_id`` (UUID
  version 7) ids: the unique event id index grows at its right edge;
- ``random``: the same factory behind a wrapper, which the policy treats as injected, so events
  get uuid5 ids of random names (the production ids before commit 76a6263): each lands on a
  page of its own in that index.

Two measurements:

1. time per violation, in chunks that alternate which side goes first (median over chunks);
2. pages written to the WAL per violation and which B-tree each belongs to, read from the WAL
   frames (``dbstat`` names the pages) after ``--count`` violations with automatic checkpoints
   off, so that every page a commit wrote is still in the WAL.

Run from the repository root: ``.venv/bin/python benchmarks/bench_violation_pages.py``.
"""

from __future__ import annotations

import argparse
import collections
import os
import platform
import sqlite3
import statistics
import struct
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402
from common import load_average  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from enforcement.migrations import upgrade  # noqa: E402
from enforcement.policy import ViolationReport, load_policy, random_id  # noqa: E402
from enforcement.service import Actor, EnforcementService  # noqa: E402
from events import EventStore, create_engine  # noqa: E402
from projections.stored import StandingRepository  # noqa: E402

ACTOR = Actor("bench_violation_pages", "req_bench")
SIDES: dict[str, Callable[[str], str]] = {
    "time-ordered": random_id,
    "random": lambda prefix: random_id(prefix),  # not ``random_id`` itself: uuid5 event ids
}


def service(path: Path, new_id: Callable[[str], str], autocheckpoint: bool) -> EnforcementService:
    url = f"sqlite:///{path}"
    upgrade(url)
    engine = create_engine(url)
    if not autocheckpoint:

        @sa.event.listens_for(engine, "connect")
        def _no_autocheckpoint(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.execute("PRAGMA wal_autocheckpoint=0")

    store = EventStore(engine)
    return EnforcementService(
        store=store,
        standings=StandingRepository(store),
        policy=load_policy(None),
        clock=lambda: datetime.now(UTC),
        new_id=new_id,
    )


def report(svc: EnforcementService, count: int) -> None:
    for _ in range(count):
        violation = ViolationReport(
            category="spam", occurred_at=datetime.now(UTC), source="bench", description="bulk mail"
        )
        svc.report_violation(f"acct_{uuid.uuid4().hex[:16]}", violation, ACTOR)


def wal_frames(path: Path) -> list[int]:
    """The page number of every frame in the WAL file of ``path``."""
    data = (path.parent / (path.name + "-wal")).read_bytes()
    page_size = struct.unpack(">I", data[8:12])[0]
    pages, offset = [], 32
    while offset + 24 + page_size <= len(data):
        pages.append(struct.unpack(">I", data[offset : offset + 4])[0])
        offset += 24 + page_size
    return pages


def pages_per_violation(path: Path, count: int, warmup: int, new_id: Callable[[str], str]) -> Any:
    svc = service(path, new_id, autocheckpoint=False)
    report(svc, warmup)  # indexes of some depth, as in a database in use
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    report(svc, count)
    svc.store.engine.dispose()
    frames = wal_frames(path)
    with sqlite3.connect(path) as conn:
        owner = dict(conn.execute("SELECT pageno, name FROM dbstat"))
    by_tree = collections.Counter(owner.get(page, "?") for page in frames)
    return len(frames) / count, {name: n / count for name, n in by_tree.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=20, help="timed chunks per side")
    parser.add_argument("--chunk", type=int, default=300, help="violations per timed chunk")
    parser.add_argument("--count", type=int, default=200, help="violations whose pages count")
    parser.add_argument("--warmup", type=int, default=2000, help="violations before counting")
    args = parser.parse_args()

    console = Console(width=160)
    load_before = load_average()
    started = time.perf_counter()
    times: dict[str, list[float]] = {name: [] for name in SIDES}
    pages: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench_violation_pages_") as tmp:
        directory = Path(tmp)
        services = {
            name: service(directory / f"timed-{i}.db", new_id, autocheckpoint=True)
            for i, (name, new_id) in enumerate(SIDES.items())
        }
        names = list(SIDES)
        for k in range(args.chunks):
            for name in names if k % 2 == 0 else reversed(names):
                began = time.perf_counter()
                report(services[name], args.chunk)
                times[name].append((time.perf_counter() - began) / args.chunk * 1e6)
        for svc in services.values():
            svc.store.engine.dispose()
        for i, (name, new_id) in enumerate(SIDES.items()):
            path = directory / f"counted-{i}.db"
            pages[name] = pages_per_violation(path, args.count, args.warmup, new_id)

    console.print("What one violation writes on SQLite: policy event ids time-ordered or random")
    console.print(f"  machine: {os.cpu_count()} cores, {platform.platform()}")
    console.print(
        f"  load average (1 min) before {load_before}, after {load_average()}; Python "
        f"{platform.python_version()}, SQLite {sqlite3.sqlite_version}; temp dir on the default "
        f"tempfile location ({tempfile.gettempdir()})"
    )
    console.print(
        f"  time: {args.chunks} chunks of {args.chunk} violations per side, alternating; pages: "
        f"{args.count} violations after {args.warmup}, automatic checkpoints off"
    )
    table = Table(title=f"per violation (run took {time.perf_counter() - started:.0f} s)")
    table.add_column("event ids")
    table.add_column("µs (median of chunks)", justify="right")
    table.add_column("WAL pages", justify="right")
    table.add_column("of which the event id index", justify="right")
    table.add_column("the largest others", justify="left")
    for name in SIDES:
        total, trees = pages[name]
        event_ids = trees.get("sqlite_autoindex_events_1", 0.0)
        others = sorted(
            ((n, t) for t, n in trees.items() if t != "sqlite_autoindex_events_1"), reverse=True
        )[:4]
        table.add_row(
            name,
            f"{statistics.median(times[name]):,.0f}",
            f"{total:.1f}",
            f"{event_ids:.2f}",
            ", ".join(f"{t} {n:.2f}" for n, t in others),
        )
    console.print(table)
    ordered, random_ = (statistics.median(times[name]) for name in SIDES)
    console.print(f"  throughput, time-ordered / random: {random_ / ordered:.2f}x")


if __name__ == "__main__":
    main()
