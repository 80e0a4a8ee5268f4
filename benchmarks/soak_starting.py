"""The production soak's kills while starting (``soak_production.py --startup-kills``): which
phase of its start a process is in, read from its log, how long each phase took in the starts
seen so far (so that a kill's delay lands in the phase it aims at, however loaded the machine),
and waiting for the line that opens a phase.

A worker, while starting, logs nothing until it holds the leader's lock (imports, the schema
check, its consumer process spawned, its container built), then "this process leads the relay
and the deadline sweep" (the look whether Redis lost its data, then the gate seeded from the
stored standings), "gate seeded from N stored standings" (then, when Redis lost its data, the
re-send of every notice delivery without an outcome), and "re-sent N notice deliveries without
an outcome"; it then marks Redis and relays. An API process logs nothing until uvicorn starts
(imports, the schema check, the container: database pool and Redis clients), then "Started
server process", and "Uvicorn running on" once it listens.
"""

from __future__ import annotations

import json
import statistics
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path

from soak_services import Process

LEADS = "this process leads the relay and the deadline sweep"
SEEDED = "gate seeded from"
RESENT = "notice deliveries without an outcome"
UVICORN_STARTED = "Started server process"
LISTENING = "Uvicorn running on"

# The phases a kill while starting can land in, as the figures name them.
BEFORE_LOCK = "worker: before the lock (imports, schema check, consumers, container)"
SEEDING = "worker: holding the lock, seeding the gate"
RESENDING = "worker: seeded, re-sending deliveries without an outcome"
WORKER_STARTED = "worker: started (relaying)"
BEFORE_UVICORN = "API: before uvicorn (imports, schema check, pools)"
UVICORN = "API: uvicorn starting the application"
API_READY = "API: listening (ready)"


def log_lines(path: Path) -> list[tuple[float, str]]:
    """(time.time of the record, message) of each JSON line of a process's log."""
    lines = []
    for raw in path.read_bytes().splitlines():
        try:
            record = json.loads(raw)
            at = datetime.fromisoformat(record["time"].replace("Z", "+00:00")).timestamp()
        except (ValueError, KeyError, TypeError, AttributeError):
            continue  # a line cut off by the kill, or not a record
        lines.append((at, str(record.get("message", ""))))
    return lines


def first(lines: list[tuple[float, str]], text: str) -> float | None:
    """When the first line containing ``text`` was logged, if one was."""
    return next((at for at, message in lines if text in message), None)


def worker_phase(path: Path, redis_lost: bool) -> str:
    """The phase of its start that a worker killed now was in, from its log: ``redis_lost``
    says whether it found Redis without its data (then it re-sends after seeding)."""
    lines = log_lines(path)
    if first(lines, LEADS) is None:
        return BEFORE_LOCK
    if first(lines, SEEDED) is None:
        return SEEDING
    if redis_lost and first(lines, RESENT) is None:
        return RESENDING
    return WORKER_STARTED


def api_phase(path: Path) -> str:
    """The phase of its start that an API process killed now was in, from its log."""
    lines = log_lines(path)
    if first(lines, UVICORN_STARTED) is None:
        return BEFORE_UVICORN
    if first(lines, LISTENING) is None:
        return UVICORN
    return API_READY


class StartSpans:
    """How long each phase of a start took, over the starts seen: from the spawn to the lock
    (``"lock"``), seeding (``"seed"``), re-sending (``"resend"``), and an API process's spawn to
    listening (``"api"``)."""

    DEFAULTS = {"lock": 2.0, "seed": 0.1, "resend": 0.05, "api": 1.5}

    def __init__(self) -> None:
        self.seen: dict[str, list[float]] = defaultdict(list)
        self._looked: set[Path] = set()

    def observe(self, process: Process, worker: bool) -> None:
        """Note the spans of ``process``'s start, once its log shows it complete."""
        if process.log in self._looked:
            return
        lines = log_lines(process.log)
        if not worker:
            listening = first(lines, LISTENING)
            if listening is not None:
                self._looked.add(process.log)
                self.seen["api"].append(listening - process.spawned_at)
            return
        leads, seeded, resent = (first(lines, text) for text in (LEADS, SEEDED, RESENT))
        if leads is None or seeded is None:
            return  # not leading (yet): the other one does
        self._looked.add(process.log)
        self.seen["lock"].append(leads - process.spawned_at)
        self.seen["seed"].append(seeded - leads)
        if resent is not None:
            self.seen["resend"].append(resent - seeded)

    def span(self, name: str) -> float:
        """The span ``name`` seen, else a guess: from the spawn (``"lock"``, ``"api"``) the
        shortest, since the first starts (every process at once) are the slowest and a delay
        spread over theirs often landed after the start; the others, the median."""
        seen = self.seen.get(name)
        if not seen:
            return self.DEFAULTS[name]
        return min(seen) if name in ("lock", "api") else statistics.median(seen)


def wait_for_line(process: Process, text: str, timeout: float = 30.0) -> bool:
    """Wait until ``process``'s log has a line containing ``text`` (whether it did: not if the
    process ended or ``timeout`` passed). Looked at every 2 ms, so that a kill right after
    lands close to the line."""
    wanted = text.encode()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if wanted in process.log.read_bytes():
            return True
        if process.proc.poll() is not None:
            return False
        time.sleep(0.002)
    return False
