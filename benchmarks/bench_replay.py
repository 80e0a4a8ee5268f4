"""Replay (rebuild every stored standing) and verify (every hash chain) against the floor of a raw
table scan, on SQLite and PostgreSQL side by side.

The log is generated fast but realistically: a few hundred account histories are played through
the real policy (``decide_violation``, remediation expiries, operator completions, appeals,
delivery receipts), then each of the N accounts is a copy of one of them with its own event ids,
times (every instant inside the events moved with them: a suspension's ``until``, a due date, a
deadline) and hash chain. Accounts are interleaved in the log (one step of each account of a group
of 1,000 in turn), rows are chained with ``events.chain`` and bulk-inserted (``executemany`` on
SQLite, ``COPY`` on PostgreSQL); ``verify`` then proves every chain valid.

Measured, each in a fresh subprocess (so that peak memory, ``ru_maxrss``, is the measurement's
own):

- floor: ``SELECT *`` of every row with the bare driver, no decoding (sqlite3; psycopg with a
  server-side cursor and JSON left as text): the cost of just reading the table;
- replay: ``projections.runner.rebuild_standings`` (what ``enforcement replay`` runs), in one
  process (``jobs=1``) and with ``--jobs`` processes folding ranges of accounts while the main
  one writes (``enforcement replay --jobs``; the default of ``--jobs`` is the CPU count);
- verify: ``enforcement.auditing.verify_accounts`` (what ``enforcement verify`` runs);
- notices: what ``enforcement notices --all`` reads and folds (the log's notices and their
  outcomes, in one pass; each notice's channels without an outcome from its account's contact).

Goals: replay at least 0.3x the floor's events/s, peak memory under 300 MB.

Run from the repository root: ``.venv/bin/python benchmarks/bench_replay.py --help``. The default
size is 200,000 events on 10,000 accounts (about a minute per backend on a quiet 2-CPU machine):
the full size, ``--events 1000000 --accounts 50000``, took 5.5 min (SQLite) and 7.5 min
(PostgreSQL) per backend there, mostly generating the log and verifying it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402
from common import add_pg_url_argument, pg_database  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from enforcement import operator_decisions as ops  # noqa: E402
from enforcement.migrations import upgrade  # noqa: E402
from enforcement.policy import (  # noqa: E402
    DEFAULT_POLICY,
    Context,
    ViolationReport,
    decide_appeal,
    decide_appeal_filing,
    decide_remediation_expired,
    decide_violation,
)
from events import GENESIS_HASH, NewEvent, RecordedEvent, chain_hash  # noqa: E402
from events.timefmt import format_time, parse_time  # noqa: E402
from projections import aup_events as ev  # noqa: E402
from projections.standing import StandingState, apply_all, remediation_is_open  # noqa: E402

T0 = datetime(2025, 1, 6, 9, 0, tzinfo=UTC)
TEMPLATES = 400
GROUP = 1000  # accounts interleaved in the log
CHUNK = 20_000  # rows per insert transaction
COLUMNS = (
    "event_id, account_id, version, type, schema_version, data, metadata, occurred_at, "
    "recorded_at, prev_hash, hash"
)
MINOR = ["spam"] * 6 + ["ip_infringement"] * 3 + ["disinformation"] * 3 + ["impersonation"] * 2
OTHER = ["rate_limit_circumvention", "safety_probing", "sustained_abuse", "phishing",
         "unapproved_adult_content", "model_extraction", "personal_data_harvesting"]  # fmt: skip


# ---------------------------------------------------------------------------- histories


@dataclass(frozen=True, slots=True)
class Step:
    """What one request recorded: events sharing a recorded time (offset from T0)."""

    at: timedelta
    events: list[NewEvent]


def _recorded(event: NewEvent, account_id: str, version: int, at: datetime) -> RecordedEvent:
    return RecordedEvent(0, event.event_id, account_id, version, event.type, 1, event.data,
                         event.metadata, event.occurred_at, at, "", "")  # fmt: skip


def template(rng: random.Random, budget: int) -> list[Step]:
    """One account's history, decided by the real policy, about ``budget`` events long."""
    policy, account = DEFAULT_POLICY, "template"
    state, steps, now = StandingState.empty(account), [], T0
    serial = iter(range(1, 10**9))

    def ctx(actor: str) -> Context:
        return Context(now, actor, f"cor_{next(serial)}", new_id=lambda p: f"{p}_{next(serial)}")

    def record(events: list[NewEvent]) -> None:
        """Append a step (and what the delivery worker records for its notices)."""
        nonlocal state
        events = events + [
            ev.CODEC.encode(
                ev.NoticeDelivered(e.data["notice_id"], e.event_id, "email", 1),
                occurred_at=now,
                metadata={"actor": "worker", "causation_id": e.event_id},
            )
            for e in events
            if e.type == "NoticeIssued"
        ]
        if events:
            first = state.version + 1
            recorded = [_recorded(e, account, first + i, now) for i, e in enumerate(events)]
            state = apply_all(state, recorded)
            steps.append(Step(now - T0, events))

    while state.version < budget and not state.terminated:
        open_rem = [r for r in state.remediations.values() if remediation_is_open(state, r)]
        overdue = [r for r in open_rem if r.due_at <= format_time(now)]
        window = format_time(now - policy.appeal_window)
        appealable = [
            d
            for d in state.decisions.values()
            if not d.overturned and d.open_appeal_id is None and d.recorded_at >= window
        ]
        roll = rng.random()
        if state.version == 0:
            record(ops.decide(policy, state, ops.ConfigureLimits(600, 10**6), ctx("operator")))
        elif overdue:
            rid = overdue[0].remediation_id
            record(decide_remediation_expired(policy, state, rid, ctx("scheduler")))
        elif open_rem and roll < 0.35:
            command = ops.CompleteRemediation(open_rem[0].remediation_id, "fixed")
            record(ops.decide(policy, state, command, ctx("operator")))
        elif appealable and roll < 0.42:
            decision = rng.choice(appealable)
            filed = decide_appeal_filing(policy, state, decision.event_id, "why", ctx("account"))
            record(filed)
            now += timedelta(hours=rng.randint(2, 48))
            outcome = rng.choice(["upheld", "overturned"])
            appeal_id = filed[0].data["appeal_id"]
            record(decide_appeal(policy, state, appeal_id, outcome, "reviewed", ctx("operator")))
        else:
            category = rng.choice(MINOR) if rng.random() < 0.7 else rng.choice(OTHER)
            if rng.random() < 0.004:
                category = rng.choice(["csam", "weapons_development"])
            report = ViolationReport(
                category=category,
                occurred_at=now - timedelta(minutes=rng.randint(1, 600)),
                source=rng.choice(["mail-classifier", "abuse-desk", "gate"]),
                detection=rng.choice(["automated", "automated", "human_review", "user_report"]),
                description=f"{category.replace('_', ' ')} in batch {rng.randint(1, 10**6)}",
                key_id=f"key_{rng.randint(0, 3)}",
            )
            record(decide_violation(policy, state, report, ctx("reporter")))
        now += timedelta(days=rng.randint(1, 6), minutes=rng.randint(0, 59))
    return steps


_EVENT_REFS = ("decision_event_id", "notice_event_id")


def _shifted(value: Any, shift: timedelta) -> Any:
    """``value`` with every instant in it (``format_time``'s text, at any depth: a
    suspension's ``until``, a remediation's ``due_at``, a notice's ``deadline``, a statement of
    reasons' ``appeal_deadline`` and facts' ``occurred_at``) moved by ``shift``."""
    if isinstance(value, str):
        return format_time(parse_time(value) + shift) if _is_instant(value) else value
    if isinstance(value, dict):
        return {k: _shifted(v, shift) for k, v in value.items()}
    if isinstance(value, list):
        return [_shifted(v, shift) for v in value]
    return value


def _is_instant(text: str) -> bool:
    return len(text) == 27 and text[26] == "Z" and text[10] == "T" and text[19] == "."


def instantiate(steps: Sequence[Step], index: int, shift: timedelta) -> list[list[tuple[Any, ...]]]:
    """The template as account ``index``: fresh event ids (references remapped), every time
    shifted (those inside the events too), its own hash chain. Rows per step, in the column
    order of ``COLUMNS``."""
    account = f"acct_{index:07d}"
    ids: dict[str, str] = {}
    out: list[list[tuple[Any, ...]]] = []
    prev, version = GENESIS_HASH, 0
    for step in steps:
        recorded_at = T0 + step.at + shift
        rows = []
        for event in step.events:
            version += 1
            event_id = ids[event.event_id] = str(uuid.UUID(int=(index << 40) | version))
            data = _shifted(event.data, shift)
            if any(key in data for key in _EVENT_REFS):
                data = {k: ids.get(v, v) if k in _EVENT_REFS else v for k, v in data.items()}
            metadata = _shifted(event.metadata, shift)
            if metadata.get("causation_id") in ids:
                metadata = {**metadata, "causation_id": ids[metadata["causation_id"]]}
            occurred_at = event.occurred_at + shift
            fields = {
                "event_id": event_id, "account_id": account, "version": version,
                "type": event.type, "schema_version": event.schema_version, "data": data,
                "metadata": metadata, "occurred_at": format_time(occurred_at),
                "recorded_at": format_time(recorded_at),
            }  # fmt: skip
            digest = chain_hash(prev, fields)
            rows.append((event_id, account, version, event.type, event.schema_version,
                         json.dumps(data), json.dumps(metadata), occurred_at, recorded_at,
                         prev, digest))  # fmt: skip
            prev = digest
        out.append(rows)
    return out


def generate_rows(n_events: int, n_accounts: int, seed: int) -> Iterator[list[tuple[Any, ...]]]:
    """Chunks of rows in log order: the accounts of each group interleaved step by step."""
    rng = random.Random(seed)
    mean = n_events / n_accounts
    templates = [template(rng, max(3, round(rng.gauss(mean, mean / 3)))) for _ in range(TEMPLATES)]
    sizes = [sum(len(s.events) for s in t) for t in templates]
    emitted, chunk = 0, []
    for start in range(0, n_accounts, GROUP):
        accounts = []
        for index in range(start, min(n_accounts, start + GROUP)):
            # Pick templates so that the running total stays on course for n_events.
            remaining = n_accounts - index
            target = (n_events - emitted) / remaining
            pick = min(rng.sample(range(TEMPLATES), 8), key=lambda t: abs(sizes[t] - target))
            shift = timedelta(minutes=rng.randint(0, 60 * 24 * 30))
            accounts.append(instantiate(templates[pick], index, shift))
            emitted += sizes[pick]
        for step in range(max(len(a) for a in accounts)):
            for steps in accounts:
                if step < len(steps):
                    chunk.extend(steps[step])
            if len(chunk) >= CHUNK:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


def populate(url: str, n_events: int, n_accounts: int, seed: int) -> int:
    upgrade(url)
    total = 0
    if url.startswith("sqlite"):
        conn = sqlite3.connect(sa.make_url(url).database or "")
        conn.execute("PRAGMA journal_mode=WAL")
        sql = f"INSERT INTO events ({COLUMNS}) VALUES ({', '.join('?' * 11)})"
        for chunk in generate_rows(n_events, n_accounts, seed):
            with conn:
                conn.executemany(sql, [_sqlite_row(r) for r in chunk])
            total += len(chunk)
        conn.execute("ANALYZE")
        conn.close()
        return total
    import psycopg

    with psycopg.connect(_libpq(url)) as pg:
        for chunk in generate_rows(n_events, n_accounts, seed):
            with pg.cursor() as cur, cur.copy(f"COPY events ({COLUMNS}) FROM STDIN") as copy:
                for row in chunk:
                    copy.write_row(row)
            pg.commit()
            total += len(chunk)
        pg.autocommit = True
        pg.execute("VACUUM ANALYZE events")
    return total


def _sqlite_row(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """Times as SQLAlchemy stores them on SQLite: naive UTC text with microseconds."""
    stamp = "%Y-%m-%d %H:%M:%S.%f"
    return (*row[:7], row[7].strftime(stamp), row[8].strftime(stamp), row[9], row[10])


def _libpq(url: str) -> str:
    return sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


# ---------------------------------------------------------------------------- measurements


def measure(kind: str, url: str) -> dict[str, Any]:
    """One measurement, in this (fresh) process: events, seconds, peak RSS."""
    started = time.perf_counter()
    if kind == "floor":
        events = _scan(url)
    elif kind.startswith("replay"):  # "replay" (one process) or "replay:N" (N fold processes)
        from events import EventStore, create_engine
        from projections.runner import rebuild_standings
        from projections.stored import StandingRepository

        jobs = int(kind.partition(":")[2] or 1)
        engine = create_engine(url)
        store = EventStore(engine)
        started = time.perf_counter()
        events = rebuild_standings(
            store, StandingRepository(store), jobs=jobs, parallel_min_events=0
        ).events
        engine.dispose()
    elif kind == "verify":
        from enforcement.auditing import verify_accounts
        from events import EventStore, create_engine

        engine = create_engine(url)
        started = time.perf_counter()
        results = verify_accounts(EventStore(engine), show_progress=False)
        engine.dispose()
        broken = [r for r in results if not r["ok"]]
        if broken:
            raise SystemExit(f"{len(broken)} chains do not verify, e.g. {broken[0]}")
        events = sum(r["events"] for r in results)
    elif kind == "notices":
        # ``enforcement notices --all``: the log's notices and their outcomes in one pass, each
        # notice's channels without an outcome from its contact; ``events``: the whole log's.
        from enforcement.workers.recovery import notice_channels
        from events import EventStore, create_engine
        from projections.notices import NOTICE_TYPES, notice_deliveries, with_awaited

        engine = create_engine(url)
        store = EventStore(engine)
        events = store.max_position()
        started = time.perf_counter()
        notices = notice_deliveries(store.iter_all_of_types(NOTICE_TYPES))
        with_awaited(notices, notice_channels(engine, {n.account_id for n in notices}))
        engine.dispose()
        if not notices:
            raise SystemExit("the generated log holds no notice")
    else:
        raise SystemExit(f"unknown measurement {kind!r}")
    seconds = time.perf_counter() - started
    # Worker processes: at most ``jobs`` at once, each at most the largest one's peak.
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    workers = int(kind.partition(":")[2] or 0)
    return {"events": events, "seconds": seconds, "peak_mb": _peak_mb() + workers * children}


def _peak_mb() -> float:
    """This process's peak resident memory. Linux's ``ru_maxrss`` would also count the parent's
    peak at the fork before ``exec``; ``VmHWM`` is this program's alone."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _scan(url: str) -> int:
    """Every column of every row with the bare driver, nothing decoded."""
    count = 0
    if url.startswith("sqlite"):
        conn = sqlite3.connect(sa.make_url(url).database or "")
        for _row in conn.execute("SELECT * FROM events"):
            count += 1
        conn.close()
        return count
    import psycopg
    from psycopg.types.string import TextLoader

    with psycopg.connect(_libpq(url)) as pg:
        for name in ("json", "jsonb"):
            pg.adapters.register_loader(name, TextLoader)
        with pg.cursor(name="floor") as cur:
            cur.itersize = 2000
            cur.execute("SELECT * FROM events")
            for _row in cur:
                count += 1
    return count


# A measurement's process runs ``measure`` from ``-c``, not this file as its main module: the
# fold processes of a parallel replay are spawned, and a spawned process imports its parent's
# main module again (here this benchmark, with rich, alembic and the policy: about 0.25 s of CPU
# each, where ``enforcement replay``'s console script costs them 0.08 s).
_MEASURE = (
    "import json, sys; sys.path.insert(0, sys.argv.pop(1)); from bench_replay import measure; "
    "print(json.dumps(measure(sys.argv[1], sys.argv[2])))"
)


def run_measurement(kind: str, url: str) -> dict[str, Any]:
    command = [sys.executable, "-c", _MEASURE, str(Path(__file__).parent), kind, url]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{kind} on {url} failed:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# ---------------------------------------------------------------------------- main


@contextmanager
def fresh_database(backend: str, workdir: Path, admin_url: str) -> Iterator[str]:
    """A new database's URL: a file in ``workdir`` (removed on exit) or a PostgreSQL database."""
    if backend != "sqlite":
        with pg_database(admin_url, "bench_replay") as url:
            yield url
        return
    path = workdir / "bench_replay.db"

    def remove() -> None:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)

    remove()
    try:
        yield f"sqlite:///{path}"
    finally:
        remove()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--backends", default="sqlite,postgres")
    add_pg_url_argument(parser)
    parser.add_argument("--workdir", type=Path, default=None, help="where the SQLite file goes")
    parser.add_argument("--repeat", type=int, default=1, help="runs per measurement (best kept)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--jobs",
        type=int,
        default=os.cpu_count() or 1,
        help="fold processes of the parallel replay row (default: the CPUs; 1: no such row)",
    )
    args = parser.parse_args(argv)
    console = Console(width=110)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_replay_"))
    rows: list[tuple[str, str, dict[str, Any], float]] = []
    for backend in args.backends.split(","):
        with fresh_database(backend, workdir, args.pg_url) as url:
            started = time.perf_counter()
            total = populate(url, args.events, args.accounts, args.seed)
            console.print(
                f"[bold]{backend}[/]: generated {total:,} events on {args.accounts:,} accounts in "
                f"{time.perf_counter() - started:.0f}s"
            )
            results = {}
            kinds = ["floor", "replay", *(f"replay:{args.jobs}" for _ in [1] if args.jobs > 1)]
            for kind in [*kinds, "verify", "notices"]:
                runs = [run_measurement(kind, url) for _ in range(args.repeat)]
                results[kind] = min(runs, key=lambda r: r["seconds"])
                r = results[kind]
                console.print(f"  {kind}: {r['events']:,} events in {r['seconds']:.1f}s")
            floor_rate = results["floor"]["events"] / results["floor"]["seconds"]
            for kind in [*kinds, "verify", "notices"]:
                r = results[kind]
                rows.append((backend, kind, r, (r["events"] / r["seconds"]) / floor_rate))
    table = Table(title=f"Replay and verify, {args.events:,} events / {args.accounts:,} accounts")
    for column in ("backend", "operation", "events", "seconds", "events/s", "vs floor", "peak MB"):
        table.add_column(column, justify="left" if column in ("backend", "operation") else "right")
    names = {
        "floor": "floor: SELECT * scan",
        "replay": "replay, 1 process",
        f"replay:{args.jobs}": f"replay, {args.jobs} fold processes",
        "verify": "verify",
        "notices": "notices --all",
    }
    for backend, kind, r, ratio in rows:
        goal = not kind.startswith("replay") or ratio >= 0.3
        table.add_row(
            backend, names[kind], f"{r['events']:,}", f"{r['seconds']:.1f}",
            f"{r['events'] / r['seconds']:,.0f}",
            f"[{'green' if goal else 'red'}]{ratio:.2f}x[/]",
            f"[{'green' if r['peak_mb'] < 300 else 'red'}]{r['peak_mb']:.0f}[/]",
        )  # fmt: skip
    console.print(table)
    console.print(
        "Peak MB of a parallel replay: the writing process plus N x the largest fold process. "
        "notices --all reads only the notices and their outcomes; its events are the log's. "
        f"Goals: replay >= 0.3x the floor, peak memory < 300 MB. Python {sys.version.split()[0]}, "
        f"SQLite {sqlite3.sqlite_version}, {os.cpu_count()} CPUs, load average "
        f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}."
    )


if __name__ == "__main__":
    main()
