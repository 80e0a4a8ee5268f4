"""The floor under ``bench_store.py``'s SQLite append rows: the statements alone, no library.

``bench_store.py`` times our ``EventStore`` against eventsourcing's recorder, Python included.
Here both sides' append statements also run straight on ``sqlite3``, with every parameter
computed beforehand (ids, JSON texts, hashes, times): what is left is what SQLite itself takes
for each table. Beside them, ``bench_store.py``'s own two sides append the same events, so one
run shows how much time each side's Python adds, and how much ours could add for the store to
match the library (negative: not even our bare statements would). The narrower variants of our
table show what a different table would buy.

Sides, each a fresh file of its own in one temporary directory, WAL, ``synchronous=FULL``:

- ``ours``: the ``events`` table as ``alembic upgrade head`` creates it (three unique or
  plain indexes beside the rowid: event id, (account, version), recorded_at); a 1-event
  append is ``BEGIN IMMEDIATE``, the head read, the insert, ``COMMIT``; a B-event append is
  ``BEGIN IMMEDIATE``, the head read, ``max(position)``, one multi-row insert with the positions
  given, ``COMMIT`` (as ``events/writing.py`` does);
- ``ours - recorded_at index``: the same, without ``ix_events_recorded_at``;
- ``narrow``: the same statements on a table with binary ids and hashes (16 and 32 bytes
  instead of 36 and 64 characters), times as integer microseconds, no ``recorded_at`` index;
- ``eventsourcing``: its ``SQLiteApplicationRecorder`` table (rowid + primary key on
  (originator_id, originator_version)) and its statements: ``BEGIN``, one ``INSERT`` per
  event, ``COMMIT``;
- ``eventsourcing library`` and ``our store``: ``bench_store.py``'s two sides themselves, timed
  as there from payload object to commit (theirs: a ``DomainEvent``, ``Mapper.to_stored_event``
  and ``SQLiteApplicationRecorder.insert_events``; ours: ``Codec.encode`` and
  ``EventStore.append`` with the expected version). The library's time per event less our
  statements' is what our Python (encoding included) may take for the store to match it; our
  store's less our statements' is what it does take.

The payload is ``bench_store.py``'s. Appends alternate between the sides in chunks, in an
order that rotates and, every other chunk, reverses; every figure is the median of
``--repeats`` runs.

Run from the repository root: ``.venv/bin/python benchmarks/bench_store_floor.py``.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench_store import Chunk, Ours, Theirs, chunked, filesystem, payload_fields  # noqa: E402
from common import load_average  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from enforcement.migrations import upgrade  # noqa: E402
from events.types import new_event_id  # noqa: E402

try:
    from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteDatastore
except ImportError as exc:  # pragma: no cover - depends on the environment
    sys.exit(f"{exc}: install the benchmark extra: .venv/bin/pip install -e '.[bench]'")

OURS, WITHOUT_RECORDED, NARROW, STORE, THEIRS, LIBRARY = (
    "ours",
    "ours - recorded_at index",
    "narrow",
    "our store",
    "eventsourcing",
    "eventsourcing library",
)
SIDES = (OURS, WITHOUT_RECORDED, NARROW, STORE, THEIRS, LIBRARY)
CHUNKS = 10
COLUMNS = (
    "event_id, account_id, version, type, schema_version, data, metadata, occurred_at, "
    "recorded_at, prev_hash, hash"
)
HEAD = "SELECT version, hash FROM events WHERE account_id = ? ORDER BY version DESC LIMIT 1"
NARROW_TABLE = """CREATE TABLE events (
    position INTEGER PRIMARY KEY, event_id BLOB NOT NULL, account_id TEXT NOT NULL,
    version INTEGER NOT NULL, type TEXT NOT NULL, schema_version INTEGER NOT NULL,
    data TEXT NOT NULL, metadata TEXT NOT NULL, occurred_at INTEGER NOT NULL,
    recorded_at INTEGER NOT NULL, prev_hash BLOB NOT NULL, hash BLOB NOT NULL,
    CONSTRAINT uq_events_event_id UNIQUE (event_id),
    CONSTRAINT uq_events_account_version UNIQUE (account_id, version),
    CONSTRAINT ck_events_version_positive CHECK (version >= 1))"""
THEIR_TABLE = """CREATE TABLE stored_events (originator_id TEXT, originator_version INTEGER,
    topic TEXT, state BLOB, PRIMARY KEY (originator_id, originator_version))"""
THEIR_INSERT = "INSERT INTO stored_events VALUES (?,?,?,?)"
THEIR_TOPIC = "bench_store:ESViolationReported"


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    return conn


@dataclass
class Side:
    name: str
    conn: sqlite3.Connection | None
    binary: bool = False  # the narrow table's ids, hashes and times
    library: Ours | Theirs | None = None  # bench_store.py's side, for our store and theirs

    def row(self, account_id: str, version: int, i: int, now: datetime) -> tuple[Any, ...]:
        data = json.dumps(payload_fields(i), sort_keys=True, separators=(",", ":"))
        digest = hashlib.sha256(f"{account_id}:{version}".encode()).digest()
        if self.name == THEIRS:
            state = json.dumps(
                {**payload_fields(i), "timestamp": {"_type_": "datetime_iso", "_data_": str(now)}},
                separators=(",", ":"),  # as eventsourcing's JSONTranscoder writes it
            ).encode()
            return (uuid.UUID(account_id).hex, version, THEIR_TOPIC, state)
        if self.library is not None:
            return (account_id, version)  # encoded inside the timing, as bench_store.py does
        if self.binary:
            micros = int(now.timestamp() * 1_000_000)
            event_id: Any = uuid.UUID(new_event_id()).bytes
            return (event_id, account_id, version, "ViolationReported", 1, data, "{}",
                    micros, micros, bytes(32), digest)  # fmt: skip
        text = now.strftime("%Y-%m-%d %H:%M:%S.%f")
        return (new_event_id(), account_id, version, "ViolationReported", 1, data, "{}",
                text, text, "0" * 64, digest.hex())  # fmt: skip

    def append_one(self, rows: list[tuple[Any, ...]]) -> int:
        """One transaction per row (each to its own stream)."""
        if self.library is not None:
            for account_id, version in rows:
                self.library.append_round([account_id], version - 1)
            return len(rows)
        assert self.conn is not None
        execute = self.conn.execute
        if self.name == THEIRS:
            for row in rows:
                execute("BEGIN")
                execute(THEIR_INSERT, row)
                execute("COMMIT")
            return len(rows)
        insert = f"INSERT INTO events ({COLUMNS}) VALUES ({', '.join('?' * 11)})"
        for row in rows:
            execute("BEGIN IMMEDIATE")
            execute(HEAD, (row[1],)).fetchone()
            execute(insert, row)
            execute("COMMIT")
        return len(rows)

    def append_batch(self, rows: list[tuple[Any, ...]]) -> int:
        """All ``rows`` (one stream's) in one transaction."""
        if self.library is not None:
            return self.library.append_batches([rows[0][0]], len(rows))
        assert self.conn is not None
        execute = self.conn.execute
        if self.name == THEIRS:
            execute("BEGIN")
            for row in rows:
                execute(THEIR_INSERT, row)
            execute("COMMIT")
            return len(rows)
        insert = _insert_many(len(rows))
        execute("BEGIN IMMEDIATE")
        execute(HEAD, (rows[0][1],)).fetchone()
        [(last,)] = execute("SELECT coalesce(max(position), 0) FROM events").fetchall()
        # The positions are known only under the lock: spliced in as the store does.
        flat = [v for n, row in enumerate(rows, last + 1) for v in (n, *row)]
        execute(insert, flat)
        execute("COMMIT")
        return len(rows)


@functools.cache
def _insert_many(count: int) -> str:
    values = ", ".join(["(" + ", ".join("?" * 12) + ")"] * count)
    return f"INSERT INTO events (position, {COLUMNS}) VALUES {values}"


def make_sides(directory: Path) -> dict[str, Side]:
    sides: dict[str, Side] = {}
    for name in (OURS, WITHOUT_RECORDED):
        path = directory / f"{name.split()[0]}-{len(sides)}.db"
        upgrade(f"sqlite:///{path}")
        conn = connect(path)
        if name == WITHOUT_RECORDED:
            conn.execute("DROP INDEX ix_events_recorded_at")
        sides[name] = Side(name, conn)
    sides[STORE] = Side(STORE, None, library=Ours(f"sqlite:///{directory / 'store.db'}"))
    narrow = connect(directory / "narrow.db")
    narrow.execute(NARROW_TABLE)
    sides[NARROW] = Side(NARROW, narrow, binary=True)
    theirs = connect(directory / "eventsourcing.db")
    theirs.execute(THEIR_TABLE)
    sides[THEIRS] = Side(THEIRS, theirs)
    datastore = SQLiteDatastore(str(directory / "eventsourcing-library.db"))
    recorder = SQLiteApplicationRecorder(datastore)
    recorder.create_table()
    sides[LIBRARY] = Side(LIBRARY, None, library=Theirs(recorder, datastore.close))
    return sides


def measure(
    sides: dict[str, Side], events: int, batch: int, round_no: int
) -> dict[tuple[str, str], float]:
    """One run of both workloads on every side: events/s per (workload, side)."""
    streams = max(1, events // 10)
    work: dict[tuple[str, str], list[Chunk]] = {}
    for side in sides.values():
        ids = [str(uuid.uuid4()) for _ in range(streams)]
        now = datetime.now(UTC)
        # 1/tx: every stream gets ten events, one per transaction, round robin.
        one = [side.row(a, v, i, now) for v in range(1, 11) for i, a in enumerate(ids)]
        # cast: mypy cannot infer a lambda whose default arguments bind the loop variables.
        work[("append 1/tx", side.name)] = [
            cast(Chunk, lambda rows=rows, s=side: s.append_one(rows))
            for rows in chunked(one, CHUNKS)
        ]
        batches = [
            [side.row(a, v, v, now) for v in range(1, batch + 1)]
            for a in (str(uuid.uuid4()) for _ in range(max(1, events // batch)))
        ]
        work[(f"append {batch}/tx", side.name)] = [
            cast(Chunk, lambda bs=bs, s=side: sum(s.append_batch(b) for b in bs))
            for bs in chunked(batches, CHUNKS)
        ]
    rates: dict[tuple[str, str], float] = {}
    for operation in ("append 1/tx", f"append {batch}/tx"):
        seconds = dict.fromkeys(sides, 0.0)
        counts = dict.fromkeys(sides, 0)
        names = list(sides)
        for k in range(CHUNKS):
            # Each chunk rotates who goes first, and every other chunk runs backwards, so
            # that no side always follows the same one.
            shift = (k + round_no) % len(names)
            order = names[shift:] + names[:shift]
            for name in reversed(order) if k % 2 else order:
                chunks = work[(operation, name)]
                if k < len(chunks):
                    start = time.perf_counter()
                    counts[name] += chunks[k]()
                    seconds[name] += time.perf_counter() - start
        for name in names:
            rates[(operation, name)] = counts[name] / seconds[name]
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000, help="events per workload and run")
    parser.add_argument("--batch", type=int, default=100, help="events per batched append")
    parser.add_argument("--repeats", type=int, default=5, help="runs; the table shows medians")
    args = parser.parse_args()

    console = Console(width=140)
    load_before = load_average()
    started = time.perf_counter()
    runs: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_store_floor_") as tmp:
        directory = Path(tmp)
        sides = make_sides(directory)
        for round_no in range(args.repeats):
            for key, run_rate in measure(sides, args.events, args.batch, round_no).items():
                runs.setdefault(key, []).append(run_rate)
        for side in sides.values():
            if side.conn is not None:
                side.conn.close()
            if side.library is not None:
                side.library.close()
        where = filesystem(directory)

    console.print("Event store floor: the append statements alone, on sqlite3 (no library)")
    console.print(f"  machine: {os.cpu_count()} cores, {platform.platform()}")
    console.print(
        f"  load average (1 min) before {load_before}, after {load_average()}; "
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}"
    )
    console.print(
        f"  one file per side in a temp dir on {where}; WAL, synchronous=FULL; every parameter "
        "computed before the timing; the payload of bench_store.py"
    )
    console.print(
        f"  append 1/tx: {args.events} events over {max(1, args.events // 10)} streams; "
        f"append {args.batch}/tx: {max(1, args.events // args.batch)} transactions; "
        f"median of {args.repeats} runs, interleaved in {CHUNKS} chunks"
    )
    table = Table(title=f"events per second (run took {time.perf_counter() - started:.0f} s)")
    table.add_column("operation")
    for name in SIDES:
        table.add_column(name, justify="right")
    statements = (OURS, WITHOUT_RECORDED, NARROW)
    for name in statements:
        table.add_column(f"{name} / eventsourcing", justify="right")
    table.add_column("µs/event our Python may take to match the library", justify="right")
    table.add_column("µs/event it takes", justify="right")
    for operation in ("append 1/tx", f"append {args.batch}/tx"):
        rate = {name: statistics.median(runs[(operation, name)]) for name in SIDES}
        table.add_row(
            operation,
            *(f"{rate[name]:,.0f}" for name in SIDES),
            *(f"{rate[name] / rate[THEIRS]:.2f}x" for name in statements),
            f"{1e6 / rate[LIBRARY] - 1e6 / rate[OURS]:.1f}",
            f"{1e6 / rate[STORE] - 1e6 / rate[OURS]:.1f}",
        )
    console.print(table)
    console.print(
        "  the last two columns: the library's and our store's time per event (bench_store.py's "
        "sides: from payload object to commit), each less our statements' time per event"
    )


if __name__ == "__main__":
    main()
