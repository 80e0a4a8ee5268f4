"""``enforcement notices --all`` with and without ``--since``, on a log the store recorded.

``bench_replay.py``'s generated log shifts each account's history by up to 30 days, so its times
do not follow its positions and a ``--since`` pass there starts near the log's start. Here the
log is appended through ``EventStore.append_streams`` with a clock that moves on at every
transaction, as a running deployment's does: 100 accounts a transaction, each with three other
events and a notice, then a transaction with those notices' deliveries (a notice and its
outcome in 2 of every 5 events). Each backend measures, in one process and alternately, the
product's listing (``enforcement.notice_listing.listed_notices``, what the CLI runs) of every
notice, and of those recorded since the time of the event at ``--since-fraction`` of the log
from its end (default: the last tenth), beside that listing as it was before its pass started
at ``EventStore.position_before`` (the whole log read, the older notices dropped), and the
first page of 500 of each (``GET /v1/notices?limit=500``: ``listed_page``, each notice folded
from its account's events); the best of ``--repeats`` runs each.

Run from the repository root: ``.venv/bin/python benchmarks/bench_notices_since.py``.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from common import add_pg_url_argument, load_average, pg_database  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from enforcement.bootstrap import Container, bootstrap  # noqa: E402
from enforcement.migrations import upgrade  # noqa: E402
from enforcement.notice_listing import listed_notices, listed_page  # noqa: E402
from enforcement.settings import Settings  # noqa: E402
from enforcement.workers.recovery import notice_channels  # noqa: E402
from events import EventStore, NewEvent, StreamAppend, create_engine  # noqa: E402
from projections.notices import (  # noqa: E402
    NOTICE_TYPES,
    NoticeDeliveries,
    notice_deliveries,
    with_awaited,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
ACCOUNTS_PER_TRANSACTION = 100
PAGE = 500  # notices a page of ``GET /v1/notices`` holds in the rows that measure one


def populate(url: str, n_events: int) -> int:
    """Append about ``n_events`` through the store; returns the log's last position."""
    upgrade(url)
    ticks = itertools.count()
    store = EventStore(create_engine(url), clock=lambda: T0 + timedelta(seconds=next(ticks)))
    accounts = [f"acct_{n:05d}" for n in range(10_000)]
    turn = itertools.cycle(range(0, len(accounts), ACCOUNTS_PER_TRANSACTION))
    written = 0
    while written < n_events:
        start = next(turn)
        group = accounts[start : start + ACCOUNTS_PER_TRANSACTION]
        recorded = store.append_streams(
            [StreamAppend(account, None, _before_and_notice()) for account in group]
        )
        notices = [events[-1] for events in recorded]
        store.append_streams(
            [StreamAppend(n.account_id, None, [_delivered(n.event_id)]) for n in notices]
        )
        written += 5 * len(group)
    last = store.max_position()
    store.engine.dispose()
    return last


def _before_and_notice() -> list[NewEvent]:
    other = [NewEvent(type="ViolationReported", data={"n": n}, occurred_at=T0) for n in range(3)]
    notice = {
        "notice_id": f"ntc_{uuid.uuid4().hex[:12]}",
        "kind": "warning",
        "decision_event_id": str(uuid.uuid4()),
    }
    return [*other, NewEvent(type="NoticeIssued", data=notice, occurred_at=T0)]


def _delivered(notice_event_id: str) -> NewEvent:
    data = {"notice_id": "ntc", "notice_event_id": notice_event_id, "channel": "email"}
    return NewEvent(type="NoticeDelivered", data={**data, "attempt": 1}, occurred_at=T0)


def timed(run: Callable[[], int]) -> tuple[float, int]:
    started = time.perf_counter()
    listed = run()
    return time.perf_counter() - started, listed


@contextmanager
def fresh_database(backend: str, workdir: Path, admin_url: str) -> Iterator[str]:
    if backend != "sqlite":
        with pg_database(admin_url, "bench_notices_since") as url:
            yield url
        return
    path = workdir / "bench_notices_since.db"
    try:
        yield f"sqlite:///{path}"
    finally:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)


def measure(url: str, fraction: float, repeats: int) -> dict[str, tuple[float, int, int]]:
    """Best seconds, notices listed and the pass's first position, of each variant."""
    container: Container = bootstrap(Settings(database_url=url))
    try:
        store = container.store
        last = store.max_position()
        since = store.read_all(round(last * (1 - fraction)), 1)[0].recorded_at
        last_part = f"--since (the last {fraction:.0%})"
        variants: dict[str, tuple[Callable[[], int], int]] = {
            "every notice": (lambda: len(listed_notices(container, None)), 1),
            f"{last_part}, its pass from the start (before)": (
                lambda: len(_from_the_start(container, since)),
                1,
            ),
            last_part: (
                lambda: len(listed_notices(container, None, since)),
                store.position_before(since) + 1,
            ),
            f"the first page of {PAGE} (GET /v1/notices?limit={PAGE})": (
                lambda: len(listed_page(container, None, 0, PAGE)[0]),
                1,
            ),
            f"{last_part}, its first page of {PAGE}": (
                lambda: len(listed_page(container, since, 0, PAGE)[0]),
                store.position_before(since) + 1,
            ),
        }
        best: dict[str, tuple[float, int, int]] = {}
        for _ in range(repeats):
            for name, (run, first) in variants.items():
                seconds, listed = timed(run)
                if name not in best or seconds < best[name][0]:
                    best[name] = (seconds, listed, first)
        return best
    finally:
        container.close()


def _from_the_start(container: Container, since: datetime) -> list[NoticeDeliveries]:
    """The listing as it was before ``EventStore.position_before``: the whole log's notices
    and outcomes read, those issued before ``since`` dropped by the fold."""
    found = notice_deliveries(container.store.iter_all_of_types(NOTICE_TYPES), since)
    return with_awaited(found, notice_channels(container.engine, {n.account_id for n in found}))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--since-fraction", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, default=3)
    add_pg_url_argument(parser)
    args = parser.parse_args(argv)
    console = Console(width=110)
    workdir = Path(tempfile.mkdtemp(prefix="bench_notices_since_"))
    table = Table(title=f"enforcement notices --all, a log of {args.events:,} events")
    for column in (
        "backend",
        "listing",
        "pass from",
        "notices",
        "seconds",
        "speed vs every notice",
    ):
        table.add_column(column, justify="left" if column in ("backend", "listing") else "right")
    for backend in args.backends.split(","):
        with fresh_database(backend, workdir, args.pg_url) as url:
            started = time.perf_counter()
            last = populate(url, args.events)
            console.print(
                f"[bold]{backend}[/]: appended {last:,} events through the store in "
                f"{time.perf_counter() - started:.0f}s"
            )
            best = measure(url, args.since_fraction, args.repeats)
            whole = best["every notice"][0]  # the speeds: against this row
            for name, (seconds, listed, first) in best.items():
                table.add_row(
                    backend, name, f"{first:,} of {last:,}", f"{listed:,}", f"{seconds:.2f}",
                    f"{whole / seconds:.1f}x",
                )  # fmt: skip
    console.print(table)
    console.print(
        f"Best of {args.repeats} alternating runs each, in one process. Python "
        f"{sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {load_average()}."
    )


if __name__ == "__main__":
    main()
