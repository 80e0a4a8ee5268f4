"""What the backup and restore tests share: the CLI run as an operator types it, a populated
SQLite database with the system on it (the ``live`` fixture, in conftest.py), and what a
restored database must give back."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aup_population import populate
from test_service_support import FakeClock, open_system

from enforcement.bootstrap import Container
from enforcement.migrations import upgrade
from enforcement.schema_revisions import release_revisions
from events import create_engine
from events.dialects import drop_append_only_ddl
from events.schema import events as events_table
from events.wire import event_to_json
from projections.stored import read_states

CLI = str(Path(sys.executable).with_name("enforcement"))
HEAD = release_revisions()[0]


def run_cli(url: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("ENFORCEMENT_")}
    environment.update({"ENFORCEMENT_DATABASE_URL": url, "COLUMNS": "200", **env})
    return subprocess.run(
        [CLI, *args], env=environment, capture_output=True, text=True, timeout=120, check=False
    )


def one_sentence(result: subprocess.CompletedProcess[str], code: int) -> str:
    """The error of a command that exited ``code``: one sentence on stderr after any progress
    bar, no traceback."""
    assert result.returncode == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.endswith("."), result.stderr
    return last


@dataclass
class Live:
    url: str
    system: Container
    clock: FakeClock


@contextmanager
def live_database(directory: Path) -> Iterator[Live]:
    """A SQLite database of ten accounts' stories (every kind of event) in ``directory``, the
    system on it."""
    directory.mkdir()
    url = f"sqlite:///{directory / 'enforcement.db'}"
    upgrade(url)
    clock = FakeClock()
    with open_system(url, clock) as system:
        populate(system, clock, accounts=10, steps=6)
        yield Live(url, system, clock)


def everything(system: Container) -> dict[str, Any]:
    """What a restored database must give back: every event as the API shows it, each
    account's stored standing and its standing as of one instant, and the checkpoints."""
    store = system.store
    accounts = list(store.account_ids())
    as_of = system.clock()
    with system.engine.connect() as conn:
        states = read_states(conn, accounts)
        checkpoints = conn.exec_driver_sql("SELECT name, position FROM checkpoints").all()
    return {
        "events": [event_to_json(e) for e in store.iter_all()],
        "stored": {a: states[a] for a in accounts},
        "standings": {a: system.service.standing(a, as_of).to_json() for a in accounts},
        "checkpoints": sorted(checkpoints),
    }


def files_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def break_a_chain(url: str) -> None:
    """What someone with database access might do: drop the guard, edit a recorded event."""
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            for statement in drop_append_only_ddl("sqlite"):
                conn.exec_driver_sql(statement)
            conn.execute(
                events_table.update()
                .where(events_table.c.account_id == "acct_003", events_table.c.version == 2)
                .values(data={"forged": True})
            )
    finally:
        engine.dispose()
