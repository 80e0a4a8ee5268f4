"""Test doubles and runners for the workers suite.

- ``Receiver``: a webhook endpoint (``http.server`` in a thread on loopback) that records every
  request's headers and raw body, and can fail its first N requests or hold the first one until
  released.
- ``SmtpSink``: a real SMTP server (aiosmtpd) in this process, keeping every message it accepts.
- ``Recorder``: a Dramatiq middleware that notes every message a worker has finished, so a test
  waits for "the message was handled" instead of sleeping.
- ``System``: the real runtime in this process (``build_actors`` + ``start_background``: relay,
  sweep and Dramatiq worker threads) over the embedded broker or Redis.
- ``WorkerProcess``: the real ``enforcement worker`` command as a subprocess in its own process
  group, so a test can SIGKILL it and all its consumer processes at once.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import errno
import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import dramatiq
import pytest
import sqlalchemy as sa
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from enforcement.bootstrap import Clock, Container, bootstrap
from enforcement.policy import ViolationReport
from enforcement.service import Actor, Outcome
from enforcement.settings import Settings
from enforcement.tables import contacts
from enforcement.workers import redis_watch
from enforcement.workers.broker import make_broker
from enforcement.workers.relay import CHECKPOINT, Message
from enforcement.workers.runtime import build_actors, start_background
from events import EventStore, RecordedEvent
from tests.processes import PortTaken, free_port, on_free_ports

CLI = str(Path(sys.executable).with_name("enforcement"))
SECRET = "test-webhook-secret"
REPORTER = Actor(name="reporter:tests", correlation_id="tests")
OPERATOR = Actor(name="operator:tests", correlation_id="tests")
OUTCOMES = ("NoticeDelivered", "NoticeDeliveryFailed")


def hold_gate_keeper_seeds(
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[threading.Event, threading.Event]:
    """Make the gate keeper's re-seeds (after Redis lost its data) wait: ``seeding`` is set
    when one starts, which then waits for ``go_on`` (at most 30 s). Returns both."""
    seeding, go_on = threading.Event(), threading.Event()
    seed_gate = redis_watch.seed_gate

    def held_seed(*args: Any) -> int:
        if threading.current_thread().name == "gate-keeper":
            seeding.set()
            go_on.wait(30)
        return seed_gate(*args)

    monkeypatch.setattr(redis_watch, "seed_gate", held_seed)
    return seeding, go_on


def wait_until(
    condition: Callable[[], Any], what: str, timeout: float = 20.0, every: float = 0.02
) -> Any:
    """Poll ``condition`` until it is truthy and return its value; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def fast_settings(database_url: str, workdir: Path, **overrides: Any) -> Settings:
    """Settings for tests: short backoffs, a signing secret, loopback webhooks allowed."""
    base = Settings(
        database_url=database_url,
        mail_dir=str(workdir / "notices"),
        webhook_secret=SECRET,
        webhook_allow_private=True,
        notice_retries=3,
        notice_backoff_ms=100,
        notice_max_backoff_ms=400,
        sweep_seconds=3600.0,
        worker_threads=4,
        worker_processes=1,
        worker_heartbeat_ms=2000,
    )
    return replace(base, **overrides)


def write_policy(workdir: Path, **keys: str) -> str:
    """A policy file with the given duration keys (``remediation_window="2s"``, …)."""
    path = workdir / "policy.toml"
    path.write_text("".join(f'{key} = "{value}"\n' for key, value in keys.items()))
    return str(path)


def set_contact(
    engine: sa.Engine,
    account_id: str,
    email: str | None = None,
    webhook_url: str | None = None,
    updated_at: datetime | None = None,
    **since: datetime | None,
) -> None:
    """Store the account's contact, changed at ``updated_at`` (default: now);
    ``email_since`` and ``webhook_since`` are NULL (since always) unless given."""
    with engine.begin() as conn:
        conn.execute(contacts.delete().where(contacts.c.account_id == account_id))
        conn.execute(
            contacts.insert().values(
                account_id=account_id,
                email=email,
                webhook_url=webhook_url,
                updated_at=datetime.now(UTC) if updated_at is None else updated_at,
                **since,
            )
        )


def report(container: Container, account_id: str, category: str = "spam", **fields: Any) -> Outcome:
    """Post a violation through the use case, as the API does."""
    violation = ViolationReport(category=category, occurred_at=container.clock(), **fields)
    return container.service.report_violation(account_id, violation, REPORTER)


def all_events(store: EventStore, *types: str) -> list[RecordedEvent]:
    return [e for e in store.iter_all(0) if not types or e.type in types]


def outcomes_of(store: EventStore, notice_event_id: str) -> list[RecordedEvent]:
    """Every delivery outcome recorded for one notice, in log order."""
    return [e for e in all_events(store, *OUTCOMES) if e.data["notice_event_id"] == notice_event_id]


def delivered_once_each(
    store: EventStore, notice_ids: Iterable[str], channels: Iterable[str]
) -> bool:
    """Whether every notice has a ``NoticeDelivered`` on every channel (any number)."""
    seen = {
        (e.data["notice_event_id"], e.data["channel"]) for e in all_events(store, "NoticeDelivered")
    }
    return all((n, c) in seen for n in notice_ids for c in channels)


def relay_position(store: EventStore) -> int:
    with store.engine.connect() as conn:
        return store.get_checkpoint(conn, CHECKPOINT)


# ------------------------------------------------------------------ the webhook receiver


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def event_id(self) -> str:
        return self.headers["x-enforcement-event-id"]

    def json(self) -> dict[str, Any]:
        return dict(json.loads(self.body))


@dataclass
class Receiver:
    """A webhook endpoint on loopback. ``fail_first`` requests answer ``fail_status``;
    with ``hold_first`` the first request waits (already recorded) until ``release()``."""

    fail_first: int = 0
    fail_status: int = 500
    hold_first: bool = False
    requests: list[Request] = field(default_factory=list)
    _released: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                request = Request(
                    self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.time()
                )
                with receiver._lock:
                    receiver.requests.append(request)
                    number = len(receiver.requests)
                if receiver.hold_first and number == 1:
                    receiver._released.wait(60)
                status = receiver.fail_status if number <= receiver.fail_first else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # the held request's client may be dead by the time it is answered

        self._server = Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}/hooks/enforcement"

    def release(self) -> None:
        self._released.set()

    def for_event(self, event_id: str) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.event_id == event_id]

    def close(self) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()


# ------------------------------------------------------------------ the SMTP server


class SmtpSink:
    """aiosmtpd on a free loopback port (another one if that was taken meanwhile); ``messages``
    holds (envelope rcpts, parsed message) and ``over_tls`` whether each came over STARTTLS.
    With ``tls_context`` it offers STARTTLS; with ``ssl_context`` it is TLS from the
    connection's start (smtps). It takes any login (AUTH PLAIN or LOGIN) and notes each in
    ``logins`` as (user, password, over STARTTLS); it offers AUTH only after STARTTLS unless
    ``auth_require_tls`` is false."""

    def __init__(
        self,
        smtputf8: bool = True,
        tls_context: ssl.SSLContext | None = None,
        auth_require_tls: bool = True,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.messages: list[tuple[list[str], EmailMessage]] = []
        self.senders: list[str] = []  # each message's envelope sender (MAIL FROM)
        self.over_tls: list[bool] = []
        self.logins: list[tuple[str, str, bool]] = []
        sink = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                raw = envelope.original_content or envelope.content
                parsed = email.message_from_bytes(raw, policy=email.policy.default)
                sink.messages.append((list(envelope.rcpt_tos), parsed))  # type: ignore[arg-type]
                sink.over_tls.append(session.ssl is not None)
                sink.senders.append(envelope.mail_from)
                return "250 Message accepted for delivery"

        def authenticator(
            server: Any, session: Any, envelope: Any, mechanism: str, data: Any
        ) -> AuthResult:
            login = (data.login.decode(), data.password.decode(), session.ssl is not None)
            sink.logins.append(login)
            return AuthResult(success=True)

        def listen(port: int) -> Controller:
            controller = Controller(
                Handler(),
                hostname="127.0.0.1",
                port=port,
                enable_SMTPUTF8=smtputf8,
                tls_context=tls_context,
                authenticator=authenticator,
                auth_require_tls=auth_require_tls,
                ssl_context=ssl_context,
            )
            try:
                controller.start()
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise PortTaken(str(exc)) from exc
                raise
            return controller

        self.controller = on_free_ports(listen, free_port())
        self.port: int = self.controller.port

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def for_event(self, event_id: str) -> list[EmailMessage]:
        return [m for _, m in self.messages if m["X-Enforcement-Event-Id"] == event_id]

    def close(self) -> None:
        self.controller.stop()


# ------------------------------------------------------------------ the runtime in this process


@dataclass(frozen=True)
class Handled:
    actor: str
    args: tuple[Any, ...]
    error: str | None
    at: float


class Recorder(dramatiq.Middleware):
    """Notes every message a worker thread has finished (successfully or not)."""

    def __init__(self) -> None:
        self.handled: list[Handled] = []
        self._lock = threading.Lock()

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: dramatiq.Message[Any],
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        entry = Handled(
            message.actor_name, tuple(message.args), repr(exception) if exception else None,
            time.time(),
        )  # fmt: skip
        with self._lock:
            self.handled.append(entry)

    def of(self, actor: str, *args: Any) -> list[Handled]:
        with self._lock:
            return [h for h in self.handled if h.actor == actor and h.args[: len(args)] == args]


class System:
    """The relay, the sweep and Dramatiq worker threads in this process, as ``serve`` runs them
    in embedded mode (``settings.redis_url`` unset) or over the Redis broker.

    ``drop`` loses the messages it selects on their way to the broker (a message lost in a
    broker outage), so that a test can show what the sweep alone achieves.
    """

    def __init__(
        self,
        settings: Settings,
        clock: Clock | None = None,
        drop: Callable[[Message], bool] | None = None,
    ) -> None:
        self.settings = settings
        self.container = bootstrap(settings) if clock is None else bootstrap(settings, clock)
        self.store = self.container.store
        self.recorder = Recorder()
        broker = make_broker(settings)
        broker.add_middleware(self.recorder)
        self.actors = build_actors(self.container, broker)
        self.dropped: list[Message] = []
        if drop is not None:
            send = self.actors.enqueue

            def lossy(message: Message) -> None:
                if drop(message):
                    self.dropped.append(message)
                else:
                    send(message)

            self.actors.enqueue = lossy  # type: ignore[method-assign]
        self._stop = start_background(
            self.container,
            self.actors,
            consumers=True,
            relay=True,
            then_close=self.actors.broker.close,
        )

    def report(self, account_id: str, category: str = "spam", **fields: Any) -> Outcome:
        return report(self.container, account_id, category, **fields)

    def contact(
        self, account_id: str, email: str | None = None, webhook_url: str | None = None
    ) -> None:
        set_contact(self.container.engine, account_id, email, webhook_url)

    def events(self, *types: str, account_id: str | None = None) -> list[RecordedEvent]:
        return [
            e
            for e in all_events(self.store, *types)
            if account_id is None or e.account_id == account_id
        ]

    def outcomes(self, notice_event_id: str) -> list[RecordedEvent]:
        return outcomes_of(self.store, notice_event_id)

    def caught_up(self) -> bool:
        """The relay has passed every event recorded so far."""
        return relay_position(self.store) >= self.store.max_position()

    def close(self) -> None:
        self._stop()  # and the broker, once its threads ended
        self.container.close()


# ------------------------------------------------------------------ ``enforcement worker``


def cli_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment that gives a CLI subprocess ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENFORCEMENT_")}
    values = {
        "ENFORCEMENT_DATABASE_URL": settings.database_url,
        "ENFORCEMENT_REDIS_URL": settings.redis_url,
        "ENFORCEMENT_POLICY_FILE": settings.policy_file,
        "ENFORCEMENT_SMTP_URL": settings.smtp_url,
        "ENFORCEMENT_MAIL_DIR": settings.mail_dir,
        "ENFORCEMENT_WEBHOOK_SECRET": settings.webhook_secret,
        "ENFORCEMENT_WEBHOOK_ALLOW_PRIVATE": "true" if settings.webhook_allow_private else "false",
        "ENFORCEMENT_NOTICE_RETRIES": str(settings.notice_retries),
        "ENFORCEMENT_NOTICE_BACKOFF_MS": str(settings.notice_backoff_ms),
        "ENFORCEMENT_NOTICE_MAX_BACKOFF_MS": str(settings.notice_max_backoff_ms),
        "ENFORCEMENT_SWEEP_SECONDS": str(int(settings.sweep_seconds)),
        "ENFORCEMENT_WORKER_PROCESSES": str(settings.worker_processes),
        "ENFORCEMENT_WORKER_THREADS": str(settings.worker_threads),
        "ENFORCEMENT_WORKER_HEARTBEAT_MS": str(settings.worker_heartbeat_ms),
        "PYTHONUNBUFFERED": "1",
    }
    env.update({k: v for k, v in values.items() if v is not None})
    env.update(extra)
    return env


class WorkerProcess:
    """``enforcement worker`` in a new session: its consumer processes share its process group."""

    def __init__(self, settings: Settings, log: Path) -> None:
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [CLI, "worker"],
                env=cli_env(settings),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill(self) -> None:
        """SIGKILL the whole group at once: nothing gets to clean up or acknowledge."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # any consumer left behind
        self.proc.wait(timeout=10)

    def output(self) -> str:
        return self.log.read_text(errors="replace")
