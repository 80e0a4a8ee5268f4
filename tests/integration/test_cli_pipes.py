"""The CLI in a pipeline whose reader stops early (``enforcement export | head -1``), and what
goes to stdout and what to stderr: the installed console script on a populated SQLite file.

A reader that closes the pipe is ordinary Unix use: the command stops quietly, as ``cat`` and
``git log`` do, ended by SIGPIPE (status 141 in a shell). Never exit 1, which says that a check
failed (``verify``: a broken chain), nor 0, which would say the output was written whole.
"""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from enforcement.bootstrap import bootstrap
from enforcement.migrations import upgrade
from enforcement.policy import ViolationReport
from enforcement.roles import Role
from enforcement.service import Actor
from enforcement.settings import Settings
from enforcement.tokens import issue_token
from events.dialects import drop_append_only_ddl
from events.schema import events as events_table

ROOT = Path(__file__).resolve().parents[2]
CLI = str(Path(sys.executable).with_name("enforcement"))
ACTOR = Actor(name="admin:pipe-test", correlation_id="pipe-test")
BIG = "acct_big"  # an account whose history is several pipes long (a pipe holds 64 KiB)
ACCOUNTS = 1000  # so that `verify --json` (~150 kB) and the exports (MB) are too
PERIOD = ("--since", "2000-01-01T00:00:00Z", "--until", "2100-01-01T00:00:00Z")
SIGPIPE_STATUS = 128 + signal.SIGPIPE  # a shell's status for a command SIGPIPE ended
PROGRESS = ("verifying", "replaying", "copying", "exporting")  # the progress bars' lines on stderr


def environment(url: str) -> dict[str, str]:
    """The console script's environment: this checkout's code (not the installed one's), and
    no ``PYTHONUNBUFFERED``: with it CPython's stdout takes a write that the pipe accepted only
    in part (its reader left midway) as complete, so a command whose last write is the one cut
    off sees no error."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("ENFORCEMENT_") and k != "PYTHONUNBUFFERED"
    }
    env.update(
        {
            "ENFORCEMENT_DATABASE_URL": url,
            "COLUMNS": "200",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
        }
    )
    return env


def report(url: str, accounts: list[str]) -> None:
    container = bootstrap(Settings(database_url=url))
    for account in accounts:
        violation = ViolationReport(
            category="spam", occurred_at=container.clock(), description="bulk mail " * 20
        )
        container.service.report_violation(account, violation, ACTOR)
    container.close()


@pytest.fixture(scope="module")
def populated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A SQLite file whose long listings are several pipes long."""
    url = f"sqlite:///{tmp_path_factory.mktemp('pipes') / 'enforcement.db'}"
    upgrade(url)
    report(url, [f"acct_{i}" for i in range(ACCOUNTS)] + [BIG] * 600)
    container = bootstrap(Settings(database_url=url))
    issue_token(container.engine, Role.AUDITOR, "pipe test")
    container.close()
    yield url


def through_head(url: str, args: tuple[str, ...]) -> subprocess.Popen[str]:
    """``enforcement ARGS | head -1`` in bash with ``pipefail``: its status is the command's."""
    return subprocess.Popen(
        ["bash", "-c", 'set -o pipefail; "$0" "$@" | head -1', CLI, *args],
        env=environment(url),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# Commands whose output runs on for several pipes: `head -1` leaves after the first line.
LONG = [
    ("export", "--format", "jsonl"),
    ("export", "--format", "sor"),
    ("export", "--format", "jsonl", "-o", "/dev/stdout"),
    ("history", BIG, "--format", "json"),
    ("history", BIG, "--format", "csv"),
    ("history", BIG),
    ("verify", "--json"),
]


def test_a_reader_that_stops_early_ends_the_command_quietly_not_with_exit_1(
    populated: str,
) -> None:
    runs = [(args, through_head(populated, args)) for args in LONG]  # in parallel

    for args, proc in runs:
        stdout, stderr = proc.communicate(timeout=120)
        assert (proc.returncode, stderr) == (SIGPIPE_STATUS, ""), args
        assert stdout.count("\n") == 1, args
        if args[0] == "export":
            assert json.loads(stdout)  # the first line, whole


def with_reader_gone(
    url: str, args: tuple[str, ...], preexec_fn: Callable[[], object] | None = None
) -> subprocess.Popen[str]:
    """``args`` with stdout a pipe whose reader has gone before the command starts."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.Popen(
            [CLI, *args],
            env=environment(url),
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=preexec_fn,
        )
    finally:
        os.close(write)


def errors_in(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if not line.startswith(PROGRESS)]


def test_every_command_whose_reader_is_gone_ends_by_sigpipe_with_nothing_on_stderr(
    populated: str, tmp_path: Path
) -> None:
    """Short outputs too, which reach the pipe only at the end (buffered)."""
    policy = tmp_path / "strict.toml"
    policy.write_text('version = "strict"\ntermination_after_strikes = 1\n')
    commands = [
        ("export", "--format", "jsonl", "--account", "acct_1"),
        ("export", "--format", "sor", "--account", "acct_1", "-o", "/dev/stdout"),
        ("history", "acct_1"),
        ("history", "acct_1", "--format", "json"),
        ("standing", "acct_1"),
        ("standing", "acct_1", "--json"),
        ("verify",),
        ("verify", "acct_1"),
        ("tokens", "list"),
        ("tokens", "list", "--json"),
        ("tokens", "create", "--role", "auditor", "--name", "piped"),
        ("report", *PERIOD),
        ("report", *PERIOD, "--format", "csv"),
        ("whatif", "--policy", str(policy), "--json"),
        ("whatif", "--policy", str(policy), "--limit", "1"),
        ("replay", "--account", "acct_1"),
        ("init",),
        ("backup", str(tmp_path / "piped.db")),  # its copy made, only its summary unread
        ("--help",),  # printed by Typer's own console
        ("export", "--help"),
    ]
    runs = []
    for start in range(0, len(commands), 8):  # eight at a time: each is an interpreter
        batch = [(args, with_reader_gone(populated, args)) for args in commands[start : start + 8]]
        for args, proc in batch:
            _, stderr = proc.communicate(timeout=120)
            runs.append((args, proc.returncode, errors_in(stderr)))

    assert [r for r in runs if r[1:] != (-signal.SIGPIPE, [])] == []


def test_a_command_started_with_sigpipe_blocked_is_still_ended_by_it(populated: str) -> None:
    """A signal mask is inherited (a supervisor may have blocked SIGPIPE): the command unblocks
    it, instead of exiting 141 as if it had been ended by it."""
    cut = with_reader_gone(
        populated,
        ("history", "acct_1"),
        preexec_fn=lambda: signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGPIPE}),
    )
    _, stderr = cut.communicate(timeout=120)

    assert (cut.returncode, errors_in(stderr)) == (-signal.SIGPIPE, [])


def test_verify_of_a_broken_chain_whose_reader_left_does_not_say_intact(
    sqlite_url: str,
) -> None:
    """Ended by SIGPIPE as any command whose reader left: not exit 0, which says intact,
    although the break it found was never read."""
    upgrade(sqlite_url)
    report(sqlite_url, ["acct_a", "acct_b"])
    container = bootstrap(Settings(database_url=sqlite_url))
    with container.engine.begin() as conn:
        for statement in drop_append_only_ddl(container.engine.dialect.name):
            conn.exec_driver_sql(statement)
        conn.execute(
            events_table.update()
            .where(events_table.c.account_id == "acct_a", events_table.c.version == 1)
            .values(data={"violation_id": "vio_forged", "category": "spam"})
        )
    container.close()

    read_whole = subprocess.run(
        [CLI, "verify"], env=environment(sqlite_url), capture_output=True, text=True, timeout=120
    )
    cut = with_reader_gone(sqlite_url, ("verify",))
    _, stderr = cut.communicate(timeout=120)

    assert read_whole.returncode == 1
    assert "BROKEN acct_a at version 1" in read_whole.stdout
    assert (cut.returncode, errors_in(stderr)) == (-signal.SIGPIPE, [])


def test_export_to_a_file_says_so_on_stderr_so_that_stdout_stays_data(
    populated: str, tmp_path: Path
) -> None:
    env = environment(populated)
    out = tmp_path / "sor.jsonl"
    args = ("export", "--format", "sor", "--account", "acct_1")

    to_file = subprocess.run(
        [CLI, *args, "-o", str(out)], env=env, capture_output=True, text=True, timeout=120
    )
    to_stdout = subprocess.run(
        [CLI, *args, "-o", "/dev/stdout"], env=env, capture_output=True, text=True, timeout=120
    )

    lines = out.read_text(encoding="utf-8").splitlines()
    assert (to_file.returncode, to_file.stdout) == (0, "")
    assert to_file.stderr == f"Wrote {len(lines)} line(s) to {out}.\n"
    assert to_stdout.returncode == 0
    assert to_stdout.stdout.splitlines() == lines  # the lines alone
    assert to_stdout.stderr == f"Wrote {len(lines)} line(s) to /dev/stdout.\n"


def test_exporting_the_whole_log_shows_its_progress_on_stderr_never_in_the_data(
    populated: str, tmp_path: Path
) -> None:
    """The whole log's export took minutes on a large deployment with nothing shown."""
    env = environment(populated)
    out = tmp_path / "log.jsonl"
    args = ("export", "--format", "jsonl")
    to_file = subprocess.run(
        [CLI, *args, "-o", str(out)], env=env, capture_output=True, text=True, timeout=120
    )
    piped = subprocess.run([CLI, *args], env=env, capture_output=True, text=True, timeout=120)

    events = len(out.read_text(encoding="utf-8").splitlines())
    assert events > ACCOUNTS
    for done in (to_file, piped):
        assert done.returncode == 0, done.stderr
    bar = [line for line in to_file.stderr.splitlines() if line.startswith("exporting")]
    assert len(bar) == 1 and f"{events}/{events}" in bar[0], to_file.stderr
    assert " events/s" in bar[0], bar[0]  # its speed, in what it counts
    # The lines on stdout and stderr not a terminal: perhaps the same file as the data
    # (``export > log.jsonl 2>&1``), which a bar's line would break.
    assert piped.stderr == ""
    assert to_file.stdout == ""
    assert piped.stdout.splitlines() == out.read_text(encoding="utf-8").splitlines()


def test_exporting_to_stdout_shows_its_progress_on_a_terminal_that_stderr_is(
    populated: str, tmp_path: Path
) -> None:
    """``export > log.jsonl`` typed in a terminal: the bar is drawn there, the data is not."""
    main, terminal = pty.openpty()
    out = tmp_path / "log.jsonl"
    drawn = b""
    try:
        with out.open("wb") as data:
            child = subprocess.Popen(
                [CLI, "export", "--format", "jsonl"],
                env=environment(populated),
                stdout=data,
                stderr=terminal,
            )
        os.close(terminal)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # read as it draws: a full terminal would block it
            if select.select([main], [], [], 0.2)[0]:
                try:
                    chunk = os.read(main, 65536)
                except OSError:  # every writer closed its end: all was read
                    chunk = b""
                drawn += chunk
                if chunk:
                    continue
            if child.poll() is not None:
                break
        assert child.wait(timeout=5) == 0
    finally:
        if child.poll() is None:
            child.kill()
        os.close(main)
    lines = out.read_bytes().splitlines()
    assert len(lines) > ACCOUNTS, drawn[-800:]
    assert b"exporting" in drawn and f"{len(lines)}/{len(lines)}".encode() in drawn, drawn[-500:]
    assert not any(b"exporting" in line for line in lines)


def test_an_error_nobody_reads_still_exits_2(populated: str) -> None:
    """A usage error with stderr's reader gone (``2>&1 | true``): its status says it, not 1
    (Rich's own answer to the closed pipe), nor SIGPIPE's."""
    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run(
            [CLI, "standing", "bad acct!"],
            env=environment(populated),
            stdout=subprocess.PIPE,
            stderr=write,
            timeout=120,
        )
    finally:
        os.close(write)

    assert (proc.returncode, proc.stdout) == (2, b"")
