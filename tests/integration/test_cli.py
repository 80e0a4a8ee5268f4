"""The ``enforcement`` CLI against a populated database, on SQLite and on PostgreSQL.

``init``, ``tokens create``, ``verify`` and some usage errors run the installed console script in
a subprocess (what an operator types); the other commands run in process through Typer's runner
(and the usage errors through the console entry point too).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from enforcement.auditing import RESTRICTIVE
from enforcement.bootstrap import Container, bootstrap
from enforcement.cli import app
from enforcement.cli import main as cli_main
from enforcement.cli_output import console
from enforcement.migrations import upgrade
from enforcement.operator_decisions import Suspend
from enforcement.policy import ViolationReport
from enforcement.roles import Role
from enforcement.service import Actor
from enforcement.settings import Settings
from enforcement.tables import api_tokens
from enforcement.tokens import TokenAuthenticator
from events.dialects import drop_append_only_ddl
from events.schema import events as events_table
from events.timefmt import format_time
from events.wire import event_to_json
from projections.tables import standings
from tests.auditor import CONTRACT_KEYS
from tests.pgbouncer import PgBouncer

CLI = str(Path(sys.executable).with_name("enforcement"))
T0 = datetime(2026, 3, 2, 9, 0, 0, 250_000, tzinfo=UTC)
ACTOR = Actor(name="admin:cli-test", correlation_id="cli-test")
API_EVENT_KEYS = {"position", *CONTRACT_KEYS, "prev_hash", "hash"}  # an event of the API


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Populated:
    url: str
    container: Container
    clock: Clock

    def events(self, account_id: str | None = None) -> list[dict[str, Any]]:
        store = self.container.store
        found = store.iter_stream(account_id) if account_id else store.iter_all()
        return [event_to_json(e) for e in found]


def report(
    container: Container, account_id: str, category: str, description: str = "", **fields: Any
) -> None:
    container.service.report_violation(
        account_id,
        ViolationReport(
            category=category,
            occurred_at=container.clock(),
            description=description or None,
            **fields,
        ),
        ACTOR,
    )


@pytest.fixture
def populated(database_url: str) -> Iterator[Populated]:
    """Three accounts whose events are recorded a day apart from ``T0`` on (a fake clock)."""
    clock = Clock(T0)
    container = bootstrap(Settings(database_url=database_url), clock=clock)
    report(container, "acct_a", "spam", "bulk mail ✓")  # day 0: warning + remediation
    clock.now = T0 + timedelta(days=1)
    report(container, "acct_a", "phishing", severity="medium")  # day 1: second minor → throttle
    report(container, "acct_b", "csam")  # day 1: termination and referral
    clock.now = T0 + timedelta(days=2)
    container.service.operator("acct_a", Suspend("review"), ACTOR)  # day 2
    container.service.file_abuse_report("acct_c", "spam", "spam from them", None, None, ACTOR)
    yield Populated(database_url, container, clock)
    container.close()


def run_cli(
    url: str, *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("ENFORCEMENT_")}
    environment.update({"ENFORCEMENT_DATABASE_URL": url, "COLUMNS": "200", **(env or {})})
    return subprocess.run(
        [CLI, *args], env=environment, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture
def invoke(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Run the CLI in process: ``invoke(url, *args)`` → click's ``Result``."""
    runner = CliRunner()
    monkeypatch.setattr(console, "width", 200)

    def run(url: str, *args: str) -> Any:
        return runner.invoke(
            app, list(args), env={"ENFORCEMENT_DATABASE_URL": url}, catch_exceptions=False
        )

    yield run


def one_sentence(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].endswith("."), stderr
    assert "Traceback" not in stderr
    return lines[0]


# ------------------------------------------------------------------ init and tokens


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_init_creates_the_schema_and_is_idempotent(
    backend: str, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "pg_url")

    first = run_cli(url, "init")
    second = run_cli(url, "init")

    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    assert "revision" in first.stdout
    assert "enforcement:enforcement@" not in first.stdout  # the password is not printed
    engine = sa.create_engine(url)
    try:
        tables = set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert {"events", "idempotency_keys", "api_tokens", "contacts", "standings"} <= tables


def test_init_of_an_unreachable_database_fails_with_one_sentence() -> None:
    result = run_cli("postgresql+psycopg://nobody:secret@127.0.0.1:1/none", "init")

    assert result.returncode == 2  # a usage error, as for every command (1: a check failed)
    # The driver's message, its first line only: not SQLAlchemy's wrapping of it.
    assert one_sentence(result.stderr) == (
        "Could not migrate postgresql+psycopg://nobody:***@127.0.0.1:1/none: connection failed: "
        'connection to server at "127.0.0.1", port 1 failed: Connection refused.'
    )


def test_a_database_that_cannot_be_used_is_one_sentence_and_exit_2_not_1(
    tmp_path: Path,
) -> None:
    """Exit 1 says a check failed (``verify``: the chain is broken); a database that cannot be
    reached, has no schema yet, or (SQLite) is no file at all, is neither that nor a traceback,
    and a command that finds no file does not leave an empty one behind."""
    unreachable = "postgresql+psycopg://nobody:secret@127.0.0.1:1/none"
    empty_file = tmp_path / "empty.db"
    empty_file.touch()
    no_file = tmp_path / "absent.db"
    uninitialised = f"sqlite:///{empty_file}"
    commands = [
        ("verify",),
        ("standing", "acct_1"),
        ("tokens", "create", "--role", "admin", "--name", "n"),
    ]
    cases = [
        (unreachable, "The database cannot be used"),
        (uninitialised, "The database cannot be used"),
        (f"sqlite:///{no_file}", f"The database {no_file} does not exist"),
    ]
    for url, says in cases:
        for args in commands:
            result = run_cli(url, *args)
            assert result.returncode == 2, (url, args, result.stderr)
            sentence = one_sentence(result.stderr)
            assert sentence.startswith(says), sentence
            assert "secret" not in result.stderr
            if url != unreachable:
                assert "enforcement init" in sentence
    assert not no_file.exists()

    written = run_cli(uninitialised, "init")
    assert written.returncode == 0, written.stderr
    nowhere = tmp_path / "no" / "such" / "dir" / "events.jsonl"
    result = run_cli(uninitialised, "export", "--format", "jsonl", "-o", str(nowhere))
    assert result.returncode == 2
    assert one_sentence(result.stderr) == f"Cannot use {nowhere}: No such file or directory."


def unusable_databases(tmp_path: Path) -> list[tuple[str, str]]:
    """Databases that `serve` and `worker` refuse, each with what the refusal says: a SQLite
    file that does not exist (and must not be created), one with no schema, one at an older
    revision."""
    absent = tmp_path / "absent.db"
    empty = tmp_path / "empty.db"
    empty.touch()
    older = f"sqlite:///{tmp_path / 'older.db'}"
    upgrade(older, "0002_read_models")
    return [
        (f"sqlite:///{absent}", f"The database {absent} does not exist; run `enforcement init`"),
        (f"sqlite:///{empty}", "has no schema; run `enforcement init`"),
        (
            older,
            "is at schema revision 0002_read_models, this release needs 0006_contacts_updated_at",
        ),
    ]


def test_a_command_on_a_database_an_older_release_made_says_to_upgrade_it(
    tmp_path: Path,
) -> None:
    """A command run after an upgrade but before `enforcement init` meets a missing table: it
    says the database is at an older revision, as `serve` does, not that it has no schema."""
    [*_, (older, says)] = unusable_databases(tmp_path)
    for args in [("standing", "acct_1")]:
        result = run_cli(older, *args)
        assert result.returncode == 2, (args, result.stderr)
        sentence = one_sentence(result.stderr)
        assert says in sentence, (args, sentence)
        assert sentence.endswith("run `enforcement init` to upgrade it."), sentence


def record_a_second_revision(url: str) -> None:
    """A version table as Alembic's branches would leave it (these migrations never do)."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO alembic_version VALUES ('0001_b')"))
    finally:
        engine.dispose()


def only_the_database(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    """This process's settings as a command's: none of its ``ENFORCEMENT_`` variables but the
    database ``url``."""
    for name in [name for name in os.environ if name.startswith("ENFORCEMENT_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("ENFORCEMENT_DATABASE_URL", url)


def test_a_schema_recorded_at_several_revisions_is_refused_in_one_sentence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Alembic's branches, which these migrations never make (a hand-edited version table):
    ``serve``'s check exits 2 with one sentence, not a traceback."""
    from enforcement import cli_service

    url = f"sqlite:///{tmp_path / 'branched.db'}"
    upgrade(url)
    record_a_second_revision(url)
    with pytest.raises(SystemExit) as exited:
        cli_service._check_schema(url)
    assert exited.value.code == 2
    assert one_sentence(capsys.readouterr().err) == (
        f"The database {url} cannot be used: alembic_version holds 2 revisions, where one was "
        "expected."
    )

    # A command meeting a missing table on such a database: its own sentence, not a traceback.
    [*_, (older, _)] = unusable_databases(tmp_path)
    record_a_second_revision(older)
    only_the_database(monkeypatch, older)
    monkeypatch.setattr(sys, "argv", [CLI, "standing", "acct_1"])
    with pytest.raises(SystemExit) as exited:
        cli_main()
    assert exited.value.code == 2
    sentence = one_sentence(capsys.readouterr().err)
    assert "no such table" in sentence and "schema revision" not in sentence, sentence


def test_serve_refuses_a_database_it_cannot_serve_and_a_busy_port(tmp_path: Path) -> None:
    """One sentence and exit 2 before anything starts: not a server that answers every request
    with "no such table", nor uvicorn's exit 3 for a port in use."""
    cases = unusable_databases(tmp_path)
    for url, says in cases:
        result = run_cli(url, "serve", "--port", "0")
        assert result.returncode == 2, (url, result.stderr)
        assert says in one_sentence(result.stderr), result.stderr
    assert not (tmp_path / "absent.db").exists()

    older = cases[-1][0]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli(older, "serve", "--port", str(port))
    assert result.returncode == 2
    assert one_sentence(result.stderr) == (
        f"Port {port} on 127.0.0.1 is already in use; choose another with --port."
    )


def test_worker_refuses_a_database_it_cannot_serve(tmp_path: Path) -> None:
    """As ``serve`` does: an upgrade's new worker started before `enforcement init` exits 2 with
    one sentence, rather than retrying its relay against missing tables for as long as it runs."""
    for url, says in unusable_databases(tmp_path):
        result = run_cli(
            url, "worker", env={"ENFORCEMENT_REDIS_URL": "redis://127.0.0.1:1/0"}, timeout=30
        )
        assert result.returncode == 2, (url, result.stderr)
        assert says in one_sentence(result.stderr), result.stderr
    assert not (tmp_path / "absent.db").exists()


def test_serve_hands_uvicorn_the_app_with_its_options_and_embeds_the_workers_if_asked(
    sqlite_url: str, invoke: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In process, with uvicorn's ``run`` and the embedded workers' installer replaced: the
    options as given (or their defaults) reach uvicorn, logging is configured, and
    the workers are embedded unless ``--no-workers`` says otherwise."""
    import uvicorn

    from enforcement import cli_service, logs
    from enforcement.api.keep_alive import HTTP_PROTOCOL
    from enforcement.workers import runtime

    upgrade(sqlite_url)
    served: list[dict[str, Any]] = []
    embedded: list[Container] = []
    logging: list[str] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: served.append(options))
    monkeypatch.setattr(runtime, "install_embedded_workers", embedded.append)
    monkeypatch.setattr(logs, "configure_logging", lambda: logging.append("configured"))
    fixed = {"log_config": None, "access_log": False, "http": HTTP_PROTOCOL}

    alone = invoke(sqlite_url, "serve", "--port", "0", "--no-workers", "--keep-alive", "75")
    assert alone.exit_code == 0, alone.output
    assert served == [{"host": "127.0.0.1", "port": 0, "timeout_keep_alive": 75, **fixed}]
    assert (embedded, logging) == ([], ["configured"])

    listened: list[tuple[str, int]] = []
    monkeypatch.setattr(
        cli_service, "_check_can_listen", lambda host, port: listened.append((host, port))
    )
    default = invoke(sqlite_url, "serve")
    assert default.exit_code == 0, default.output
    assert listened == [("127.0.0.1", 8000)]
    assert served[1:] == [{"host": "127.0.0.1", "port": 8000, "timeout_keep_alive": 5, **fixed}]
    assert len(embedded) == 1 and embedded[0].settings.database_url == sqlite_url

    # Each start records its policy: waited for when the database answered the schema check,
    # else left to the recording thread.
    from enforcement import policy_activations

    waits: list[bool] = []
    monkeypatch.setattr(
        policy_activations,
        "record_when_possible",
        lambda engine, policy, clock, wait: waits.append(wait),
    )
    assert invoke(sqlite_url, "serve", "--no-workers").exit_code == 0
    monkeypatch.setattr(cli_service, "_check_schema", lambda url: False)
    assert invoke(sqlite_url, "serve", "--no-workers").exit_code == 0
    assert waits == [True, False]


def test_worker_runs_its_processes_and_exits_with_their_status(
    sqlite_url: str, invoke: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In process, with the worker processes replaced: without Redis the command is refused
    with one sentence; with it, logging is configured and the processes' status is the exit's."""
    from enforcement import logs
    from enforcement.workers import runtime

    upgrade(sqlite_url)
    statuses = iter([0, 1])
    ran: list[tuple[str | None, bool]] = []
    logging: list[str] = []

    def run_worker_processes(settings: Settings, record_at_once: bool) -> int:
        ran.append((settings.redis_url, record_at_once))
        return next(statuses)

    monkeypatch.setattr(runtime, "run_worker_processes", run_worker_processes)
    monkeypatch.setattr(logs, "configure_logging", lambda: logging.append("configured"))

    refused = invoke(sqlite_url, "worker")
    assert refused.exit_code == 2
    assert one_sentence(refused.stderr) == (
        "enforcement worker needs ENFORCEMENT_REDIS_URL; in embedded mode `enforcement serve` "
        "runs the workers itself."
    )
    assert (ran, logging) == ([], [])

    monkeypatch.setenv("ENFORCEMENT_REDIS_URL", "redis://127.0.0.1:1/0")
    assert [invoke(sqlite_url, "worker").exit_code for _ in range(2)] == [0, 1]
    # The database answered the schema check: the policy is recorded at once.
    assert ran == [("redis://127.0.0.1:1/0", True)] * 2
    assert logging == ["configured"] * 2
    # One that did not answer it: left to the recording thread, start-up does not wait.
    from enforcement import cli_service

    monkeypatch.setattr(cli_service, "_check_schema", lambda url: False)
    statuses = iter([0])
    assert invoke(sqlite_url, "worker").exit_code == 0
    assert ran[-1] == ("redis://127.0.0.1:1/0", False)


def test_serve_names_the_address_it_cannot_listen_on_in_one_sentence(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """In process: an address not on this host, a host name that cannot even be encoded, and a
    busy port on every interface (``--host ""``) each exit 2 with a sentence that names it."""
    from enforcement.cli_service import _check_can_listen

    too_long = "a" * 64 + ".example"
    with socket.socket() as busy:
        busy.bind(("", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cases = [
            ("192.0.2.1", 8000, "on 192.0.2.1:8000 (192.0.2.1): Cannot assign requested address"),
            (too_long, 8000, f"on {too_long!r}: encoding with 'idna' codec failed"),
            ("", port, None),
        ]
        for host, port_, says in cases:
            with pytest.raises(SystemExit) as exit:
                _check_can_listen(host, port_)
            assert exit.value.code == 2, host
            sentence = one_sentence(capsys.readouterr().err)
            if says is None:
                assert sentence == f"Port {port} is already in use; choose another with --port."
            else:
                assert sentence.startswith(f"Cannot listen {says}"), sentence
    _check_can_listen("", port)  # free again
    assert capsys.readouterr().err == ""


def _ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6(), reason="this host cannot bind IPv6 addresses")
def test_serve_binds_ipv6_beside_ipv4_and_shows_an_ipv6_address_in_brackets(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """IPv6 is bound beside IPv4, not over it (as asyncio binds them): a port busy on IPv4 is
    free on ``::``, and a free port is bound on 0.0.0.0 and :: at once."""
    from enforcement.cli_service import _check_can_listen

    with pytest.raises(SystemExit) as exit:
        _check_can_listen("2001:db8::1", 80)
    assert exit.value.code == 2
    assert one_sentence(capsys.readouterr().err).startswith(
        "Cannot listen on [2001:db8::1]:80 (2001:db8::1): Cannot assign requested address"
    )
    with socket.socket() as busy:
        busy.bind(("", 0))
        busy.listen()
        port = busy.getsockname()[1]
        _check_can_listen("::", port)  # IPv6 only, beside the busy IPv4 port
    _check_can_listen("", port)  # free again: 0.0.0.0 and :: bound at once
    assert capsys.readouterr().err == ""


@pytest.mark.postgres
@pytest.mark.parametrize(
    "command", [("serve", "--port", "0"), ("worker",)], ids=["serve", "worker"]
)
def test_behind_a_pooler_the_schema_check_logs_json_like_the_rest(
    pg_url: str, pgbouncer: PgBouncer, tmp_path: Path, command: tuple[str, ...]
) -> None:
    """The pooler warning (docs/operations.md) comes first, from the schema check before the
    server or the workers start: a JSON line like every other, not Python's bare fallback text
    in the middle of a JSON log."""
    upgrade(pg_url)
    environment = {k: v for k, v in os.environ.items() if not k.startswith("ENFORCEMENT_")}
    environment["ENFORCEMENT_DATABASE_URL"] = pgbouncer.url(pg_url)
    if command[0] == "worker":
        environment["ENFORCEMENT_REDIS_URL"] = "redis://127.0.0.1:1/0"  # nothing listens
    log = tmp_path / "process.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [CLI, *command],
            env=environment,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a worker's consumer processes share its group
        )
    try:
        deadline = time.monotonic() + 60
        while "connection pooler" not in log.read_text(errors="replace"):
            assert process.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.05)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
    warnings = [line for line in log.read_text().splitlines() if "connection pooler" in line]
    assert warnings[0].startswith("{"), warnings[0]
    first = json.loads(warnings[0])
    assert (first["level"], first["logger"]) == ("warning", "events.dialects")


def test_history_in_a_pipe_is_laid_out_for_its_content_not_80_columns(
    populated: Populated,
) -> None:
    """Without COLUMNS and without a terminal, Rich would lay the table out for 80 columns and
    break ids and event types mid-word; in a pipe, lines are as long as their content."""
    environment = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    environment = {k: v for k, v in environment.items() if not k.startswith("ENFORCEMENT_")}
    environment["ENFORCEMENT_DATABASE_URL"] = populated.url
    result = subprocess.run(
        [CLI, "history", "acct_a"], env=environment, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if "ViolationReported" in line]
    assert len(rows) == 2, result.stdout  # each on one line, the type whole
    assert max(len(line) for line in result.stdout.splitlines()) > 80


def test_a_token_needs_a_name_that_says_whose_it_is(sqlite_url: str) -> None:
    assert run_cli(sqlite_url, "init").returncode == 0
    nameless = run_cli(sqlite_url, "tokens", "create", "--role", "reporter", "--name", " ")
    assert nameless.returncode == 2
    assert (
        one_sentence(nameless.stderr) == "--name must say who or what uses the token; it is empty."
    )


def test_a_token_name_that_is_not_utf8_is_a_usage_error(sqlite_url: str) -> None:
    """The name is in every event the token's requests record (``metadata.actor``), which must
    be UTF-8 JSON. (It was refused by the database's driver, with a sentence that sent the
    operator to ``enforcement verify`` for a damaged event.)"""
    assert run_cli(sqlite_url, "init").returncode == 0
    not_utf8 = os.fsdecode(b"ops-\xff")  # as the process receives the byte 0xFF in argv
    refused = run_cli(sqlite_url, "tokens", "create", "--role", "reporter", "--name", not_utf8)
    assert refused.returncode == 2
    assert one_sentence(refused.stderr) == "--name must be UTF-8 text; it holds a byte that is not."
    listed = run_cli(sqlite_url, "tokens", "list", "--json")
    assert json.loads(listed.stdout) == []


def test_a_sqlite_uri_filename_is_a_file_too(tmp_path: Path) -> None:
    """``sqlite:///file:/path?uri=true`` names a file as a plain path does: not created by a
    command that only uses it, and not served when it does not exist."""
    absent = tmp_path / "absent.db"
    for mode in ("", "&mode=ro"):
        url = f"sqlite:///file:{absent}?uri=true{mode}"
        for args in (("standing", "acct_1"), ("serve", "--port", "0")):
            result = run_cli(url, *args)
            assert result.returncode == 2, (args, result.stderr)
            assert one_sentence(result.stderr).startswith(f"The database {absent} does not exist")
    assert not absent.exists()


def test_the_commands_that_read_the_log_do_not_import_redis(sqlite_url: str) -> None:
    """redis-py costs about a fifth of a CLI command's CPU to import; a command that builds no
    Redis gate (no ``ENFORCEMENT_REDIS_URL``) does not pay for it."""
    upgrade(sqlite_url)
    for args in (("standing", "acct_1"), ("history", "acct_1"), ("verify",)):
        result = run_cli(sqlite_url, *args, env={"PYTHONPROFILEIMPORTTIME": "1"})
        assert result.returncode == 0, (args, result.stderr)
        imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()}
        assert "sqlalchemy" in imported  # the import times were written
        assert not {name for name in imported if name.split(".")[0] == "redis"}, args


def test_the_schema_checks_do_not_import_alembic(tmp_path: Path) -> None:
    """Alembic costs about 0.14 s of CPU to import: ``serve``'s check of the schema (at every
    start) and a command that meets a missing table read the revision without it."""
    [*_, (older, says)] = unusable_databases(tmp_path)
    for args in (("serve", "--port", "0"), ("standing", "acct_1")):
        result = run_cli(older, *args, env={"PYTHONPROFILEIMPORTTIME": "1"})
        assert result.returncode == 2, (args, result.stderr)
        imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()}
        assert "sqlalchemy" in imported  # the import times were written
        assert says in result.stderr, args  # the older revision was read, and named
        assert not {name for name in imported if name.split(".")[0] == "alembic"}, args


@pytest.mark.postgres
def test_serve_refuses_credentials_or_a_database_that_waiting_will_not_mend(pg_url: str) -> None:
    """A refused password or a database that does not exist: exit 2 at once. (A server that
    does not answer yet is served: /healthz says 503 until it does.)"""
    url = sa.make_url(pg_url)
    cases = [
        (url.set(password="wrong"), "password authentication failed"),
        (url.set(database="no_such_database_here"), "does not exist"),
    ]
    for bad, says in cases:
        result = run_cli(bad.render_as_string(hide_password=False), "serve", "--port", "0")
        assert result.returncode == 2, result.stderr
        sentence = one_sentence(result.stderr)
        assert sentence.startswith("The database cannot be used") and says in sentence
        assert "wrong" not in sentence


def test_serve_refuses_at_once_only_what_waiting_will_not_mend(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """In process, with the revision's query failing as the driver would: a SQLSTATE or a
    server's text that says the credentials or the database are wrong exits 2 with one
    sentence; any other failure (a server not answering yet) is left to /healthz."""
    from enforcement import cli_service, schema_revisions

    class DriverError(Exception):
        def __init__(self, message: str, sqlstate: str | None = None) -> None:
            super().__init__(message)
            self.sqlstate = sqlstate

    def failing(error: DriverError) -> Callable[..., str]:
        def current_revision(url: str, connect_timeout: int | None = None) -> str:
            raise sa.exc.OperationalError("SELECT", {}, error)

        return current_revision

    refused = [DriverError("refused", sqlstate) for sqlstate in ("28P01", "28000", "3D000")] + [
        DriverError(f"FATAL:  {text}")
        for text in (
            'password authentication failed for user "u"',
            'database "enforcement" does not exist',
            'no pg_hba.conf entry for host "10.0.0.9", user "u", database "enforcement"',
            "no password supplied",
            'permission denied for database "enforcement"',
            'role "u" is not permitted to log in',
        )
    ]
    for error in refused:
        monkeypatch.setattr(schema_revisions, "current_revision", failing(error))
        with pytest.raises(SystemExit) as exit:
            cli_service._check_schema("postgresql+psycopg://u:secret@db.example/enforcement")
        assert exit.value.code == 2, error
        sentence = one_sentence(capsys.readouterr().err)
        assert sentence.startswith("The database cannot be used") and str(error) in sentence
    for error in (DriverError("connection refused"), DriverError("timeout", sqlstate="08006")):
        monkeypatch.setattr(schema_revisions, "current_revision", failing(error))
        cli_service._check_schema("postgresql+psycopg://u:secret@db.example/enforcement")
        assert capsys.readouterr().err == ""


def test_worker_refuses_a_bad_policy_file_with_one_sentence(
    sqlite_url: str, tmp_path: Path
) -> None:
    """As ``serve`` does, before any worker process starts (each would print a traceback)."""
    policy = tmp_path / "policy.toml"
    policy.write_text('remediation_windo = "1d"\n')
    result = run_cli(
        sqlite_url,
        "worker",
        env={
            "ENFORCEMENT_POLICY_FILE": str(policy),
            "ENFORCEMENT_REDIS_URL": "redis://127.0.0.1:1/0",
        },
    )
    assert result.returncode == 2
    sentence = one_sentence(result.stderr)
    assert sentence.startswith("The policy file cannot be used") and "remediation_windo" in sentence


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("ENFORCEMENT_DATABASE_URL", "notaurl", "is not a database URL"),
        ("ENFORCEMENT_DATABASE_URL", "postgresql+psycopg://u@h:notaport/db", "not a database URL"),
        ("ENFORCEMENT_DATABASE_URL", "mysql://u@h/db", "must be a sqlite:/// or postgresql"),
        ("ENFORCEMENT_DATABASE_URL", "postgresql+pg8000://u@h/db", "not installed"),
        ("ENFORCEMENT_REDIS_URL", "localhost:6379", "must be a redis://"),
    ],
)
def test_a_configuration_url_that_cannot_be_used_is_one_sentence_and_exit_2(
    sqlite_url: str, variable: str, value: str, says: str
) -> None:
    """Not a traceback (a malformed URL raised from deep in SQLAlchemy or redis-py)."""
    for args in (("standing", "acct_1"), ("serve", "--port", "1")):
        result = run_cli(sqlite_url, *args, env={variable: value})
        assert result.returncode == 2, (args, result.stderr)
        sentence = one_sentence(result.stderr)
        assert sentence.startswith("Configuration error: ") and says in sentence, sentence


def test_tokens_create_prints_the_token_last_and_stores_only_its_hash(
    populated: Populated,
) -> None:
    result = run_cli(populated.url, "tokens", "create", "--role", "auditor", "--name", "alice")

    assert result.returncode == 0, result.stderr
    token = result.stdout.strip().splitlines()[-1]
    assert token.startswith("enf_") and " " not in token
    with populated.container.engine.connect() as conn:
        rows = conn.execute(sa.select(api_tokens)).mappings().all()
    assert len(rows) == 1
    row = rows[0]
    assert result.stdout.startswith(f"Created an auditor token for 'alice' ({row['token_id']}).")
    assert (row["name"], row["role"]) == ("alice", "auditor")
    assert row["token_hash"] == hashlib.sha256(token.encode()).hexdigest()
    assert token not in json.dumps({k: str(v) for k, v in row.items()})
    principal = TokenAuthenticator(populated.container.engine).authenticate(token)
    assert principal is not None and principal.role is Role.AUDITOR


def test_tokens_are_listed_without_secrets_and_a_revoked_one_stops_working(
    populated: Populated,
) -> None:
    """An operator can see who holds tokens and revoke a leaked one by its id."""
    engine = populated.container.engine
    created = {}
    # Names are shown as written: never read as Rich markup, nor escaped to ASCII in JSON; and
    # the sentences stay plain text on a colour terminal (FORCE_COLOR).
    colour = {"FORCE_COLOR": "1"}
    for role, name in (("reporter", "mail-classifier [bot]"), ("auditor", "audit ✓")):
        args = ("tokens", "create", "--role", role, "--name", name)
        result = run_cli(populated.url, *args, env=colour)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"Created {'a' if role == 'reporter' else 'an'} {role} ")
        assert f" token for {name!r} (tok_" in result.stdout
        created[name] = result.stdout.strip().splitlines()[-1]

    listed = run_cli(populated.url, "tokens", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    tokens = json.loads(listed.stdout)
    assert listed.stdout == json.dumps(tokens, indent=2, ensure_ascii=False) + "\n"
    assert [(t["name"], t["role"]) for t in tokens] == [
        ("mail-classifier [bot]", "reporter"),
        ("audit ✓", "auditor"),
    ]
    assert all(set(t) == {"token_id", "name", "role", "created_at"} for t in tokens)
    assert all(secret not in listed.stdout for secret in created.values())
    assert "token_hash" not in listed.stdout
    table = run_cli(populated.url, "tokens", "list")
    assert table.returncode == 0 and "2 token(s)" in table.stdout
    assert re.search(r"\bid\W+name\W+role\W+created\b", table.stdout), table.stdout
    for t in tokens:
        row = rf"{t['token_id']}\W+{re.escape(t['name'])}\W+{t['role']}\W+{t['created_at']}"
        assert re.search(row, table.stdout), table.stdout

    leaked = tokens[0]["token_id"]
    revoked = run_cli(populated.url, "tokens", "revoke", leaked, env=colour)
    assert revoked.returncode == 0, revoked.stderr
    assert revoked.stdout.strip() == (
        f"Revoked {leaked} (reporter token for 'mail-classifier [bot]'); it stops working within "
        "30 seconds."
    )
    assert TokenAuthenticator(engine).authenticate(created["mail-classifier [bot]"]) is None
    assert TokenAuthenticator(engine).authenticate(created["audit ✓"]) is not None
    again = run_cli(populated.url, "tokens", "revoke", leaked)
    assert again.returncode == 2
    assert one_sentence(again.stderr) == (
        f"There is no token '{leaked}' (never created, or revoked already); "
        "`enforcement tokens list` shows those in force."
    )


def test_tokens_create_refuses_an_unknown_role(populated: Populated) -> None:
    result = run_cli(populated.url, "tokens", "create", "--role", "root", "--name", "x")

    assert result.returncode == 2
    assert one_sentence(result.stderr) == (  # the roles of CONTRACT.md's table
        "Unknown role 'root'; choose one of reporter, operator, auditor, gateway, admin."
    )
    with populated.container.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(api_tokens)).scalar() == 0


# ------------------------------------------------------------------ standing and history


def test_standing_as_a_table_and_as_json(populated: Populated, invoke: Any) -> None:
    table = invoke(populated.url, "standing", "acct_a")
    as_json = invoke(populated.url, "standing", "acct_a", "--json")
    then = invoke(
        populated.url,
        "standing",
        "acct_a",
        "--json",
        "--as-of",
        format_time(T0 + timedelta(hours=1)),
    )
    never = invoke(populated.url, "standing", "acct_none", "--json")

    assert table.exit_code == 0, table.output
    assert "Standing of acct_a" in table.stdout
    assert "suspended" in table.stdout
    body = json.loads(as_json.stdout)
    # The CLI reads at the real now; the fixture's clock stands in the past.
    expected = populated.container.service.standing("acct_a", datetime.now(UTC)).to_json()
    assert {k: v for k, v in body.items() if k != "as_of"} == {
        k: v for k, v in expected.items() if k != "as_of"
    }
    assert body["status"] == "suspended"
    past = json.loads(then.stdout)
    assert (past["status"], past["strikes"], past["version"]) == ("remediation_due", 1, 3)
    assert past["as_of"] == format_time(T0 + timedelta(hours=1))
    assert json.loads(never.stdout)["version"] == 0


def test_the_standing_table_shows_text_as_written(populated: Populated, invoke: Any) -> None:
    populated.container.service.operator("acct_d", Suspend("Prüfung: Verstoß §2 ✓"), ACTOR)

    table = invoke(populated.url, "standing", "acct_d")

    assert table.exit_code == 0, table.output
    assert "Prüfung: Verstoß §2 ✓" in table.stdout


def test_history_as_a_table_json_and_csv(populated: Populated, invoke: Any) -> None:
    stored = populated.events("acct_a")

    table = invoke(populated.url, "history", "acct_a")
    as_json = invoke(populated.url, "history", "acct_a", "--format", "json")
    as_csv = invoke(populated.url, "history", "acct_a", "--format", "csv")
    early = invoke(
        populated.url,
        "history",
        "acct_a",
        "--format",
        "json",
        "--as-of",
        format_time(T0 + timedelta(hours=12)),
    )

    assert table.exit_code == 0, table.output
    assert table.stdout.split()[:3] == ["History", "of", "acct_a"]  # a table, not CSV
    for event in stored:
        assert event["type"] in table.stdout
    assert "aup-2026-11" in table.stdout
    entries = json.loads(as_json.stdout)
    assert isinstance(entries, list) and len(entries) == len(stored)
    for entry, event in zip(entries, stored, strict=True):
        assert set(entry) == API_EVENT_KEYS | {"change"}
        assert {k: v for k, v in entry.items() if k != "change"} == event
        assert isinstance(entry["change"], dict)
    assert entries[0]["change"]["strikes"] == {"from": 0, "to": 1}
    suspended = next(
        e
        for e in entries
        if e["type"] == "AccountSuspended" and e["metadata"]["actor"] == ACTOR.name
    )
    assert suspended["change"]["status"]["to"] == "suspended"
    rows = list(csv.reader(io.StringIO(as_csv.stdout)))
    assert rows[0][:4] == ["version", "position", "recorded_at", "type"]
    assert [r[3] for r in rows[1:]] == [e["type"] for e in stored]
    assert [r[rows[0].index("hash")] for r in rows[1:]] == [e["hash"] for e in stored]
    assert [e["version"] for e in json.loads(early.stdout)] == [
        e["version"] for e in stored if e["recorded_at"] <= format_time(T0 + timedelta(hours=12))
    ]
    assert len(json.loads(early.stdout)) == 3


# ------------------------------------------------------------------ verify


FORGED = {"data": {"violation_id": "vio_forged", "category": "spam"}}


def tamper(
    populated: Populated, account_id: str, version: int, values: dict[str, Any] = FORGED
) -> None:
    """What someone with database access might do: drop the guard, edit a recorded event
    (``values`` by column name: by default, a forged payload)."""
    engine = populated.container.engine
    with engine.begin() as conn:
        for statement in drop_append_only_ddl(engine.dialect.name):
            conn.exec_driver_sql(statement)
        conn.execute(
            events_table.update()
            .where(events_table.c.account_id == account_id, events_table.c.version == version)
            .values(values)
        )


def failed_in_one_sentence(result: subprocess.CompletedProcess[str], args: Any) -> str:
    """The last line of a command that failed with exit 2 and no traceback (a progress bar
    may come before it on stderr)."""
    assert result.returncode == 2, (args, result.stderr)
    assert "Traceback" not in result.stderr, args
    return result.stderr.strip().splitlines()[-1]


def test_verify_exits_0_when_intact_and_1_after_tampering(
    populated: Populated, invoke: Any
) -> None:
    intact = run_cli(populated.url, "verify")
    one = invoke(populated.url, "verify", "acct_b", "--json")

    tamper(populated, "acct_a", 2)
    broken = run_cli(populated.url, "verify")
    broken_json = invoke(populated.url, "verify", "acct_a", "--json")
    other = invoke(populated.url, "verify", "acct_b")

    assert intact.returncode == 0, intact.stdout + intact.stderr
    checked = f"account(s) intact, {len(populated.events())} events checked."
    assert f"3 of 3 {checked}" in intact.stdout
    # A pass over every account shows its progress on stderr; one account's shows none.
    assert "verifying" in intact.stderr and "3/3" in intact.stderr, intact.stderr
    assert "accounts/s" in intact.stderr, intact.stderr
    assert (one.stderr, other.stderr) == ("", "")
    assert one.exit_code == 0
    assert one.stdout == json.dumps(json.loads(one.stdout), indent=2) + "\n"  # for a reader
    assert json.loads(one.stdout) == {
        "account_id": "acct_b",
        "ok": True,
        "events": len(populated.events("acct_b")),
        "head_hash": populated.events("acct_b")[-1]["hash"],
    }
    assert broken.returncode == 1
    assert "BROKEN acct_a at version 2" in broken.stdout
    # A broken chain is checked up to its break.
    results = json.loads(invoke(populated.url, "verify", "--json").stdout)
    checked = f"account(s) intact, {sum(r['events'] for r in results)} events checked."
    assert f"2 of 3 {checked}" in broken.stdout
    result = json.loads(broken_json.stdout)
    assert f"BROKEN acct_a at version 2: {result['reason']}\n" in broken.stdout
    assert (result["ok"], result["broken_at_version"]) == (False, 2)
    assert broken_json.exit_code == 1
    assert other.exit_code == 0
    acct_b = len(populated.events("acct_b"))
    assert other.stdout == f"1 of 1 account(s) intact, {acct_b} events checked.\n"
    nobody = invoke(populated.url, "verify", "acct_nobody")
    assert nobody.exit_code == 0
    assert nobody.stdout.strip() == "acct_nobody has no events: nothing to verify."
    # An account id is printed as it is: in ``tenant:ok:42`` (the contract's alphabet has ":"),
    # ``:ok:`` is no emoji code.
    named = run_cli(populated.url, "verify", "tenant:ok:42")
    assert named.stdout.strip() == "tenant:ok:42 has no events: nothing to verify."


def test_python_m_enforcement_is_the_same_command(populated: Populated, invoke: Any) -> None:
    """CONTRACT.md, "CLI": ``enforcement`` is also ``python -m enforcement``, with its output
    and its exit codes (0, 1 when a check failed, 2 for a usage error)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENFORCEMENT_")}
    env["ENFORCEMENT_DATABASE_URL"] = populated.url

    def module(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "enforcement", *args],
            env=env,
            cwd=Path(__file__).resolve().parents[2],  # this checkout's package
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    intact = module("verify", "acct_b", "--json")
    tamper(populated, "acct_a", 2)
    broken = module("verify", "acct_a")
    usage = module("history", "acct_a", "--format", "xml")

    assert intact.returncode == 0, intact.stderr
    assert json.loads(intact.stdout) == json.loads(
        invoke(populated.url, "verify", "acct_b", "--json").stdout
    )
    assert broken.returncode == 1, broken.stderr
    assert "BROKEN acct_a at version 2" in broken.stdout
    assert usage.returncode == 2
    assert one_sentence(usage.stderr) == "Unknown format 'xml'; choose table, json or csv."


def test_output_that_cannot_be_written_is_one_sentence_and_exit_2_not_1(
    populated: Populated,
) -> None:
    """Exit 1 says a check failed: ``verify > report.txt`` on a full disk found no broken
    chain, and no command's write error is a traceback."""
    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENFORCEMENT_")}
    env.update({"ENFORCEMENT_DATABASE_URL": populated.url, "COLUMNS": "200"})
    for args in [
        ("verify",),
        ("verify", "acct_a", "--json"),
        ("standing", "acct_a", "--json"),
        ("history", "acct_a", "--format", "csv"),
        ("export", "--format", "jsonl"),
    ]:
        with open("/dev/full", "w") as full:
            result = subprocess.run(
                [CLI, *args], env=env, stdout=full, stderr=subprocess.PIPE, text=True, timeout=120
            )
        last = failed_in_one_sentence(result, args)
        assert last == "Could not write the output: No space left on device.", args


def test_an_event_of_a_newer_schema_is_one_sentence_not_a_traceback(
    populated: Populated,
) -> None:
    """docs/operations.md, "Upgrades": an older release refuses an event a newer one recorded
    ("newer than this code"); its CLI says so in one sentence, exit 2."""
    tamper(populated, "acct_a", 1, {"schema_version": 99})
    for args in [
        ("history", "acct_a"),
        ("standing", "acct_a", "--as-of", format_time(T0 + timedelta(days=3))),
        ("replay", "--account", "acct_a"),
    ]:
        last = failed_in_one_sentence(run_cli(populated.url, *args), args)
        assert last == (
            "The log cannot be read by this release: ViolationReported schema version 99 is "
            "newer than this code's 1."
        ), args


def test_an_event_damaged_past_decoding_is_one_sentence_not_a_traceback(
    populated: Populated,
) -> None:
    """Someone with database access broke an event's shape: ``verify`` says where (exit 1),
    and the commands that read it say in one sentence, exit 2 (not 1, which says a check
    failed), instead of a traceback."""
    tamper(populated, "acct_a", 2, {"metadata": []})
    assert run_cli(populated.url, "verify", "acct_a").returncode == 1
    for args in [("history", "acct_a"), ("history", "acct_a", "--format", "csv")]:
        last = failed_in_one_sentence(run_cli(populated.url, *args), args)
        assert last.startswith("The command failed ("), (args, last)
        assert last.endswith("ENFORCEMENT_TRACEBACK=1 shows where it failed."), args
    shown = run_cli(populated.url, "history", "acct_a", env={"ENFORCEMENT_TRACEBACK": "1"})
    assert shown.returncode == 1  # Python's own traceback, not Typer's boxed one
    assert shown.stderr.startswith("Traceback (most recent call last):\n"), shown.stderr


# ------------------------------------------------------------------ replay


def standing_rows(populated: Populated) -> list[tuple[str, int, Any]]:
    with populated.container.engine.connect() as conn:
        rows = conn.execute(
            sa.select(standings.c.account_id, standings.c.version, standings.c.state).order_by(
                standings.c.account_id
            )
        )
        return [(r.account_id, r.version, r.state) for r in rows]


def test_init_rebuilds_the_standings_an_earlier_release_stored(
    populated: Populated, invoke: Any
) -> None:
    before = standing_rows(populated)
    quiet = invoke(populated.url, "init")
    with populated.container.engine.begin() as conn:
        for account, schema in (("acct_a", -1), ("acct_b", "x")):  # an older one; any value
            head = conn.execute(
                sa.select(standings.c.state).where(standings.c.account_id == account)
            ).scalar_one()
            older = {**head, "schema": head["schema"] + schema if schema == -1 else schema}
            conn.execute(
                standings.update().where(standings.c.account_id == account).values(state=older)
            )
    # Only the database: a migration job may have no policy file.
    rebuilt = run_cli(populated.url, "init", env={"ENFORCEMENT_POLICY_FILE": "/nonexistent.toml"})
    again = invoke(populated.url, "init")

    assert quiet.exit_code == again.exit_code == rebuilt.returncode == 0, rebuilt.stderr
    assert "rebuilding" not in quiet.stdout
    assert "2 stored standing(s) are of an earlier release's shape" in rebuilt.stdout
    assert "Rebuilt 3 standing(s)" in rebuilt.stdout
    assert standing_rows(populated) == before
    assert "rebuilding" not in again.stdout


def test_replay_rebuilds_the_stored_standings(populated: Populated, invoke: Any) -> None:
    before = standing_rows(populated)
    with populated.container.engine.begin() as conn:
        conn.execute(standings.delete())
        conn.execute(
            standings.insert().values(account_id="acct_a", version=1, state={}, updated_at=T0)
        )
        # A row of no stream (no append writes one: say, the log was restored alone).
        ghost = {"account_id": "acct_ghost", "version": 4, "state": {}, "updated_at": T0}
        conn.execute(standings.insert().values(**ghost))

    every = invoke(populated.url, "replay")
    after_every = standing_rows(populated)
    with populated.container.engine.begin() as conn:
        conn.execute(standings.delete().where(standings.c.account_id == "acct_b"))
    one = invoke(populated.url, "replay", "--account", "acct_b")

    assert [r[0] for r in before] == ["acct_a", "acct_b", "acct_c"]
    assert every.exit_code == 0, every.output
    assert "Rebuilt 3 standing(s)" in every.stdout
    assert "events/s" in every.stdout
    assert after_every == before
    assert one.exit_code == 0, one.output
    assert "Rebuilt 1 standing(s)" in one.stdout
    assert standing_rows(populated) == before
    nobody = invoke(populated.url, "replay", "--account", "acct_nobody")
    assert nobody.exit_code == 0, nobody.output
    assert nobody.stdout.strip().endswith("acct_nobody has no events: nothing to replay.")
    assert standing_rows(populated) == before


# ------------------------------------------------------------------ export


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_export_jsonl_with_filters(populated: Populated, invoke: Any, tmp_path: Path) -> None:
    everything = populated.events()
    day1 = format_time(T0 + timedelta(days=1))
    out = tmp_path / "events.jsonl"

    whole = invoke(populated.url, "export", "--format", "jsonl", "-o", str(out))
    exported = read_lines(out)
    invoke(
        populated.url,
        "export",
        "--format",
        "jsonl",
        "--since",
        day1,
        "--until",
        format_time(T0 + timedelta(days=1, hours=1)),
        "-o",
        str(out),
    )
    window = read_lines(out)
    invoke(
        populated.url, "export", "--format", "jsonl", "--account", "acct_b", "--output", str(out)
    )
    only_b = read_lines(out)
    to_stdout = invoke(
        populated.url,
        "export",
        "--format",
        "jsonl",
        "--until",
        format_time(T0 + timedelta(hours=1)),
    )

    assert whole.exit_code == 0, whole.output
    assert whole.stdout == ""  # the note is on stderr: stdout is for data
    assert f"Wrote {len(everything)} line(s)" in whole.stderr
    assert exported == everything
    assert window == [
        e
        for e in everything
        if day1 <= e["recorded_at"] <= format_time(T0 + timedelta(days=1, hours=1))
    ]
    assert {e["account_id"] for e in window} == {"acct_a", "acct_b"}
    assert only_b == populated.events("acct_b")
    assert [json.loads(line) for line in to_stdout.stdout.splitlines()] == everything[:3]


def test_export_statements_of_reasons(populated: Populated, invoke: Any, tmp_path: Path) -> None:
    out = tmp_path / "sor.jsonl"
    decisions = [
        e
        for e in populated.events()
        if e["type"] in RESTRICTIVE and e["data"].get("statement_of_reasons")
    ]

    result = invoke(populated.url, "export", "--format", "sor", "-o", str(out))
    statements = read_lines(out)
    invoke(populated.url, "export", "--format", "sor", "--account", "acct_b", "-o", str(out))
    only_b = read_lines(out)

    assert result.exit_code == 0, result.output
    assert [s["uuid"] for s in statements] == [e["event_id"] for e in decisions]
    assert {
        "AccountTerminated",
        "AuthorityReferralOpened",
        "AccountSuspended",
        "ThrottleApplied",
        "RemediationRequested",
    } <= {s["decision_event_type"] for s in statements}
    for statement in statements:
        assert statement["policy_version"] == "aup-2026-11"
        assert statement["decision_ground"].startswith("AUP")
        if statement["automated_decision"]:
            assert statement["decision_ground"].startswith("AUP §")
        assert statement["redress"]
        assert isinstance(statement["automated_decision"], bool)
    operator = next(s for s in statements if s["decision_event_type"] == "AccountSuspended")
    assert operator["automated_decision"] is False
    assert {s["account_id"] for s in only_b} == {"acct_b"}
    assert len(only_b) == len([d for d in decisions if d["account_id"] == "acct_b"])
    # UTF-8 as is, as the jsonl lines: the automated decisions' "AUP §…" grounds, not "\u00a7".
    assert '"decision_ground": "AUP §' in out.read_text(encoding="utf-8")


def test_an_export_that_fails_leaves_the_earlier_file_as_it_was(
    populated: Populated, invoke: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``-o FILE`` is replaced only by a complete export: one cut off by a write error (a full
    disk) is one sentence and exit 2, with neither a partial file nor a clobbered earlier one."""
    import errno

    import enforcement.auditing

    exports = tmp_path / "exports"
    exports.mkdir()
    out = exports / "events.jsonl"
    first = invoke(populated.url, "export", "--format", "jsonl", "-o", str(out))
    earlier = out.read_bytes()
    real_lines = enforcement.auditing.export_lines

    def full_disk(*args: Any, **kwargs: Any) -> Iterator[str]:
        lines = real_lines(*args, **kwargs)
        yield next(lines)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(enforcement.auditing, "export_lines", full_disk)
    cut = invoke(populated.url, "export", "--format", "jsonl", "-o", str(out))
    fresh = exports / "fresh.jsonl"
    cut_new = invoke(populated.url, "export", "--format", "sor", "-o", str(fresh))

    assert first.exit_code == 0, first.output
    assert cut.exit_code == 2
    assert one_sentence(cut.stderr) == f"Cannot write {out}: No space left on device."
    assert out.read_bytes() == earlier
    assert cut_new.exit_code == 2
    assert not fresh.exists()
    assert [p.name for p in exports.iterdir()] == ["events.jsonl"]


def test_a_new_export_file_is_its_owners_alone(
    populated: Populated, invoke: Any, tmp_path: Path
) -> None:
    """An export holds what the database file (``0600``) holds: descriptions, a third party's
    ``reporter_contact``, operators' names. Under the usual umask (022) ``-o FILE`` made it
    readable by every user of the machine; a new file is now ``0600``, and a file that exists
    keeps its mode (the operator chose it)."""
    new, existing = tmp_path / "new.jsonl", tmp_path / "existing.jsonl"
    existing.write_text("")
    existing.chmod(0o640)
    previous = os.umask(0o022)
    try:
        for out in (new, existing):
            result = invoke(populated.url, "export", "--format", "jsonl", "-o", str(out))
            assert result.exit_code == 0, result.output
    finally:
        os.umask(previous)

    assert "spam from them" in new.read_text(encoding="utf-8")
    assert stat.S_IMODE(new.stat().st_mode) == 0o600
    assert stat.S_IMODE(existing.stat().st_mode) == 0o640


@contextlib.contextmanager
def device_kept(path: str) -> Iterator[None]:
    """Fails the test if what runs inside replaced the device at ``path`` (a command that wrote
    a device as a regular file, renaming its copy over it), after putting the device back: the
    tests run as root, and the machine's ``/dev/full`` is not the test's to lose."""
    device = os.stat(path)
    try:
        yield
    finally:
        if not stat.S_ISCHR(os.lstat(path).st_mode):
            os.remove(path)
            os.mknod(path, stat.S_IFCHR, device.st_rdev)
            os.chmod(path, stat.S_IMODE(device.st_mode))  # mknod's mode is cut by the umask
            pytest.fail(f"{path} was replaced by a file (now put back)")


def test_export_names_what_it_cannot_write_and_takes_a_window_of_one_instant(
    populated: Populated, invoke: Any, tmp_path: Path
) -> None:
    """A device is written as it is (``/dev/full``: the disk-full sentence), a path that cannot
    be created is one it cannot *use*; ``--since`` equal to ``--until`` is the events of that
    instant, not a usage error."""
    missing = tmp_path / "missing" / "events.jsonl"
    with device_kept("/dev/full"):
        full = invoke(populated.url, "export", "--format", "jsonl", "-o", "/dev/full")
    unusable = invoke(populated.url, "export", "--format", "jsonl", "-o", str(missing))
    instant = format_time(T0)
    window = invoke(
        populated.url, "export", "--format", "jsonl", "--since", instant, "--until", instant
    )

    assert full.exit_code == 2
    assert one_sentence(full.stderr) == "Cannot write /dev/full: No space left on device."
    assert unusable.exit_code == 2
    assert one_sentence(unusable.stderr) == f"Cannot use {missing}: No such file or directory."
    assert window.exit_code == 0, window.output
    exported = [json.loads(line) for line in window.stdout.splitlines()]
    assert exported == [e for e in populated.events() if e["recorded_at"] == instant]
    assert exported


IN_PROCESS_USAGE_ERRORS = [
    (("standing", "bad acct!"), "ACCOUNT must be an account id"),
    (("standing", "acct_a", "--as-of", "yesterday"), "--as-of must be an RFC 3339 time"),
    (("history", "a" * 129), "ACCOUNT must be an account id"),
    (("history", "acct_a", "--as-of", "2026-03-02T09:00:00"), "--as-of must be an RFC 3339"),
    (("history", "acct_a", "--format", "xml"), "Unknown format 'xml'; choose table, json or csv."),
    (("verify", "acct a"), "ACCOUNT must be an account id"),
    (("replay", "--account", "acct/a"), "--account must be an account id"),
    (("export", "--format", "pdf"), "Unknown format 'pdf'; choose jsonl or sor."),
    (("export", "--format", "jsonl", "--account", ""), "--account must be an account id"),
    (("export", "--format", "jsonl", "--since", "soon"), "--since must be an RFC 3339 time"),
    (("export", "--format", "jsonl", "--until", "soon"), "--until must be an RFC 3339 time"),
    (
        ("export", "--format", "jsonl", "--since", "2016-12-31T23:59:60Z"),
        "--since must not be a leap second (:60): the log has no such time;",
    ),
    (
        (
            "export",
            "--format",
            "sor",
            "--since",
            "2026-03-04T00:00:00Z",
            "--until",
            "2026-03-03T00:00:00Z",
        ),
        "--since must not be later than --until.",
    ),
]


def test_the_auditors_usage_errors_name_the_argument(populated: Populated, invoke: Any) -> None:
    """On a database that holds the accounts (a refusal, not an empty answer): exit 2, nothing
    on stdout, one sentence naming what was wrong."""
    for args, sentence in IN_PROCESS_USAGE_ERRORS:
        result = invoke(populated.url, *args)
        assert (result.exit_code, result.stdout) == (2, ""), args
        assert one_sentence(result.stderr).startswith(sentence), args


# ------------------------------------------------------------------ usage errors


USAGE_ERRORS = [
    ("standing", "acct_a", "--colour"),
    ("standing", "acct_a", "--as-of", "yesterday"),
    ("history", "acct_a", "--as-of", "2026-03-02T09:00:00"),
    ("history", "acct_a", "--format", "xml"),
    ("export", "--format", "pdf"),
    ("export", "--format", "jsonl", "--since", "soon"),
    ("verify", "acct_a", "extra"),
    ("tokens", "create", "--role", "admin"),
    ("frobnicate",),
    # An account id the contract does not allow (a typo found nothing, and said so with exit 0).
    ("standing", "bad acct!"),
    ("history", "a" * 129),
    ("verify", "acct a"),
    ("replay", "--account", "acct/a"),
    ("backup",),
    ("backup", "copy.db", "--force"),
    ("restore",),
    ("restore", "copy.db", "--force"),
    ("export", "--format", "jsonl", "--account", ""),
    (
        "export",
        "--format",
        "jsonl",
        "--since",
        "2026-12-05T00:00:00Z",
        "--until",
        "2026-12-04T00:00:00Z",
    ),
]


# Also run as the installed command, each in a process of its own: an unknown option, an unknown
# command, a value refused by a command, a missing argument.
IN_OWN_PROCESS = [
    ("standing", "acct_a", "--colour"),
    ("frobnicate",),
    ("standing", "bad acct!"),
    ("backup",),
]


def test_usage_errors_exit_2_with_one_sentence(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Through the console entry point (``main``) in this process, and those of
    ``IN_OWN_PROCESS`` also as the command an operator types (a process is about 0.6 s of CPU,
    nearly all imports)."""
    assert set(IN_OWN_PROCESS) <= set(USAGE_ERRORS)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENFORCEMENT_")}
    env["ENFORCEMENT_DATABASE_URL"] = sqlite_url
    procs = [
        subprocess.Popen(
            [CLI, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for args in IN_OWN_PROCESS
    ]  # in parallel: each is a fresh interpreter
    for args, proc in zip(IN_OWN_PROCESS, procs, strict=True):
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 2, (args, stdout, stderr)
        one_sentence(stderr)
        assert stdout == "", args

    only_the_database(monkeypatch, sqlite_url)  # as for the processes
    for args in USAGE_ERRORS:
        monkeypatch.setattr(sys, "argv", [CLI, *args])
        with pytest.raises(SystemExit) as exited:
            cli_main()
        stdout, stderr = capsys.readouterr()
        assert exited.value.code == 2, (args, stdout, stderr)
        one_sentence(stderr)
        assert stdout == "", args
