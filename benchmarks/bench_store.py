"""Event-store throughput: our ``events.EventStore`` against the ``eventsourcing`` library.

Both sides run the same workload, in the same process, against the same database server, each
in a fresh database of its own (SQLite: a file in a temporary directory; PostgreSQL: a temporary
database created here and dropped at the end):

- append, 1 event per transaction: N events round-robin over N/10 streams, sequentially;
- append, B events per transaction (B=100 by default): N/B transactions, each to a new stream;
- read all: page through every event by global position, 1,000 a page, and decode each into its
  payload class (ours: ``EventStore.iter_all`` + ``Codec.decode``; theirs:
  ``select_notifications`` + ``Mapper.to_domain_event`` with a ``JSONTranscoder``);
- verify: ours recomputes the SHA-256 chain of every stream (``EventStore.verify_all``: one
  pass over the log in (stream, version) order, as ``enforcement verify`` does).
  eventsourcing has no hash chain, so its figure is only ``select_events`` of every stream,
  undecoded: it does strictly less work than ours.

Appends are timed from payload object to commit on both sides: ours ``Codec.encode`` +
``EventStore.append`` (with the expected version); theirs a ``DomainEvent`` +
``Mapper.to_stored_event`` + ``ApplicationRecorder.insert_events``. Append measurements are
interleaved in ten chunks that alternate which side goes first, so that both meet the same disk
and cache conditions; reads alternate per repetition. Every measurement is repeated (3 times by
default) and the table shows the median.

Run from the repository root: ``.venv/bin/python benchmarks/bench_store.py --help``.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import io
import json
import os
import platform
import pstats
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any, TypeVar, cast

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402
from common import add_pg_url_argument, load_average  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from enforcement.migrations import upgrade  # noqa: E402
from events import Codec, EventStore, create_engine  # noqa: E402

try:
    from eventsourcing.domain import DomainEvent
    from eventsourcing.persistence import (
        ApplicationRecorder,
        DatetimeAsISO,
        JSONTranscoder,
        Mapper,
        UUIDAsHex,
    )
    from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteDatastore
except ImportError as exc:  # pragma: no cover - depends on the environment
    sys.exit(f"{exc}: install the benchmark extra: .venv/bin/pip install -e '.[bench]'")

PAGE_SIZE = 1000
EVENTS_PER_STREAM = 10  # the 1-event-per-transaction workload uses N / 10 streams
CHUNKS = 10  # append measurements alternate the two sides this many times
OPERATIONS = ("append 1/tx", "append {batch}/tx", "read_all + decode", "verify all streams")
OURS, THEIRS = "ours", "eventsourcing"
T = TypeVar("T")
Chunk = Callable[[], int]  # one timed piece of a side's work: returns the events it handled


# ---------------------------------------------------------------------------- payloads


@dataclass(frozen=True, slots=True)
class ViolationReported:
    """Our payload: a small dataclass registered with the Codec."""

    category: str
    severity: int
    source: str
    detail: str


class ESViolationReported(DomainEvent):
    """The same payload as an eventsourcing domain event (plus id, version and timestamp)."""

    category: str
    severity: int
    source: str
    detail: str


def payload_fields(i: int) -> dict[str, Any]:
    return {
        "category": ("spam", "abuse", "scraping", "fraud")[i % 4],
        "severity": i % 5,
        "source": "reporter-7",
        "detail": f"request {i:08d} exceeded the acceptable use limits for its plan",
    }


# ---------------------------------------------------------------------------- the two sides


class Side:
    """One implementation under test, on its own fresh database."""

    name: str

    def new_stream_ids(self, count: int) -> list[str]:
        return [str(uuid.uuid4()) for _ in range(count)]

    def append_round(self, streams: Sequence[str], version: int) -> int:
        """Append one event to each stream (at ``version`` + 1), one transaction each."""
        raise NotImplementedError

    def append_batches(self, streams: Sequence[str], batch: int) -> int:
        """Append ``batch`` events to each (new) stream, one transaction per stream."""
        raise NotImplementedError

    def read_all(self) -> int:
        raise NotImplementedError

    def verify_all(self) -> int:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class Ours(Side):
    name = OURS

    def __init__(self, url: str, idempotency_keys: bool = False) -> None:
        upgrade(url)
        self.engine = create_engine(url)
        self.store = EventStore(self.engine)
        self.codec = Codec()
        self.codec.register(ViolationReported)
        self.idempotency_keys = idempotency_keys
        self._seq = 0

    def _key(self) -> str | None:
        if not self.idempotency_keys:
            return None
        self._seq += 1
        return f"bench-{self._seq}"

    def append_round(self, streams: Sequence[str], version: int) -> int:
        store, encode = self.store, self.codec.encode
        for i, account_id in enumerate(streams):
            event = encode(ViolationReported(**payload_fields(i)), occurred_at=datetime.now(UTC))
            store.append(account_id, version, [event], self._key())
        return len(streams)

    def append_batches(self, streams: Sequence[str], batch: int) -> int:
        store, encode = self.store, self.codec.encode
        for account_id in streams:
            now = datetime.now(UTC)
            new = [
                encode(ViolationReported(**payload_fields(k)), occurred_at=now)
                for k in range(batch)
            ]
            store.append(account_id, 0, new, self._key())
        return len(streams) * batch

    def read_all(self) -> int:
        decode = self.codec.decode
        count = 0
        for record in self.store.iter_all(page_size=PAGE_SIZE):
            decode(record)
            count += 1
        return count

    def verify_all(self) -> int:
        count = 0
        for account_id, result in self.store.verify_all():
            if not result.ok:
                raise AssertionError(f"stream {account_id} does not verify: {result}")
            count += result.events
        return count

    def close(self) -> None:
        self.engine.dispose()


class Theirs(Side):
    name = THEIRS

    def __init__(self, recorder: ApplicationRecorder | None, close: Callable[[], None]) -> None:
        self.recorder = recorder
        transcoder = JSONTranscoder()
        transcoder.register(UUIDAsHex())
        transcoder.register(DatetimeAsISO())
        self.mapper: Mapper[uuid.UUID] = Mapper(transcoder=transcoder)
        self.stream_ids: list[uuid.UUID] = []  # eventsourcing cannot list its streams
        self._close = close

    def new_stream_ids(self, count: int) -> list[str]:
        ids = [uuid.uuid4() for _ in range(count)]
        self.stream_ids.extend(ids)
        return [str(i) for i in ids]

    def append_round(self, streams: Sequence[str], version: int) -> int:
        assert self.recorder is not None
        to_stored, insert = self.mapper.to_stored_event, self.recorder.insert_events
        for i, stream in enumerate(streams):
            event = ESViolationReported(
                originator_id=uuid.UUID(stream),
                originator_version=version + 1,
                timestamp=datetime.now(UTC),
                **payload_fields(i),
            )
            insert([to_stored(event)])
        return len(streams)

    def append_batches(self, streams: Sequence[str], batch: int) -> int:
        assert self.recorder is not None
        to_stored, insert = self.mapper.to_stored_event, self.recorder.insert_events
        for stream in streams:
            originator_id = uuid.UUID(stream)
            now = datetime.now(UTC)
            insert(
                [
                    to_stored(
                        ESViolationReported(
                            originator_id=originator_id,
                            originator_version=k + 1,
                            timestamp=now,
                            **payload_fields(k),
                        )
                    )
                    for k in range(batch)
                ]
            )
        return len(streams) * batch

    def read_all(self) -> int:
        assert self.recorder is not None
        select, to_domain = self.recorder.select_notifications, self.mapper.to_domain_event
        count, last = 0, 0
        while True:
            page = select(last, PAGE_SIZE, inclusive_of_start=False)
            for notification in page:
                to_domain(notification)
            count += len(page)
            if len(page) < PAGE_SIZE:
                return count
            last = page[-1].id

    def verify_all(self) -> int:
        # No hash chain to check: read every stream (undecoded), the nearest equivalent.
        assert self.recorder is not None
        select = self.recorder.select_events
        return sum(len(select(originator_id)) for originator_id in self.stream_ids)

    def close(self) -> None:
        self._close()


# ---------------------------------------------------------------------------- backends


@dataclass
class Backend:
    name: str
    ours: Ours
    theirs: Theirs
    conditions: list[str]
    cleanup: Callable[[], None]


# Keyed by whatever the driver returns for PRAGMA synchronous; unknown values print as is.
SQLITE_SYNC: dict[object, str] = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}


def sqlite_backend(directory: Path, idempotency_keys: bool) -> Backend:
    directory.mkdir(parents=True, exist_ok=True)
    ours = Ours(f"sqlite:///{directory / 'ours.db'}", idempotency_keys)
    datastore = SQLiteDatastore(str(directory / "eventsourcing.db"))
    recorder = SQLiteApplicationRecorder(datastore)
    recorder.create_table()
    theirs = Theirs(recorder, datastore.close)

    # Read the settings back from live connections rather than trusting either library.
    with ours.engine.connect() as conn:
        ours_mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
        ours_sync = conn.exec_driver_sql("PRAGMA synchronous").scalar()
    with datastore.transaction(commit=False) as cursor:
        cursor.execute("PRAGMA journal_mode")
        theirs_mode = cursor.fetchone()[0]
        cursor.execute("PRAGMA synchronous")
        theirs_sync = cursor.fetchone()[0]
    conditions = [
        f"SQLite {sqlite3.sqlite_version}: one file each in a temp dir on {filesystem(directory)}",
        f"  ours: journal_mode={ours_mode}, synchronous={SQLITE_SYNC.get(ours_sync, ours_sync)} "
        "(set by events.sqlite_connections), writers BEGIN IMMEDIATE",
        f"  eventsourcing: journal_mode={theirs_mode}, "
        f"synchronous={SQLITE_SYNC.get(theirs_sync, theirs_sync)} (SQLiteDatastore sets WAL; "
        "synchronous is SQLite's compiled default, not set by the library), writers BEGIN",
    ]
    return Backend("sqlite", ours, theirs, conditions, lambda: None)


def postgres_backend(admin_url: str, idempotency_keys: bool) -> Backend:
    try:
        from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
    except ImportError as exc:
        sys.exit(
            f"{exc}: eventsourcing's PostgreSQL recorder needs psycopg_pool "
            "(.venv/bin/pip install 'eventsourcing[postgres]')"
        )
    admin = sa.make_url(admin_url)
    if admin.get_driver_name() in ("", "psycopg2"):
        admin = admin.set(drivername="postgresql+psycopg")
    admin_engine = sa.create_engine(admin, isolation_level="AUTOCOMMIT")
    suffix = uuid.uuid4().hex[:10]
    created: list[str] = []

    def cleanup() -> None:
        with admin_engine.connect() as conn:
            for name in created:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin_engine.dispose()

    try:
        with admin_engine.connect() as conn:
            for name in (f"bench_ours_{suffix}", f"bench_es_{suffix}"):
                conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
                created.append(name)
            settings = {
                name: conn.exec_driver_sql(f"SHOW {name}").scalar()
                for name in (
                    "server_version",
                    "synchronous_commit",
                    "fsync",
                    "wal_sync_method",
                    "shared_buffers",
                )
            }
        ours_url = admin.set(database=created[0]).render_as_string(hide_password=False)
        ours = Ours(ours_url, idempotency_keys)
        datastore = PostgresDatastore(
            dbname=created[1],
            host=admin.host or "127.0.0.1",
            port=admin.port or 5432,
            user=admin.username or "",
            password=admin.password or "",
        )
        recorder = PostgresApplicationRecorder(datastore)
        recorder.create_table()
        theirs = Theirs(recorder, datastore.close)
    except BaseException:
        cleanup()
        raise
    conditions = [
        f"PostgreSQL {settings['server_version']} at {admin.host}:{admin.port}, one fresh "
        f"database each: synchronous_commit={settings['synchronous_commit']}, "
        f"fsync={settings['fsync']}, wal_sync_method={settings['wal_sync_method']}, "
        f"shared_buffers={settings['shared_buffers']}",
        "  ours: SQLAlchemy QueuePool + psycopg 3 (hot statements on the driver connection, "
        "liveness checked on checkout without a round trip), pipelined "
        "pg_advisory_xact_lock + head read before the insert, a multi-event append as one "
        "INSERT … SELECT FROM unnest(binary arrays), jsonb parsed with orjson where it equals json",
        "  eventsourcing: psycopg 3 pool (1 connection), pipeline mode, LOCK TABLE … IN "
        "EXCLUSIVE MODE + NOTIFY before the insert, default originator_id_type=uuid",
    ]
    return Backend("postgres", ours, theirs, conditions, cleanup)


def filesystem(path: Path) -> str:
    best, fstype = "", "unknown"
    with contextlib.suppress(OSError), open("/proc/mounts") as mounts:
        for line in mounts:
            parts = line.split()
            if len(parts) > 2 and str(path).startswith(parts[1]) and len(parts[1]) > len(best):
                best, fstype = parts[1], parts[2]
    return f"{best or '?'} ({fstype})"


# ---------------------------------------------------------------------------- running

Results = dict[tuple[str, str], list[float]]  # (operation, side) -> events/s of each run


def chunked(items: Sequence[T], parts: int) -> list[Sequence[T]]:
    """``items`` in at most ``parts`` slices of equal size (the last may be shorter)."""
    size = max(1, -(-len(items) // parts))
    return [items[i : i + size] for i in range(0, len(items), size)]


def run_interleaved(
    sides: Sequence[Side], work: dict[str, list[Chunk]], first: int
) -> dict[str, float]:
    """Run each side's chunks in turn, alternating who goes first; return events/s per side."""
    seconds = dict.fromkeys(work, 0.0)
    events = dict.fromkeys(work, 0)
    gc.collect()
    for i in range(max(len(chunks) for chunks in work.values())):
        order = list(sides) if (i + first) % 2 == 0 else list(reversed(sides))
        for side in order:
            chunks = work[side.name]
            if i < len(chunks):
                start = time.perf_counter()
                events[side.name] += chunks[i]()
                seconds[side.name] += time.perf_counter() - start
    if len(set(events.values())) != 1:
        raise AssertionError(f"the sides did not handle the same number of events: {events}")
    return {name: events[name] / seconds[name] for name in work}


def run_backend(backend: Backend, n_events: int, batch: int, repeats: int) -> Results:
    sides: list[Side] = [backend.ours, backend.theirs]
    n_streams = n_events // EVENTS_PER_STREAM
    n_batches = n_events // batch
    op_one, op_batch, op_read, op_verify = (op.format(batch=batch) for op in OPERATIONS)
    results: Results = {}

    def record(op: str, rates: dict[str, float]) -> None:
        for name, rate in rates.items():
            results.setdefault((op, name), []).append(rate)

    for rep in range(repeats):
        one: dict[str, list[Chunk]] = {}
        many: dict[str, list[Chunk]] = {}
        for side in sides:
            streams = side.new_stream_ids(n_streams)
            # cast: mypy cannot infer a lambda whose default arguments bind the loop variables.
            one[side.name] = [
                cast(Chunk, lambda s=side, st=streams, v=v: s.append_round(st, v))
                for v in range(EVENTS_PER_STREAM)
            ]
            many[side.name] = [
                cast(Chunk, lambda s=side, st=part: s.append_batches(st, batch))
                for part in chunked(side.new_stream_ids(n_batches), CHUNKS)
            ]
        record(op_one, run_interleaved(sides, one, rep))
        record(op_batch, run_interleaved(sides, many, rep))
    for rep in range(repeats):
        record(op_read, run_interleaved(sides, {s.name: [s.read_all] for s in sides}, rep))
        record(op_verify, run_interleaved(sides, {s.name: [s.verify_all] for s in sides}, rep))
    return results


def run_profiles(backend: Backend, n_events: int, batch: int, console: Console) -> None:
    """One more, untimed pass of every operation per side under cProfile (top 25 by tottime)."""
    ops = [op.format(batch=batch) for op in OPERATIONS]
    for side in (backend.ours, backend.theirs):
        one_streams = side.new_stream_ids(n_events // EVENTS_PER_STREAM)
        batch_streams = side.new_stream_ids(n_events // batch)
        work: list[Callable[[], Any]] = [
            cast(
                Callable[[], list[int]],
                lambda s=side, st=one_streams: [
                    s.append_round(st, v) for v in range(EVENTS_PER_STREAM)
                ],
            ),
            cast(Chunk, lambda s=side, st=batch_streams: s.append_batches(st, batch)),
            side.read_all,
            side.verify_all,
        ]
        for op, fn in zip(ops, work, strict=True):
            profiler = cProfile.Profile()
            profiler.runcall(fn)
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
            console.rule(f"cProfile: {backend.name} · {side.name} · {op}")
            console.print(out.getvalue(), markup=False, highlight=False)


# ---------------------------------------------------------------------------- report


def event_sizes() -> tuple[int, int]:
    """Stored JSON bytes per event: ours ``data`` + ``metadata``; theirs ``state``."""
    codec = Codec()
    codec.register(ViolationReported)
    new = codec.encode(ViolationReported(**payload_fields(1)), occurred_at=datetime.now(UTC))
    ours = len(json.dumps(new.data).encode()) + len(json.dumps(new.metadata).encode())
    stored = Theirs(None, lambda: None).mapper.to_stored_event(
        ESViolationReported(
            originator_id=uuid.uuid4(),
            originator_version=1,
            timestamp=datetime.now(UTC),
            **payload_fields(1),
        )
    )
    return ours, len(stored.state)


def cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def version_of(package: str) -> str:
    try:
        return package_version(package)
    except PackageNotFoundError:
        return "?"


def code_under_test() -> str:
    import events

    where = Path(events.__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(where), "status", "--porcelain", "--", "."],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return f"{where} (not a git checkout)"
    return f"{where} at git {head}" + (" + uncommitted changes" if dirty else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Event-store throughput: events/ against the eventsourcing library."
    )
    parser.add_argument(
        "--events", type=int, default=2000, help="events per append measurement (default 2000)"
    )
    parser.add_argument(
        "--batch",
        type=int,
        default=100,
        help="events per transaction in the batched append (default 100)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="runs of every measurement; the table shows the median (default 3)",
    )
    parser.add_argument(
        "--backends",
        default="sqlite,postgres",
        help="comma-separated list of sqlite, postgres (default both)",
    )
    add_pg_url_argument(parser)
    parser.add_argument(
        "--idempotency-keys",
        action="store_true",
        help="give every one of our appends an idempotency key (eventsourcing "
        "has no equivalent; off by default)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="afterwards, run every operation once more under cProfile and print "
        "the top functions of each side",
    )
    args = parser.parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = sorted(set(backends) - {"sqlite", "postgres"})
    if unknown or not backends:
        parser.error(f"unknown backend(s): {', '.join(unknown) or '(none given)'}")
    if args.batch < 1 or args.repeats < 1 or args.events < max(args.batch, EVENTS_PER_STREAM):
        parser.error("need --batch >= 1, --repeats >= 1 and --events >= max(--batch, 10)")

    console = Console(width=max(120, Console().width))
    ours_size, theirs_size = event_sizes()
    n_streams, n_batches = args.events // EVENTS_PER_STREAM, args.events // args.batch
    appended = n_streams * EVENTS_PER_STREAM + n_batches * args.batch
    stored = args.repeats * appended
    header = [
        f"machine: {os.cpu_count()} cores ({cpu_model()}), {platform.system()} "
        f"{platform.release()}",
        f"Python {platform.python_version()}, SQLAlchemy {sa.__version__}, psycopg "
        f"{version_of('psycopg')}, eventsourcing {version_of('eventsourcing')}",
        f"code under test: {code_under_test()}",
        f"event: a 4-field payload dataclass; stored JSON per event: ours {ours_size} B "
        f"(data + metadata, plus event id, type, times, prev_hash and hash columns), "
        f"eventsourcing {theirs_size} B (state)",
        f"append 1/tx: {n_streams * EVENTS_PER_STREAM} events, round-robin over {n_streams} new "
        f"streams, one transaction each; ours with the expected version"
        + (" and an idempotency key" if args.idempotency_keys else ", no idempotency key"),
        f"append {args.batch}/tx: {n_batches} transactions of {args.batch} events, each to a new "
        "stream",
        "appends are timed from payload object to commit (ours Codec.encode + append; theirs "
        "Mapper.to_stored_event + insert_events), interleaved in chunks",
        f"read/verify: all {stored} events in each database after {args.repeats} rounds of both "
        f"appends, {args.repeats * (n_streams + n_batches)} streams, pages of {PAGE_SIZE}",
        "read: ours iter_all + Codec.decode; theirs select_notifications + "
        "Mapper.to_domain_event (JSONTranscoder)",
        "verify: ours recomputes every stream's SHA-256 chain in one ordered pass (verify_all); "
        "eventsourcing has no chain, so its "
        "figure is select_events of every stream, undecoded (less work than ours)",
        f"each figure: median of {args.repeats} runs, in events per second; ratio = ours / "
        "eventsourcing (≥ 1.00x means ours is at least as fast)",
    ]

    rows: list[tuple[str, str, float, float]] = []
    load_before = load_average()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_store_") as tmp:
        for name in backends:
            if name == "sqlite":
                backend = sqlite_backend(Path(tmp) / name, args.idempotency_keys)
            else:
                backend = postgres_backend(args.pg_url, args.idempotency_keys)
            header.extend(backend.conditions)
            try:
                results = run_backend(backend, args.events, args.batch, args.repeats)
                if args.profile:
                    run_profiles(backend, args.events, args.batch, console)
            finally:
                backend.ours.close()
                backend.theirs.close()
                backend.cleanup()
            for op in (o.format(batch=args.batch) for o in OPERATIONS):
                rows.append(
                    (
                        op,
                        name,
                        statistics.median(results[(op, OURS)]),
                        statistics.median(results[(op, THEIRS)]),
                    )
                )
    elapsed = time.perf_counter() - started
    header.insert(
        1,
        f"load average (1 min) before the run {load_before}, after it {load_average()}: "
        "anything above ~0.5 means other work shared the 2 cores",
    )

    console.print("[bold]Event store throughput: events/ vs eventsourcing[/bold]")
    for line in header:
        console.print(f"  {line}", highlight=False, markup=False)
    table = Table(title=f"events per second, median of {args.repeats} (run took {elapsed:.0f} s)")
    table.add_column("operation")
    table.add_column("backend")
    table.add_column("ours ev/s", justify="right")
    table.add_column("eventsourcing ev/s", justify="right")
    table.add_column("ratio (ours/theirs)", justify="right")
    for op, name, ours_rate, theirs_rate in rows:
        ratio = ours_rate / theirs_rate
        style = "green" if ratio >= 1.0 else "red"
        table.add_row(
            op, name, f"{ours_rate:,.0f}", f"{theirs_rate:,.0f}", f"[{style}]{ratio:.2f}x[/{style}]"
        )
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
