"""What the crash soaks (``soak_embedded.py``, ``soak_production.py``) run: their settings,
``enforcement serve``, ``enforcement worker`` and ``redis-server`` as subprocesses they can
kill, the webhook receiver and the watch on the mail directory."""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import redis

ROOT = Path(__file__).resolve().parents[1]

WEBHOOK_SECRET = "soak-webhook-secret"
# Short deadlines, so that the scheduler escalates and ends things while the server is killed.
POLICY = """\
remediation_window = "4s"
first_high_suspension = "6s"
third_minor_suspension = "8s"
missed_remediation_suspension = "5s"
"""
STARTUP_SECONDS = 60.0


# ------------------------------------------------------------------ the webhook receiver


class Receiver:
    """A webhook endpoint on loopback that counts every notice it takes (by
    ``X-Enforcement-Event-Id``), answering within 0.1 s (so that a kill can cut a delivery
    off); the first receipt of a notice fails with a 500 at ``fail_rate``, so retries (and
    their loss at a kill) happen too."""

    def __init__(self, fail_rate: float, seed: int) -> None:
        self.taken: Counter[str] = Counter()
        self.first_taken_at: dict[str, float] = {}
        self.failed: Counter[str] = Counter()
        self.lock = threading.Lock()
        rng = random.Random(seed)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                event_id = self.headers.get("X-Enforcement-Event-Id", "")
                with receiver.lock:
                    first = not receiver.taken[event_id] and not receiver.failed[event_id]
                    fail = first and rng.random() < fail_rate
                    (receiver.failed if fail else receiver.taken)[event_id] += 1
                    if not fail:
                        receiver.first_taken_at.setdefault(event_id, time.time())
                    delay = rng.uniform(0, 0.1)
                time.sleep(delay)  # a receiver at work
                self.send_response(500 if fail else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/hooks"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class MailWatch(threading.Thread):
    """Looks at the mail directory every 0.1 s: an ``.eml`` replaced by another file of the same
    name (``write_durably`` renames a new file over it) is a notice written again."""

    def __init__(self, directory: Path) -> None:
        super().__init__(name="mail-watch", daemon=True)
        self.directory = directory
        self.inodes: dict[str, int] = {}
        self.rewritten: Counter[str] = Counter()
        self.first_seen_at: dict[str, float] = {}
        self.parts_seen: set[str] = set()
        self.stop_event = threading.Event()

    def look(self) -> None:
        try:
            entries = list(os.scandir(self.directory))
        except FileNotFoundError:
            return
        for entry in entries:
            try:
                inode = entry.inode()
            except OSError:
                continue
            if entry.name.endswith(".part"):
                self.parts_seen.add(entry.name)
            elif entry.name.endswith(".eml"):
                seen = self.inodes.get(entry.name)
                if seen is not None and seen != inode:
                    self.rewritten[entry.name] += 1
                self.inodes[entry.name] = inode
                self.first_seen_at.setdefault(entry.name, time.time())

    def run(self) -> None:
        while not self.stop_event.wait(0.1):
            self.look()

    def close(self) -> None:
        self.stop_event.set()
        self.join()
        self.look()


# ------------------------------------------------------------------ the server


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Soak:
    """Where the soak runs and what it runs with: the embedded default (one SQLite file), or,
    with ``pg_url`` and ``redis_port``, production (PostgreSQL and Redis)."""

    workdir: Path
    rounds: int = 20
    seconds: float = 8.0
    clients: int = 4
    accounts_per_round: int = 30
    webhook_fail_rate: float = 0.2
    startup_kills: float = 0.2  # the share of rounds that also kill a server as it starts
    seed: int = 1
    # How long the last start may take to settle (every notice delivered, no deadline overdue).
    # Under the lost-retry scan's 24 s here, a delivery that only that scan sends fails the soak.
    settle_seconds: float = 90.0
    pg_url: str | None = None  # production: the PostgreSQL database (instead of SQLite)
    redis_port: int | None = None  # production: the port of the soak's ``redis-server``
    # production: how old a worker's heartbeat is when Redis hands its messages to another
    heartbeat_ms: int = 5000
    # production: more of the processes' settings (``ENFORCEMENT_*``), e.g. shorter timeouts
    settings: dict[str, str] = field(default_factory=dict)

    @property
    def production(self) -> bool:
        return self.redis_port is not None

    @property
    def database(self) -> Path:
        return self.workdir / "db" / "enforcement.db"

    @property
    def database_url(self) -> str:
        return self.pg_url or f"sqlite:///{self.database}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def mail_dir(self) -> Path:
        return self.workdir / "notices"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ENFORCEMENT_")}
        path = env.get("PYTHONPATH")
        env.update(
            {
                # The checkout this script is in, whatever the virtualenv's install points at.
                "PYTHONPATH": str(ROOT) if not path else f"{ROOT}{os.pathsep}{path}",
                "PYTHONUNBUFFERED": "1",
                "ENFORCEMENT_DATABASE_URL": self.database_url,
                "ENFORCEMENT_MAIL_DIR": str(self.mail_dir),
                "ENFORCEMENT_POLICY_FILE": str(self.workdir / "policy.toml"),
                "ENFORCEMENT_WEBHOOK_SECRET": WEBHOOK_SECRET,
                "ENFORCEMENT_WEBHOOK_ALLOW_PRIVATE": "true",
                # Retries wait in the broker for a second or more: a kill loses them (the
                # in-memory broker's; Redis's when it restarts without its data).
                "ENFORCEMENT_NOTICE_BACKOFF_MS": "1000",
                "ENFORCEMENT_NOTICE_MAX_BACKOFF_MS": "4000",
                "ENFORCEMENT_SWEEP_SECONDS": "1",
                "ENFORCEMENT_WORKER_THREADS": "4",
            }
        )
        if self.production:
            env.update(
                {
                    "ENFORCEMENT_REDIS_URL": self.redis_url,
                    # One consumer process a worker (the machine is shared), and a killed
                    # (or frozen) worker's messages handed to the other after 5 s (not 60).
                    "ENFORCEMENT_WORKER_PROCESSES": "1",
                    "ENFORCEMENT_WORKER_HEARTBEAT_MS": str(self.heartbeat_ms),
                    **self.settings,
                }
            )
        return env

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "enforcement", *args],
            env=self.env(),
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )


def soak_arguments(parser: argparse.ArgumentParser, rounds: int, seconds: float) -> None:
    """The options both soaks take (``soak_from``), with their default rounds and seconds."""
    parser.add_argument("--rounds", type=int, default=rounds, help=f"kills (default {rounds})")
    parser.add_argument(
        "--seconds",
        type=float,
        default=seconds,
        help=f"longest load before a kill (default {seconds:g})",
    )
    parser.add_argument("--clients", type=int, default=4, choices=range(1, 5), metavar="1-4")
    parser.add_argument("--accounts", type=int, default=30, help="new accounts per round")
    parser.add_argument(
        "--webhook-failures", type=float, default=0.2, help="share of first receipts answered 500"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", type=Path, help="kept afterwards (default: a temporary one)")


def soak_from(args: argparse.Namespace, workdir: Path, **more: Any) -> Soak:
    """The ``Soak`` that the options of ``soak_arguments`` (and ``more``) say."""
    return Soak(
        workdir,
        rounds=args.rounds,
        seconds=args.seconds,
        clients=args.clients,
        accounts_per_round=args.accounts,
        webhook_fail_rate=args.webhook_failures,
        seed=args.seed,
        **more,
    )


def kill_while_starting(soak: Soak, log: Path, rng: random.Random) -> float:
    """Start ``serve`` and kill it within its first seconds: while it starts, or as its relay
    re-sends what the last one left (the requests wait for the next start). When it was
    killed."""
    server = Serve(soak, log, wait=False)
    time.sleep(rng.uniform(0.2, 3.0))
    return server.kill()


class Process:
    """One run of ``python -m enforcement <args>`` in a session of its own (a kill takes its
    child processes too, as a machine's crash would), its output in a log file of its own."""

    def __init__(self, soak: Soak, log: Path, args: list[str]) -> None:
        self.log = log
        self.spawned_at = time.time()
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "enforcement", *args],
                env=soak.env(),
                cwd=soak.workdir,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill(self) -> float:
        """SIGKILL to the process and its children; when it was sent (``time.time``)."""
        at = time.time()
        with contextlib.suppress(ProcessLookupError):  # it ended by itself: its status says how
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        return at

    def stall(self, seconds: float) -> tuple[float, float]:
        """Freeze the process and its children (SIGSTOP) for ``seconds``, then let them go on
        (SIGCONT), as a paused VM or a long swap-in would: nothing restarts, every connection,
        session and lock is kept. When each signal was sent (``time.time``)."""
        if self.proc.poll() is not None:  # it ended by itself (its id may be another's now)
            at = time.time()
            return at, at
        return _frozen([self.proc.pid], seconds, group=True)

    def stop(self) -> int:
        """SIGTERM; the exit status (uvicorn re-raises the signal it handled: -15 is clean)."""
        return stop_all([self])[0]


def stop_all(processes: list[Process]) -> list[int]:
    """SIGTERM to each of ``processes`` at once; their exit statuses (999: killed after 30 s)."""
    for process in processes:
        process.proc.send_signal(signal.SIGTERM)
    statuses = []
    for process in processes:
        try:
            statuses.append(process.proc.wait(timeout=30))
        except subprocess.TimeoutExpired:
            process.kill()
            statuses.append(999)
    return statuses


class Serve(Process):
    """``enforcement serve`` (``--no-workers`` in production); with ``wait``, once it answers
    ``/healthz``."""

    def __init__(self, soak: Soak, log: Path, wait: bool = True) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        args = ["serve", "--port", str(self.port)]
        super().__init__(soak, log, [*args, "--no-workers"] if soak.production else args)
        if wait:
            self.wait()

    def wait(self) -> None:
        """Until it answers ``/healthz`` (``RuntimeError`` if it exits or takes too long)."""
        log = self.log
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited with {self.proc.returncode}: see {log}")
            try:
                if httpx.get(f"{self.base_url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"serve did not answer in {STARTUP_SECONDS:.0f} s: see {log}")
            time.sleep(0.05)


LEADS = b"this process leads the relay and the deadline sweep"
# What a leader logs when it lost the lock (its database session ended: PostgreSQL restarted).
STEPPED_DOWN = b"leader lock was lost; stepping down"


class Worker(Process):
    """``enforcement worker``: the relay and the sweep when it leads, and its consumers."""

    def __init__(self, soak: Soak, log: Path) -> None:
        super().__init__(soak, log, ["worker"])

    @property
    def leads(self) -> bool:
        """Whether it said it took the lead and has not said it lost it since (it keeps it until
        it dies, unless it loses its database session: then the other may hold it too for a
        moment, until its look sees the lock lost)."""
        if self.proc.poll() is not None:
            return False
        log = self.log.read_bytes()
        return log.rfind(LEADS) > log.rfind(STEPPED_DOWN)


class RedisServer:
    """The soak's ``redis-server`` on a fixed port and data directory, which it can SIGKILL and
    start again. ``persistence`` is ``"none"`` (``--save ""``, ``--appendonly no``: a restart
    loses everything, as the service expects of a Redis without persistence), ``"aof"``
    (append-only file, fsynced before each write is answered: a restart loses nothing
    acknowledged) or ``"rdb"`` (snapshots, as redis-server's default configuration takes them,
    but every second: a restart goes back to the last one)."""

    def __init__(self, port: int, directory: Path, persistence: str) -> None:
        self.port = port
        self.directory = directory
        self.persistence = persistence
        directory.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> float:
        """Start it and wait until it answers; when it did (``time.time``)."""
        args = {
            "none": ["--save", "", "--appendonly", "no"],
            "aof": ["--save", "", "--appendonly", "yes", "--appendfsync", "always"],
            "rdb": ["--save", "1 1", "--appendonly", "no"],
        }[self.persistence]
        self.starts += 1
        with (self.directory / f"redis-{self.starts}.log").open("wb") as out:
            self.proc = subprocess.Popen(
                [
                    os.environ.get("ENFORCEMENT_TEST_REDIS_SERVER") or "redis-server",
                    *("--port", str(self.port), "--bind", "127.0.0.1"),
                    *("--dir", str(self.directory), *args),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        client = redis.Redis(port=self.port, socket_timeout=1)
        deadline = time.monotonic() + STARTUP_SECONDS
        try:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
                try:
                    if client.ping() and client.info("server")["process_id"] == self.proc.pid:
                        return time.time()
                except redis.RedisError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not answer on {self.port}")
                time.sleep(0.02)
        finally:
            client.close()

    def kill(self) -> float:
        at = time.time()
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        return at

    def freeze(self, seconds: float) -> tuple[float, float]:
        """SIGSTOP redis-server (its process group: a snapshot's child too) for ``seconds``, then
        SIGCONT: it keeps every connection open and answers nothing meanwhile (a silent Redis).
        When each signal was sent (``time.time``)."""
        if self.proc is None or self.proc.poll() is not None:
            # Reaped, its id (and process group) may be another's now: never signalled.
            raise RuntimeError("redis-server is not running: nothing to freeze")
        return _frozen([self.proc.pid], seconds, group=True)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


PG_BIN = Path(os.environ.get("ENFORCEMENT_SOAK_PG_BIN", "/usr/lib/postgresql/15/bin"))


class PrivateCluster:
    """A PostgreSQL cluster of the soak's own (``--pg-kills``), in ``directory`` on ``port``,
    which the soak crashes: never the shared server. ``initdb`` and ``pg_ctl`` refuse to run as
    root, so as root they run as the ``postgres`` user, which owns the directory. Trust
    authentication for the user ``enforcement`` (a superuser), on loopback and its socket in the
    directory only; ``fsync`` on, so that a crash loses nothing committed."""

    USER = "enforcement"

    def __init__(self, directory: Path, port: int) -> None:
        self.directory = directory
        self.data = directory / "data"
        self.port = port
        self.log = directory / "postgres.log"
        self.running = False

    @property
    def admin_url(self) -> str:
        return f"postgresql+psycopg://{self.USER}@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(PG_BIN / args[0]), *args[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(
            command, capture_output=True, text=True, timeout=120, check=check, cwd="/"
        )

    def init(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", self.USER)

    def start(self) -> float:
        """Start it (crash recovery first, after an immediate stop); when it accepts
        connections (``time.time``)."""
        options = f"-p {self.port} -k {self.directory} -c fsync=on -c listen_addresses=127.0.0.1"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.log), "-w", "start")
        self.running = True
        return self.wait_ready()

    def stop_immediate(self) -> float:
        """``pg_ctl stop -m immediate``: every process ends at once, no checkpoint (a crash:
        the next start recovers from the WAL); when."""
        at = time.time()
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        self.running = False
        return at

    def backends(self, database: str) -> list[tuple[int, str]]:
        """The client backends serving ``database``: process id and state (active, idle...)."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT pid, coalesce(state, '') FROM pg_stat_activity WHERE datname = %s "
                "AND backend_type = 'client backend' AND pid <> pg_backend_pid()",
                (database,),
            ).fetchall()
        return [(int(pid), str(state)) for pid, state in rows]

    def kill_backend(self, pid: int) -> float:
        """SIGKILL one backend: the postmaster then ends every other one and recovers (the
        shared memory may be damaged), refusing connections meanwhile; when."""
        at = time.time()
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        return at

    def _connect(self, timeout: int = 2) -> Any:
        import psycopg

        return psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user=self.USER,
            dbname="postgres",
            connect_timeout=timeout,
            autocommit=True,
        )

    def answers(self) -> bool:
        try:
            with self._connect(1) as conn:
                conn.execute("SELECT 1")
        except Exception:
            return False
        return True

    def wait_refusing(self, seconds: float) -> None:
        """Until it refuses connections (the postmaster has begun its reset), up to ``seconds``."""
        deadline = time.monotonic() + seconds
        while self.answers() and time.monotonic() < deadline:
            time.sleep(0.005)

    def wait_ready(self) -> float:
        """Until it answers a query (``RuntimeError`` after ``STARTUP_SECONDS``); when."""
        deadline = time.monotonic() + STARTUP_SECONDS
        while not self.answers():
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not come back: see {self.log}")
            time.sleep(0.01)
        return time.time()

    def postmaster(self) -> int:
        """The postmaster's process id, from ``postmaster.pid``, once ``/proc`` shows that
        process working in this cluster's data directory (a stale file's id may be any other
        process's now, another session's server's too): ``RuntimeError`` otherwise."""
        pid = int((self.data / "postmaster.pid").read_text().split()[0])
        try:
            cwd = Path(f"/proc/{pid}/cwd").resolve(strict=True)
        except OSError:
            cwd = None
        if cwd != self.data.resolve():
            raise RuntimeError(f"process {pid} is not the postmaster of {self.data}")
        return pid

    def children(self, postmaster: int) -> list[int]:
        """Every process ``postmaster`` started: backends, checkpointer, WAL writer... (from
        ``/proc``)."""
        children = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                if int(_stat_fields(stat)[1]) == postmaster:  # its parent's id
                    children.append(int(stat.parent.name))
        return children

    def freeze(self, seconds: float) -> tuple[float, float]:
        """SIGSTOP the postmaster, then every process it started, for ``seconds``, then SIGCONT
        them all (the postmaster last): every connection stays open and nothing answers (a
        silent database), a new connection waits in the listen backlog. Its children are
        listed once it is stopped: it can neither start one nor reap one meanwhile, so no id
        listed can be another process's. When each signal was sent (``time.time``)."""
        postmaster = self.postmaster()
        return _frozen([postmaster], seconds, group=False, more=lambda: self.children(postmaster))

    def stop(self) -> None:
        """Stop it (fast: sessions ended, a checkpoint), if it runs."""
        if self.data.exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop", check=False)
        self.running = False


def _frozen(
    pids: list[int],
    seconds: float,
    group: bool,
    more: Callable[[], list[int]] | None = None,
) -> tuple[float, float]:
    """SIGSTOP each of ``pids`` (process groups with ``group``) in order, then, with ``more``,
    those it names once they are stopped; SIGCONT every one stopped, in the reverse order,
    ``seconds`` after the first SIGSTOP, and whatever is raised meanwhile (an interrupt too):
    nothing is ever left stopped. When the first SIGSTOP and the last SIGCONT were sent
    (the same instant when nothing was there to stop)."""
    signal_ = os.killpg if group else os.kill
    stopped: list[int] = []
    at = time.time()
    try:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                signal_(pid, signal.SIGSTOP)
                stopped.append(pid)
        if not stopped:  # it ended by itself: nothing froze
            return at, at
        if more is not None:
            for pid in stopped:  # a signal is sent at once, taken when the process next runs
                _wait_stopped(pid)
            for pid in more():
                if pid not in stopped:
                    with contextlib.suppress(ProcessLookupError):
                        signal_(pid, signal.SIGSTOP)
                        stopped.append(pid)
        time.sleep(max(0.0, at + seconds - time.time()))  # the freeze itself (nothing to wait for)
    finally:
        for pid in reversed(stopped):
            with contextlib.suppress(ProcessLookupError):
                signal_(pid, signal.SIGCONT)
    return at, time.time()


def _wait_stopped(pid: int, seconds: float = 5.0) -> None:
    """Until ``/proc`` shows ``pid`` stopped (or gone), up to ``seconds``: ``RuntimeError``
    after that."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            state = _stat_fields(Path(f"/proc/{pid}/stat"))[0]
        except OSError:
            return  # gone
        if state in ("T", "Z", "X"):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"process {pid} did not stop within {seconds:g} s")
        time.sleep(0.001)


def _stat_fields(stat: Path) -> list[str]:
    """The fields of a ``/proc/<pid>/stat`` after the command's closing parenthesis (the
    command may hold spaces and parentheses): the state, then the parent's id, ..."""
    return stat.read_text().rsplit(")", 1)[1].split()
