"""Crash soak of the production mode: PostgreSQL and Redis, two API processes (``enforcement
serve --no-workers``) and two ``enforcement worker`` processes (one leads the relay and the
deadline sweep), all on one database and one Redis, a random one of them SIGKILLed under load
round after round, then checked.

Each round, client threads post violations (single and in batches), abuse reports and operator
commands through either API process, each with an ``Idempotency-Key`` and a marker that names
the one event it records (as ``soak_embedded.py`` does). At a random moment, with a request in
flight, one is killed: an API process, the leading worker, the other worker, or (at
``--redis-kills``) Redis itself, restarted on its port and data directory
(``--redis-persistence`` says what it keeps); or, at ``--startup-kills``, a process while it
starts (an API process, or the worker about to lead: before the lock, seeding the gate,
re-sending after Redis lost its data; ``soak_starting.py``). Load goes on a moment with the
process down (a client refused by one API process turns to the other); every request without an
answer is sent again after the restart, key and body as they were. At the end the workers are
started once more, everything settles, and the checks of the embedded soak that apply run (each
2xx recorded exactly once, 4xx not at all, ``verify`` intact, notices delivered on each channel
with duplicates only near a kill, deadlines escalated once, ``replay`` giving the same
standings), with the production ones: once the workers settled, the gate (each account asked of
one API process, in turn) refuses every suspended or terminated account and allows the others.
``benchmarks/README.md`` lists every check.

    ENFORCEMENT_TEST_PG_URL=postgresql+psycopg://enforcement:enforcement@127.0.0.1:5432/postgres \\
        .venv/bin/python benchmarks/soak_production.py --rounds 10 --seconds 6

Needs ``redis-server`` on PATH and a PostgreSQL account that may create databases (the soak
makes its own, and drops it). With ``--pg-kills`` it crashes PostgreSQL too, at that share of
rounds (an immediate stop and a start 0.2 to 3 s later, or a backend SIGKILLed), on a cluster
of its own in its working directory (``PrivateCluster``): never the shared server. With
``--stalls`` a share of rounds freeze a process instead (SIGSTOP, then SIGCONT 0.5 to 15 s
later: it keeps its connections, locks and messages, and is not restarted); with
``--dep-stalls`` a share of rounds make a dependency silent (Redis, or every process of the
soak's own PostgreSQL cluster, SIGSTOPped 0.5 to 12 s, then SIGCONTed). Exit
status 0 when every check passed, 1 otherwise (the working directory is then kept; the
database is dropped either way).
"""

from __future__ import annotations

import argparse
import functools
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
import sqlalchemy as sa  # noqa: E402
from common import pg_database  # noqa: E402
from rich.console import Console  # noqa: E402
from soak_checks import (  # noqa: E402
    SETTLED_GATE,
    SETTLED_GATE_WRONG,
    Check,
    Ending,
    Result,
    age_parts,
    check_all,
    settle,
    show,
)
from soak_clients import (  # noqa: E402
    Ledger,
    Outage,
    a_notice,
    add_accounts,
    gate_agrees,
    kill_under_load,
    make_tokens,
    replay_some,
    send_what_waits,
)
from soak_services import (  # noqa: E402
    POLICY,
    MailWatch,
    PrivateCluster,
    Process,
    Receiver,
    RedisServer,
    Serve,
    Soak,
    Worker,
    free_port,
    soak_arguments,
    soak_from,
    stop_all,
)
from soak_starting import (  # noqa: E402
    LEADS,
    SEEDED,
    StartSpans,
    api_phase,
    wait_for_line,
    worker_phase,
)

from enforcement.workers.redis_watch import RedisWatch  # noqa: E402
from enforcement.workers.relay import CHECKPOINT  # noqa: E402
from events import EventStore, create_engine  # noqa: E402

PG_URL_ENV = "ENFORCEMENT_TEST_PG_URL"
# How long a worker may take to lead after the leader died (it looks every 5 s) or at a start.
LEAD_SECONDS = 30.0
# A figure: how long a Redis with persistence served its snapshot's gate state at the most.
SEEN_RESTARTED = "longest wait for the leader to see Redis restarted (ms)"
# What a round kills, and how often (Redis's share is ``--redis-kills``).
VICTIMS: dict[str, float] = {"an API process": 4, "the leading worker": 3, "the other worker": 2}
# What a kill while starting (``--startup-kills`` of rounds) aims at, and how often: the phase
# it lands in is read from the process's log (``soak_starting``).
STARTING: dict[str, float] = {
    "an API process while starting": 3,
    "the worker about to lead, before the lock": 2,
    "the leading worker while seeding the gate": 2,
    "the leading worker while re-sending, Redis restarted": 2,
}
# How PostgreSQL crashes (``--pg-kills`` of rounds, one of these drawn): every process ends at
# once and the server starts again after a short outage (crash recovery from the WAL), or one
# backend serving the soak's database is SIGKILLed (the postmaster ends every other backend,
# recovers, and accepts connections again by itself).
PG_STOP = "PostgreSQL (pg_ctl stop -m immediate, started again)"
PG_BACKEND = "PostgreSQL (a backend SIGKILLed)"
PG_CRASHES = (PG_STOP, PG_BACKEND)
# The outage of an immediate stop: a random span in seconds.
PG_AWAY = (0.2, 3.0)
# How long the clients may wait for a 2xx answer once PostgreSQL answers again.
PG_RECOVERY_SECONDS = 60.0
PG_BACK_TO_OK = "longest from PostgreSQL back to the first 2xx (ms)"
PG_DEAD = "processes dead after a PostgreSQL crash or a silence"
PG_LEADERLESS = "PostgreSQL crashes or silences after which no worker led within 30 s"
# A freeze (``--stalls`` of rounds, instead of a kill): one of ``VICTIMS``, drawn with their
# weights, SIGSTOPped for a random span in seconds and SIGCONTed, never restarted.
STALL_SECONDS = (0.5, 15.0)
# The workers' heartbeat with ``--stalls``: most freezes outlast it, so that Redis hands a frozen
# worker's messages to the other within the round, and the frozen one resumes amid them.
STALL_HEARTBEAT_MS = 3000
# A dependency gone silent (``--dep-stalls`` of rounds, instead of a kill): Redis, or the soak's
# own PostgreSQL (the postmaster and every process it started), SIGSTOPped for a random span in
# seconds and SIGCONTed. Connections stay open and nothing answers; nothing is restarted.
SILENT_REDIS = "Redis (silent: redis-server SIGSTOPped)"
SILENT_PG = "PostgreSQL (silent: every server process SIGSTOPped)"
SILENCES = (SILENT_REDIS, SILENT_PG)
SILENT_SECONDS = (0.5, 12.0)
# The processes' bounds with ``--dep-stalls``: the defaults (30 s, 5 s) outlast most silences
# of up to 12 s, so that the requests and the workers would only wait them out; these give up
# on the longer ones (503, a relay's retry, a consumer's restart) within the round.
SILENT_SETTINGS = {
    "ENFORCEMENT_DATABASE_TIMEOUT_MS": "4000",
    "ENFORCEMENT_REDIS_TIMEOUT_MS": "2000",
}
SILENT_BACK_TO_OK = "longest from the SIGCONT to the first 2xx (ms)"
# After Redis's silence, the next round waits for the relay (``relay_caught_up``): how often
# it was behind, and the longest wait.
RELAY_WAITS = "rounds after Redis's silence that waited for the relay"
RELAY_WAITED = "their longest wait (ms)"


class Fleet:
    """The soak's processes: Redis, two API processes and two workers, each started again
    (with a log file of its own) once it was killed."""

    def __init__(
        self, soak: Soak, redis: RedisServer, cluster: PrivateCluster | None = None
    ) -> None:
        self.soak = soak
        self.redis = redis
        self.cluster = cluster
        self.starts = 0
        self.spans = StartSpans()
        self.apis = [self._api(n) for n in range(2)]
        self.workers = [self._worker(n) for n in range(2)]
        for api in self.apis:
            api.wait()

    def _log(self, name: str) -> Path:
        self.starts += 1
        return self.soak.workdir / "logs" / f"{name}-{self.starts}.log"

    def _api(self, n: int) -> Serve:
        """API process ``n``, started (``Serve.wait`` waits until it answers)."""
        return Serve(self.soak, self._log(f"api{n}"), wait=False)

    def _worker(self, n: int) -> Worker:
        return Worker(self.soak, self._log(f"worker{n}"))

    @property
    def urls(self) -> list[str]:
        return [api.base_url for api in self.apis]

    def leader(self, wait: float = 0.0) -> Worker | None:
        """The worker that leads, once one says it does (waiting up to ``wait`` seconds)."""
        deadline = time.monotonic() + wait
        while True:
            leading = [w for w in self.workers if w.leads]
            if len(leading) == 1:
                self.spans.observe(leading[0], worker=True)
                return leading[0]
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.1)

    def restart(self) -> list[float]:
        """Start again whatever died (Redis first); when Redis answered again, if it did."""
        came_back = []
        if self.redis.proc is None or self.redis.proc.poll() is not None:
            came_back.append(self.redis.start())
        for n, api in enumerate(self.apis):
            if api.proc.poll() is not None:
                self.apis[n] = self._api(n)
        for n, worker in enumerate(self.workers):
            if worker.proc.poll() is not None:
                self.workers[n] = self._worker(n)
        for api in self.apis:
            api.wait()
            self.spans.observe(api, worker=False)
        return came_back

    def kill_workers(self) -> float:
        """SIGKILL both workers at once (none leads then); when."""
        at = time.time()
        for worker in self.workers:
            worker.kill()
        return at

    def stop(self) -> dict[str, int]:
        """SIGTERM to every API process and worker; their exit statuses."""
        names = [f"API {n}" for n in range(2)] + [f"worker {n}" for n in range(2)]
        return dict(zip(names, stop_all([*self.apis, *self.workers]), strict=True))

    def kill_api_while_starting(self, rng: random.Random, ledger: Ledger) -> float:
        """SIGKILL an API process, start it again and SIGKILL that one before it answers, after a
        delay spread over the spawn-to-listening span of the starts seen; when. It is started
        once more by the next round. The phase the kill landed in is counted."""
        n = rng.randrange(len(self.apis))
        ledger.kills.append(self.apis[n].kill())
        self.apis[n] = starting = self._api(n)
        time.sleep(rng.uniform(0.05, 0.9) * self.spans.span("api"))
        killed_at = starting.kill()
        _count_phase(ledger, api_phase(starting.log))
        return killed_at

    def kill_worker_while_starting(self, rng: random.Random, ledger: Ledger, aim: str) -> float:
        """SIGKILL both workers (and, to aim at the re-send, Redis, started again at once), start
        one, which is to lead, and SIGKILL it while it starts: before the lock (a delay spread
        over the spawn-to-lock span seen), while seeding (within the seed's span after it said
        it leads) or while re-sending (within the re-send's span after it said it seeded); when.
        Both are started again by the next round. The phase the kill landed in is counted."""
        redis_lost = "re-sending" in aim
        for worker in self.workers:
            ledger.kills.append(worker.kill())
        if redis_lost:
            ledger.kills.append(self.redis.kill())
            ledger.redis_back.append(self.redis.start())
        n = rng.randrange(len(self.workers))
        self.workers[n] = starting = self._worker(n)
        if "before the lock" in aim:
            time.sleep(rng.uniform(0.1, 0.9) * self.spans.span("lock"))
        elif wait_for_line(starting, SEEDED if redis_lost else LEADS):
            # The re-send is short (the deliveries a Redis restart lost): its first half.
            share = 0.5 if redis_lost else 1.0
            time.sleep(rng.uniform(0, share) * self.spans.span("resend" if redis_lost else "seed"))
        killed_at = starting.kill()
        _count_phase(ledger, worker_phase(starting.log, redis_lost))
        return killed_at

    def dead(self) -> list[str]:
        """The API processes and workers that are not running."""
        named: list[tuple[str, Process]] = [(f"API {n}", p) for n, p in enumerate(self.apis)]
        named += [(f"worker {n}", p) for n, p in enumerate(self.workers)]
        return [name for name, process in named if process.proc.poll() is not None]

    def crash_postgres(self, rng: random.Random, ledger: Ledger, kind: str) -> float:
        """Crash the soak's own PostgreSQL server as ``kind`` says (``PG_CRASHES``) under the
        clients' load, wait until it answers again, and (up to ``PG_RECOVERY_SECONDS``) until a
        client got a 2xx answer after that; when it crashed. Nothing is restarted but the
        server: every process must come back by itself."""
        cluster = self.cluster
        assert cluster is not None and self.soak.pg_url is not None
        outage = Outage(kind, time.time())
        if kind == PG_BACKEND:
            database = sa.make_url(self.soak.pg_url).database or ""
            backends = cluster.backends(database)
            active = [pid for pid, state in backends if state == "active"] or [
                pid for pid, _ in backends
            ]
            with ledger.lock:
                ledger.outages.append(outage)
            outage.at = cluster.kill_backend(random.Random(rng.random()).choice(active))
            cluster.wait_refusing(1.0)
            back = cluster.wait_ready()
        else:
            away = rng.uniform(*PG_AWAY)
            with ledger.lock:
                ledger.outages.append(outage)
            outage.at = cluster.stop_immediate()
            time.sleep(away)
            back = cluster.start()
        with ledger.lock:
            outage.back = back
        _wait_first_ok(outage)
        return outage.at

    def silence(self, rng: random.Random, ledger: Ledger, kind: str) -> None:
        """Make a dependency silent as ``kind`` says (``SILENCES``) under the clients' load for
        a random span of ``SILENT_SECONDS``, then let it go on, and wait (up to
        ``PG_RECOVERY_SECONDS``) until a client got a 2xx answer after that. Recorded as an
        ``Outage`` from the SIGSTOP (``at``) to the SIGCONT (``back``). Nothing is restarted:
        every process must come back by itself."""
        seconds = rng.uniform(*SILENT_SECONDS)
        outage = Outage(kind, time.time())
        with ledger.lock:
            ledger.outages.append(outage)
        if kind == SILENT_REDIS:
            span = self.redis.freeze(seconds)
        else:
            assert self.cluster is not None
            span = self.cluster.freeze(seconds)
        with ledger.lock:
            outage.at, outage.back = span
            (ledger.silent_redis if kind == SILENT_REDIS else ledger.silent_database).append(span)
        _wait_first_ok(outage)

    def stall(self, ledger: Ledger, process: Process, seconds: float) -> None:
        """Freeze ``process`` for ``seconds`` (``Process.stall``), recorded in ``ledger``."""
        stopped, went_on = span = process.stall(seconds)
        with ledger.lock:
            ledger.stalls.append(span)
            if isinstance(process, Worker) and went_on - stopped > self.soak.heartbeat_ms / 1000:
                ledger.handed_on.append(span)

    def kill_all(self) -> None:
        for process in [*self.apis, *self.workers]:
            process.kill()
        self.redis.kill()


def _count_phase(ledger: Ledger, phase: str) -> None:
    with ledger.lock:
        ledger.figures["kills while starting"] += 1
        ledger.figures[f"kills while starting: {phase}"] += 1
        ledger.starting_phase = phase


def _victim(
    fleet: Fleet,
    ledger: Ledger,
    rng: random.Random,
    shares: tuple[float, float, float, float, float],
    planned: str | None,
) -> tuple[str, Callable[[], float | None]]:
    """What to kill this round (``planned``, or drawn: a process while it starts at the first
    of ``shares``, Redis at the second, PostgreSQL at the third), or to freeze (a process at
    the fourth, a dependency at the fifth): its name (as the figures count it) and how. A
    leader that died a moment ago is followed by the other worker within about 5 s: a worker's
    kill waits for one to lead."""
    startup_share, redis_share, pg_share, stall_share, silent_share = shares
    # (No draw at a share of 0: the rounds are then those the soak drew before it had these.)
    if planned is None and pg_share > 0 and rng.random() < pg_share:
        planned = rng.choice(PG_CRASHES)
    if planned in PG_CRASHES:
        return planned, functools.partial(fleet.crash_postgres, rng, ledger, planned)
    if planned is None and stall_share > 0 and rng.random() < stall_share:
        name, victim = _process(fleet, rng, rng.choices(list(VICTIMS), list(VICTIMS.values()))[0])
        return name, functools.partial(fleet.stall, ledger, victim, rng.uniform(*STALL_SECONDS))
    if planned is None and silent_share > 0 and rng.random() < silent_share:
        planned = rng.choice(SILENCES)
    if planned in SILENCES:
        return planned, functools.partial(fleet.silence, rng, ledger, planned)
    if planned is None and startup_share > 0 and rng.random() < startup_share:
        planned = rng.choices(list(STARTING), list(STARTING.values()))[0]
    if planned is None and rng.random() < redis_share:
        planned = "Redis"
    name = planned or rng.choices(list(VICTIMS), list(VICTIMS.values()))[0]
    if name in VICTIMS:
        name, process = _process(fleet, rng, name)
        return name, process.kill
    if name == "an API process while starting":
        return name, functools.partial(fleet.kill_api_while_starting, rng, ledger)
    if name in STARTING:
        return name, functools.partial(fleet.kill_worker_while_starting, rng, ledger, name)
    assert name == "Redis", name
    return name, fleet.redis.kill


def _process(fleet: Fleet, rng: random.Random, name: str) -> tuple[str, Process]:
    """The process that ``name`` (one of ``VICTIMS``) is now, and its name as the figures count
    it: a worker is named once one leads (waiting for it up to ``LEAD_SECONDS``)."""
    if name == "an API process":
        return name, rng.choice(fleet.apis)
    leader = fleet.leader(LEAD_SECONDS)
    if leader is None:
        return "a worker while none led (for 30 s)", rng.choice(fleet.workers)
    if name == "the leading worker":
        return name, leader
    return name, next(w for w in fleet.workers if w is not leader)


def restarted(ledger: Ledger, fleet: Fleet) -> None:
    """Start again whatever died (a restarted Redis is taken for one that lost its data). A
    Redis with persistence comes back with gate state of its snapshot, which the gate serves
    until the leader saw the restart and re-seeded it: wait for that (the mark of this run of
    Redis, set after the re-seed), and keep the longest wait as a figure."""
    came_back = fleet.restart()
    ledger.redis_back += came_back
    if not came_back or fleet.redis.persistence == "none":
        return
    client = redis.Redis(port=fleet.redis.port, socket_timeout=5)
    try:
        run_id = str(client.info("server")["run_id"]).encode()
        deadline = time.monotonic() + LEAD_SECONDS
        while client.get(RedisWatch.KEY) != run_id:
            if time.monotonic() > deadline:
                ledger.note("the leader did not see Redis restarted in 30 s")
                break
            time.sleep(0.05)
    finally:
        client.close()
    waited = int((time.time() - came_back[0]) * 1000)
    with ledger.lock:
        ledger.figures[SEEN_RESTARTED] = max(ledger.figures[SEEN_RESTARTED], waited)


def relayed(soak: Soak) -> bool:
    """Whether the relay's checkpoint is at the end of the log (so the gate has every change)."""
    engine = create_engine(soak.database_url)
    try:
        store = EventStore(engine)
        with engine.connect() as conn:
            return store.get_checkpoint(conn, CHECKPOINT) >= store.max_position()
    finally:
        engine.dispose()


def _settle_relay(soak: Soak) -> bool:
    deadline = time.monotonic() + soak.settle_seconds
    while not relayed(soak):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


def run(
    soak: Soak,
    redis_persistence: str,
    redis_kills: float,
    console: Console,
    plan: Sequence[str] | None = None,
    cluster: PrivateCluster | None = None,
    pg_kills: float = 0.0,
    stalls: float = 0.0,
    dep_stalls: float = 0.0,
) -> Result:
    """Run the soak in ``soak.workdir`` (made if missing) on ``soak.pg_url`` (an empty
    database) and a Redis on ``soak.redis_port``, and check what it left. ``plan`` names what
    each round kills (as ``VICTIMS``, ``STARTING``, ``PG_CRASHES`` and "Redis" do), else it is
    drawn. With ``cluster`` (the server of ``soak.pg_url``, the soak's own) ``pg_kills`` of the
    rounds crash PostgreSQL; ``stalls`` of them freeze a process instead of killing one, and
    ``dep_stalls`` make Redis or PostgreSQL (then ``cluster``) silent."""
    (soak.workdir / "logs").mkdir(parents=True, exist_ok=True)
    (soak.workdir / "policy.toml").write_text(POLICY)
    assert soak.redis_port is not None
    redis = RedisServer(soak.redis_port, soak.workdir / "redis", redis_persistence)
    redis.start()
    fleet: Fleet | None = None
    receiver = Receiver(soak.webhook_fail_rate, soak.seed)
    mail = MailWatch(soak.mail_dir)
    try:
        init = soak.cli("init")
        if init.returncode != 0:
            raise RuntimeError(f"enforcement init failed: {init.stderr}")
        tokens = make_tokens(soak)
        ledger = Ledger()
        rng = random.Random(soak.seed)
        mail.start()
        started = time.monotonic()
        fleet = Fleet(soak, redis, cluster)
        if fleet.leader(LEAD_SECONDS) is None:
            raise RuntimeError("no worker took the lead")
        name = ""
        for round_no in range(soak.rounds):
            if name in PG_CRASHES or name in SILENCES:
                came_back_by_itself(ledger, fleet)
            if name == SILENT_REDIS:
                relay_caught_up(soak, ledger)
            restarted(ledger, fleet)
            ledger.figures["gate checks after a restart"] += gate_agrees(
                ledger, fleet.urls, tokens, rng, 20
            )
            url = rng.choice(fleet.urls)
            add_accounts(soak, ledger, url, tokens["operator"], round_no, receiver)
            sent_again = ledger.figures["requests sent again"]
            stalled, cut_offs = len(ledger.stalls), len(ledger.cut_offs)
            name = kill_under_load(
                soak,
                ledger,
                tokens,
                fleet.urls,
                rng,
                round_no,
                functools.partial(
                    _victim,
                    fleet,
                    ledger,
                    rng,
                    (soak.startup_kills, redis_kills, pg_kills, stalls, dep_stalls),
                    plan[round_no] if plan else None,
                ),
                linger=min(1.5, soak.seconds),
            )
            what = f"killed {name}"
            if len(ledger.stalls) > stalled:
                stopped, went_on = ledger.stalls[-1]
                what = f"froze {name} for {went_on - stopped:.1f} s"
                for cut in ledger.cut_offs[cut_offs:]:
                    console.print(
                        f"  cut off: {cut.what} to {cut.base_url}, sent {cut.sent - went_on:+.3f}"
                        f" s and cut {cut.at - went_on:+.3f} s after the SIGCONT: {cut.error}"
                    )
            if name in STARTING:
                what = f"killed {name} (landed: {ledger.starting_phase})"
            if name in PG_CRASHES:
                what = f"killed {name}: {_outage_text(ledger.outages[-1])}"
            if name in SILENCES:
                what = f"made {name}: {_outage_text(ledger.outages[-1])}"
            console.print(
                f"round {round_no + 1}/{soak.rounds}: {what}; {len(ledger.calls)} "
                f"requests so far, {ledger.figures['requests sent again'] - sent_again} sent "
                f"again in the round, {len(ledger.retry)} waiting for an answer"
            )
        if name in PG_CRASHES or name in SILENCES:
            came_back_by_itself(ledger, fleet)
        # Both workers killed at once, then, as if 11 minutes had passed, started again: the
        # first notice each writes must sweep the part files that kills left.
        ledger.kills.append(fleet.kill_workers())
        ledger.figures["kills: both workers at once (before the last start)"] += 1
        parts_aged = age_parts(soak, 660)
        restarted(ledger, fleet)
        if fleet.leader(LEAD_SECONDS) is None:
            raise RuntimeError("no worker took the lead after the last start")
        ledger.figures["gate checks after a restart"] += gate_agrees(
            ledger, fleet.urls, tokens, rng, 20
        )
        add_accounts(soak, ledger, fleet.urls[0], tokens["operator"], soak.rounds, receiver)
        send_what_waits(soak, ledger, tokens, fleet.urls, rng)
        a_notice(ledger, fleet.urls[1], tokens, soak)
        replays_differ = replay_some(ledger, fleet.urls, tokens, 25)
        settle(soak, ledger)
        if not _settle_relay(soak):
            ledger.note("the relay did not reach the end of the log")
        ledger.figures[SETTLED_GATE] += gate_agrees(
            ledger, fleet.urls, tokens, rng, None, SETTLED_GATE_WRONG
        )
        _, late = settle(soak, ledger)  # again: the gate's questions took seconds
        stop_statuses = fleet.stop()
        redis.stop()
    except BaseException:
        if fleet is not None:
            fleet.kill_all()
        redis.kill()
        raise
    finally:
        mail.close()
        receiver.close()
    elapsed = time.monotonic() - started
    ending = Ending(late, replays_differ, parts_aged, stop_statuses)
    checks, figures, notes = check_all(soak, ledger, receiver, mail, ending)
    kinds = {k: v for k, v in sorted(ledger.figures.items()) if k.startswith("kills: ")}
    figures = {
        "rounds (kills)": ledger.figures["kills"],
        **kinds,
        **(stall_figures(ledger) if stalls else {}),
        "kills with a request in flight": ledger.figures["kills with a request in flight"],
        **{k: v for k, v in sorted(ledger.figures.items()) if k.startswith("kills while")},
        "Redis persistence": redis_persistence,
        **({SEEN_RESTARTED: ledger.figures[SEEN_RESTARTED]} if redis_persistence != "none" else {}),
        **(postgres_figures(ledger) if pg_kills else {}),
        **(silence_figures(ledger) if dep_stalls else {}),
        "wall time": f"{elapsed:.0f} s",
        **figures,
    }
    if cluster is not None:
        checks += postgres_checks(ledger)
    return Result(figures, checks, notes, soak.workdir)


def _outage_text(outage: Outage) -> str:
    silent = outage.kind in SILENCES
    if outage.back is None:
        away = "did not come back"
    else:
        away = f"{'silent' if silent else 'away'} {outage.back - outage.at:.2f} s"
    if outage.back is None or outage.first_ok is None:
        first = f"no 2xx within {PG_RECOVERY_SECONDS:.0f} s"
    else:
        after = "the SIGCONT" if silent else ""
        first = f"first 2xx {outage.first_ok - outage.back:.2f} s after {after}".rstrip()
    return f"{away}, {first}; {outage.answered_503} answered 503, {outage.no_answer} no answer"


def _wait_first_ok(outage: Outage) -> None:
    """Until a client got a 2xx answer after ``outage`` (up to ``PG_RECOVERY_SECONDS``)."""
    deadline = time.monotonic() + PG_RECOVERY_SECONDS
    while outage.first_ok is None and time.monotonic() < deadline:
        time.sleep(0.01)


def relay_caught_up(soak: Soak, ledger: Ledger) -> None:
    """After Redis's silence, until the relay's checkpoint is at the end of the log (up to
    ``LEAD_SECONDS``), before the gate is asked again: the decisions of the silence reach the
    gate with the relay (the API's push gave up), at its first try once Redis answers again,
    up to a second after it (``docs/operations.md``). A wait is counted, the longest kept."""
    began = time.monotonic()
    deadline = began + LEAD_SECONDS
    behind = False
    while not relayed(soak):
        behind = True
        if time.monotonic() > deadline:
            ledger.note(f"the relay was not at the end of the log {LEAD_SECONDS:.0f} s on")
            break
        time.sleep(0.05)
    if not behind:
        return
    waited = int((time.monotonic() - began) * 1000)
    with ledger.lock:
        ledger.figures[RELAY_WAITS] += 1
        ledger.figures[RELAY_WAITED] = max(ledger.figures[RELAY_WAITED], waited)


def came_back_by_itself(ledger: Ledger, fleet: Fleet) -> None:
    """After a PostgreSQL crash or a dependency's silence (before ``restarted`` starts anything
    again): every process must still run, and a worker lead again, by itself. Counted, and
    noted, when not."""
    what = ledger.outages[-1].kind
    dead = fleet.dead()
    if dead:
        ledger.figures[PG_DEAD] += len(dead)
        ledger.note(f"after {what} these processes had died: {dead}")
    elif fleet.leader(LEAD_SECONDS) is None:
        ledger.figures[PG_LEADERLESS] += 1
        ledger.note(f"after {what} no worker led within 30 s")


def stall_figures(ledger: Ledger) -> dict[str, Any]:
    """The freezes' figures: how many of each process, and how long."""
    spans = [went_on - stopped for stopped, went_on in ledger.stalls]
    kinds = {
        k: v
        for k, v in sorted(ledger.figures.items())
        if k.startswith("stalls: ") and k.removeprefix("stalls: ") not in SILENCES
    }
    return {
        "rounds that froze a process": sum(kinds.values()),
        **kinds,
        "frozen (s): shortest, longest, total": (
            f"{min(spans):.1f}, {max(spans):.1f}, {sum(spans):.0f}" if spans else "-"
        ),
        f"workers frozen past their heartbeat ({STALL_HEARTBEAT_MS / 1000:g} s)": len(
            ledger.handed_on
        ),
    }


def postgres_figures(ledger: Ledger) -> dict[str, Any]:
    """The PostgreSQL crashes' figures: outages, 503s, recovery."""
    return _outage_figures(
        ledger,
        ("PostgreSQL crashes (stop -m immediate, backend SIGKILLed)", PG_STOP, PG_BACKEND),
        ("PostgreSQL away (s)", "the outages", PG_BACK_TO_OK),
    )


def silence_figures(ledger: Ledger) -> dict[str, Any]:
    """The silences' figures: of each dependency, how long, 503s, recovery."""
    return _outage_figures(
        ledger,
        ("silences (Redis, PostgreSQL)", SILENT_REDIS, SILENT_PG),
        ("silent (s)", "the silences", SILENT_BACK_TO_OK),
    ) | {
        f"{RELAY_WAITS}, {RELAY_WAITED}": (
            f"{ledger.figures[RELAY_WAITS]}, {ledger.figures[RELAY_WAITED]}"
        )
    }


def _outage_figures(
    ledger: Ledger, kinds: tuple[str, str, str], names: tuple[str, str, str]
) -> dict[str, Any]:
    """How many outages of each of two kinds (``kinds``: the figure's name, then the two), and
    (``names``: of the span, of the outages, of the recovery figure) how long they lasted, the
    503s and requests without an answer meanwhile, the longest from their end to a 2xx."""
    counted, first, second = kinds
    span, during, back_to_ok = names
    outages = [o for o in ledger.outages if o.kind in (first, second)]
    away = [o.back - o.at for o in outages if o.back is not None]
    to_ok = [o.first_ok - o.back for o in outages if o.first_ok is not None and o.back]
    return {
        counted: ", ".join(str(sum(o.kind == kind for o in outages)) for kind in (first, second)),
        f"{span}: shortest, longest": f"{min(away):.2f}, {max(away):.2f}" if away else "-",
        f"answered 503 during {during} (no answer)": (
            f"{sum(o.answered_503 for o in outages)} ({sum(o.no_answer for o in outages)})"
        ),
        back_to_ok: int(max(to_ok) * 1000) if to_ok else "-",
    }


def postgres_checks(ledger: Ledger) -> list[Check]:
    """After each PostgreSQL crash or dependency's silence, every process came back by itself:
    none died, a worker led again, and a client got a 2xx answer once the server answered
    again."""
    outages = ledger.outages
    no_ok = sum(o.first_ok is None for o in outages)
    dead, leaderless = ledger.figures[PG_DEAD], ledger.figures[PG_LEADERLESS]
    return [
        (
            "after each PostgreSQL crash or silence of Redis or PostgreSQL every process came "
            "back by itself (none died, a worker led again, a 2xx answer followed the server's "
            "return)",
            not no_ok and not dead and not leaderless,
            f"{len(outages)} crashes or silences; {dead} processes died, {leaderless} without "
            f"a leader for 30 s, {no_ok} without a 2xx within {PG_RECOVERY_SECONDS:.0f} s",
        )
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    soak_arguments(parser, rounds=10, seconds=6.0)
    parser.add_argument(
        "--redis-kills", type=float, default=0.15, help="share of rounds that kill Redis (0.15)"
    )
    parser.add_argument(
        "--redis-persistence",
        choices=("none", "aof", "rdb"),
        default="none",
        help="none: Redis restarts empty (default); aof: an append-only file fsynced always; "
        "rdb: a snapshot every second, which a restart goes back to",
    )
    parser.add_argument(
        "--startup-kills",
        type=float,
        default=0.3,
        help="share of rounds that kill a process while it starts (0.3): an API process, or "
        "both workers and then the one starting to lead, before the lock, while seeding the "
        "gate, or while re-sending after Redis restarted",
    )
    parser.add_argument("--redis-port", type=int, help="default: a free one")
    parser.add_argument(
        "--pg-kills",
        type=float,
        default=0.0,
        help="share of rounds that crash PostgreSQL (0: none): an immediate stop and a start "
        f"{PG_AWAY[0]:g} to {PG_AWAY[1]:g} s later, or a backend SIGKILLed; the soak then runs "
        "a PostgreSQL cluster of its own in its working directory, on a free port",
    )
    parser.add_argument(
        "--stalls",
        type=float,
        default=0.0,
        help="share of rounds that freeze a process instead of killing one (0: none): an API "
        "process, the leading worker or the other worker SIGSTOPped for "
        f"{STALL_SECONDS[0]:g} to {STALL_SECONDS[1]:g} s, then SIGCONTed; the workers' "
        f"heartbeat is then {STALL_HEARTBEAT_MS} ms, so that longer freezes hand their "
        "messages on",
    )
    parser.add_argument(
        "--dep-stalls",
        type=float,
        default=0.0,
        help="share of rounds that make a dependency silent instead of killing a process (0: "
        "none): redis-server, or every process of the soak's own PostgreSQL cluster (as "
        f"--pg-kills runs it), SIGSTOPped for {SILENT_SECONDS[0]:g} to {SILENT_SECONDS[1]:g} s, "
        "then SIGCONTed; the processes' timeouts are then "
        + ", ".join(f"{k}={v}" for k, v in SILENT_SETTINGS.items()),
    )
    args = parser.parse_args()
    admin_url = os.environ.get(PG_URL_ENV)
    own_cluster = bool(args.pg_kills or args.dep_stalls)
    if not admin_url and not own_cluster:
        parser.error(f"set {PG_URL_ENV} to a PostgreSQL account that may create databases")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="soak-production-"))
    console = Console()
    ok = False
    cluster = None
    try:
        if own_cluster:
            # Never the shared server: a cluster of the soak's own, which it may crash.
            workdir.mkdir(parents=True, exist_ok=True)
            workdir.chmod(0o755)  # the server's user must reach its directory
            cluster = PrivateCluster(workdir / "postgres", free_port())
            cluster.init()
            cluster.start()
            admin_url = cluster.admin_url
        assert admin_url is not None
        with pg_database(admin_url, "soak_production") as pg_url:
            soak = soak_from(
                args,
                workdir,
                startup_kills=args.startup_kills,
                pg_url=pg_url,
                redis_port=args.redis_port or free_port(),
                **({"heartbeat_ms": STALL_HEARTBEAT_MS} if args.stalls else {}),
                **({"settings": SILENT_SETTINGS} if args.dep_stalls else {}),
            )
            where = "" if cluster is None else f", PostgreSQL of its own on {cluster.port}"
            console.print(
                f"production crash soak: {soak.rounds} rounds of up to {soak.seconds:g} s, "
                f"{soak.clients} clients, Redis on {soak.redis_port} ({args.redis_persistence})"
                f"{where}, in {workdir} (load {os.getloadavg()[0]:.2f})"
            )
            result = run(
                soak,
                args.redis_persistence,
                args.redis_kills,
                console,
                cluster=cluster,
                pg_kills=args.pg_kills,
                stalls=args.stalls,
                dep_stalls=args.dep_stalls,
            )
            show(result, console, "production crash soak")
            ok = result.ok
    finally:
        if cluster is not None:
            cluster.stop()
    if ok and args.workdir is None:
        shutil.rmtree(workdir)
    elif not ok:
        console.print(f"[red]failed[/]; the working directory is kept: {workdir}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
