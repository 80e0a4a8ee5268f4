"""``enforcement.cli.main``, the console entry point: each kind of error a command raises becomes
one sentence on stderr and an exit status (2, never 1, which says a check failed). The command
is replaced by one that raises the error; the database's sentences are ``database_error``'s."""

from __future__ import annotations

import io
import os
import signal
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import pytest
import sqlalchemy as sa
import typer

from enforcement import cli, cli_output
from enforcement.cli_output import CliConsole, OutputClosed
from events.errors import UnknownEventType

# ``run_main(command)`` → (exit status, stdout, stderr): the ``run_main`` fixture's function.
RunMain = Callable[[Callable[..., Any]], tuple[Any, str, str]]


class ClosedPipe(Exception):
    """Raised instead of ending the test's process by SIGPIPE."""


def raising(error: BaseException) -> Callable[..., Any]:
    def command(**_: Any) -> Any:
        raise error

    return command


@pytest.fixture
def run_main(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> RunMain:
    """``run_main(command)`` → (exit status, stdout, stderr) of ``main`` with ``command`` as the
    app; the settings name a SQLite file with no schema."""
    monkeypatch.setenv("ENFORCEMENT_DATABASE_URL", f"sqlite:///{tmp_path / 'empty.db'}")
    monkeypatch.delenv("ENFORCEMENT_TRACEBACK", raising=False)

    def closed_pipe() -> None:
        raise ClosedPipe

    monkeypatch.setattr(cli, "_end_as_closed_pipe", closed_pipe)

    def run(command: Callable[..., Any]) -> tuple[Any, str, str]:
        monkeypatch.setattr(cli, "app", command)
        try:
            cli.main()
            status: Any = None
        except SystemExit as exc:
            status = exc.code
        out, err = capsys.readouterr()
        return status, out, err

    return run


def test_an_exit_keeps_its_status_and_a_returned_status_is_the_process_s(
    run_main: RunMain,
) -> None:
    assert run_main(raising(typer.Exit(3))) == (3, "", "")
    assert run_main(lambda **_: 1) == (1, "", "")  # ``verify``'s broken chain, returned
    assert run_main(lambda **_: 0) == (None, "", "")
    assert run_main(lambda **_: None) == (None, "", "")


def test_an_interrupted_command_exits_1(
    run_main: RunMain,
) -> None:
    """click turns Ctrl-C into ``Abort``."""
    assert run_main(raising(typer.Abort())) == (1, "", "")


def test_a_usage_error_is_its_message_as_one_sentence_or_only_the_help_s_status(
    run_main: RunMain,
) -> None:
    """Typer's errors (it vendors click), and click's own (an older Typer raises them)."""
    assert run_main(raising(typer.BadParameter("--colour is no option"))) == (
        2,
        "",
        "Invalid value: --colour is no option.\n",
    )
    assert run_main(raising(click.UsageError("Missing argument 'ACCOUNT'. "))) == (
        2,
        "",
        "Missing argument 'ACCOUNT'.\n",
    )
    assert run_main(raising(typer.TyperException(""))) == (2, "", "")  # the help said it


def test_a_usage_error_kind_with_no_message_to_format_is_not_swallowed(
    run_main: RunMain,
) -> None:
    class Unformatted(typer.TyperException):
        format_message = None  # type: ignore[assignment]

    with pytest.raises(Unformatted):
        run_main(raising(Unformatted("no sentence")))


def test_a_reader_that_went_away_ends_the_command_as_a_closed_pipe(
    run_main: RunMain,
) -> None:
    for error in (OutputClosed("gone"), BrokenPipeError(32, "Broken pipe")):
        with pytest.raises(ClosedPipe):
            run_main(raising(error))
    # Typer's own console (the help) exits 1 on a closed pipe: that too is the reader's leaving.
    exit_on_pipe = SystemExit(1)
    exit_on_pipe.__context__ = BrokenPipeError(32, "Broken pipe")
    with pytest.raises(ClosedPipe):
        run_main(raising(exit_on_pipe))
    for other in (SystemExit(1), SystemExit(2)):
        assert run_main(raising(other))[0] == other.code
    exit_2_on_pipe = SystemExit(2)
    exit_2_on_pipe.__context__ = BrokenPipeError(32, "Broken pipe")
    assert run_main(raising(exit_2_on_pipe))[0] == 2


def test_os_errors_name_the_file_or_the_output(
    run_main: RunMain,
) -> None:
    assert run_main(raising(OSError(13, "Permission denied", "/srv/policy.toml"))) == (
        2,
        "",
        "Cannot use /srv/policy.toml: Permission denied.\n",
    )
    assert run_main(raising(OSError(28, "No space left on device"))) == (
        2,
        "",
        "Could not write the output: No space left on device.\n",
    )
    with pytest.raises(OSError, match="no errno"):  # not a write's: a bug, as it is
        run_main(raising(OSError("no errno")))


def test_an_event_of_a_newer_release_and_a_bug_are_one_sentence(
    run_main: RunMain,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    newer = UnknownEventType("ViolationReported schema version 99 is newer than this code's 1")
    assert run_main(raising(newer)) == (
        2,
        "",
        "The log cannot be read by this release: ViolationReported schema version 99 is newer "
        "than this code's 1.\n",
    )
    status, out, err = run_main(raising(ValueError("line one\n  line   two " + "x" * 400)))
    reason = "ValueError: line one line two " + "x" * 270  # one line, 300 characters at most
    assert (status, out) == (2, "")
    assert err == (
        f"The command failed ({reason}); `enforcement verify` finds an event the log holds "
        "damaged, and ENFORCEMENT_TRACEBACK=1 shows where it failed.\n"
    )
    monkeypatch.setenv("ENFORCEMENT_TRACEBACK", "1")
    with pytest.raises(ValueError, match="shown"):
        run_main(raising(ValueError("shown")))


def test_database_errors_are_the_database_s_reason_in_one_sentence(
    run_main: RunMain,
) -> None:
    """The driver's first line, without its final stop (or the error's kind when it says
    nothing); a missing table (SQLite's words or PostgreSQL's) sends the operator to `init`."""
    refused = sa.exc.IntegrityError("INSERT", {}, sqlite3.IntegrityError("refused.\nDETAIL: x"))
    assert run_main(raising(refused)) == (
        2,
        "",
        "The database could not complete the command (refused).\n",
    )
    silent = sa.exc.IntegrityError("INSERT", {}, sqlite3.IntegrityError(""))
    assert cli.database_error(silent) == (
        "The database could not complete the command (IntegrityError)."
    )
    init = " Run `enforcement init` to create its schema."
    unusable = "; check ENFORCEMENT_DATABASE_URL and that the database is running."
    for missing in ("no such table: events", 'relation "events" does not exist'):
        error = sa.exc.ProgrammingError("SELECT", {}, sqlite3.ProgrammingError(missing))
        assert (
            cli.database_error(error) == f"The database cannot be used ({missing}){unusable}{init}"
        )
    for other in ('relation "events" is locked', 'table "events" does not exist'):
        error = sa.exc.ProgrammingError("SELECT", {}, sqlite3.ProgrammingError(other))
        assert (
            cli.database_error(error) == f"The database could not complete the command ({other})."
        )
    closed = sa.exc.OperationalError("SELECT", {}, sqlite3.OperationalError("unable to open"))
    assert cli.database_error(closed) == f"The database cannot be used (unable to open){unusable}"
    gone = sa.exc.InterfaceError("SELECT", {}, sqlite3.InterfaceError("connection closed"))
    assert cli.database_error(gone) == f"The database cannot be used (connection closed){unusable}"


def test_only_a_known_revision_other_than_the_head_is_older() -> None:
    known = {"0001", "0002", "0003"}
    assert cli.is_older("0002", "0003", known)
    assert not cli.is_older("0003", "0003", known)  # this release's own
    assert not cli.is_older("0009", "0003", known)  # a newer release's
    assert not cli.is_older(None, "0003", known | {None})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("sqlite:///:memory:", "sqlite:///:memory:"),  # as written, not sqlite:///%3Amemory%3A
        ("sqlite:///./a b.db", "sqlite:///./a b.db"),
        (
            "postgresql+psycopg://ops:s3cr%40t@db:5432/enf",
            "postgresql+psycopg://ops:***@db:5432/enf",
        ),
        (
            "postgresql+psycopg://ops@db/enf?sslmode=require&password=s3cret",
            "postgresql+psycopg://ops@db/enf?password=***&sslmode=require",
        ),
        (
            "postgresql+psycopg://ops:one@db/enf?password=two",
            "postgresql+psycopg://ops:***@db/enf?password=***",
        ),
    ],
)
def test_a_database_url_in_a_message_shows_no_password(url: str, shown: str) -> None:
    assert cli.redacted(url) == shown
    assert "s3cr" not in cli.redacted(url)


@pytest.mark.parametrize(
    ("jobs", "cpus", "folded_in"), [(0, 8, 4), (0, 3, 3), (0, None, 1), (6, 2, 6)]
)
def test_replay_folds_in_as_many_processes_as_asked_or_up_to_4_cpus_with_a_labelled_bar(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    jobs: int,
    cpus: int | None,
    folded_in: int,
) -> None:
    """``--jobs 0`` (the default) is one process per CPU, at most 4; the bar says what it counts."""
    from rich.progress import Progress

    from enforcement import progress
    from projections import runner
    from projections.runner import RebuildStats

    bars: list[Progress] = []
    asked: dict[str, Any] = {}

    def bar() -> Progress:
        bars.append(Progress(disable=True))
        return bars[-1]

    def rebuild(store: Any, standings: Any, **kwargs: Any) -> RebuildStats:
        asked.update(kwargs)
        kwargs["progress"](5, 10)
        return RebuildStats(accounts=2, events=10, seconds=0.5)

    monkeypatch.setattr(progress, "progress_bar", bar)
    monkeypatch.setattr(runner, "rebuild_standings", rebuild)
    monkeypatch.setattr(cli.os, "cpu_count", lambda: cpus)

    cli.replay_standings(object(), object(), None, jobs)  # type: ignore[arg-type]

    assert (asked["jobs"], asked["account"]) == (folded_in, None)
    [task] = bars[0].tasks
    assert (task.description, task.fields, task.completed, task.total) == (
        "replaying",
        {"unit": "events"},
        5,
        10,
    )
    assert "Rebuilt 2 standing(s) from 10 events" in capsys.readouterr().out


def test_a_policy_file_that_cannot_be_used_is_one_sentence_wherever_it_is_loaded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The system a command opens (``serve``'s, every auditor's) and ``whatif``'s other policy."""
    from enforcement.settings import Settings

    policy = tmp_path / "policy.toml"
    policy.write_text('remediation_windo = "1d"\n')
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'x.db'}", policy_file=str(policy))
    loads: list[Callable[[], Any]] = [
        lambda: cli.container_or_fail(settings),
        lambda: cli.load_policy_or_fail(str(policy)),
    ]
    for load in loads:
        with pytest.raises(SystemExit) as exit:
            load()
        err = capsys.readouterr().err
        assert exit.value.code == 2
        assert err.startswith("The policy file cannot be used: ") and "remediation_windo" in err


def test_the_system_a_command_opened_is_closed_when_it_is_done_or_failed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    class System:
        closed = 0

        def close(self) -> None:
            self.closed += 1

    system = System()
    database = tmp_path / "events.db"
    database.touch()
    monkeypatch.setenv("ENFORCEMENT_DATABASE_URL", f"sqlite:///{database}")
    monkeypatch.setattr(cli, "container_or_fail", lambda settings: system)

    with cli.opened_container() as opened:
        assert (opened, system.closed) == (system, 0)
    assert system.closed == 1
    with pytest.raises(ValueError, match="the command's"), cli.opened_container():
        raise ValueError("the command's")
    assert system.closed == 2


def test_a_missing_table_is_the_init_sentence_when_the_revision_cannot_be_read(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Whether an older release made the database cannot be told: neither settings that cannot
    be read nor a database that cannot be asked its revision make that a traceback; the question
    waits a bounded time (libpq's ``connect_timeout`` 0 waits for ever)."""
    from enforcement import schema_revisions

    waits: list[int | None] = []

    def unanswered(url: str, connect_timeout: int | None = None) -> str:
        waits.append(connect_timeout)
        raise sa.exc.OperationalError("SELECT", {}, sqlite3.OperationalError("disk I/O error"))

    monkeypatch.setattr(schema_revisions, "current_revision", unanswered)
    missing = sa.exc.ProgrammingError("SELECT", {}, sqlite3.ProgrammingError("no such table: x"))
    says = (
        "The database cannot be used (no such table: x); check ENFORCEMENT_DATABASE_URL and that "
        "the database is running. Run `enforcement init` to create its schema."
    )
    for url in (f"sqlite:///{tmp_path / 'events.db'}", "notaurl"):
        monkeypatch.setenv("ENFORCEMENT_DATABASE_URL", url)
        assert cli.database_error(missing) == says, url
    assert waits and all(wait is not None and wait > 0 for wait in waits), waits


class Stream:
    """A stream whose ``flush`` fails as a pipe's whose reader went away, or succeeds."""

    def __init__(self, reader_gone: bool) -> None:
        self.reader_gone = reader_gone
        self.flushed = 0

    def flush(self) -> None:
        self.flushed += 1
        if self.reader_gone:
            raise BrokenPipeError(32, "Broken pipe")


def test_a_closed_pipe_where_no_sigpipe_ends_the_process_exits_141(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without SIGPIPE (Windows), or should the signal not end the process: a shell's status for
    it, with stdout (and stderr, when its reader went away too) sent nowhere first."""
    discarded: list[Any] = []
    monkeypatch.delattr(signal, "SIGPIPE")
    monkeypatch.setattr(cli, "discard", discarded.append)
    for stderr_gone in (False, True):
        out, err = Stream(reader_gone=False), Stream(reader_gone=stderr_gone)
        discarded.clear()
        with monkeypatch.context() as streams, pytest.raises(SystemExit) as exit:
            streams.setattr(sys, "stdout", out)
            streams.setattr(sys, "stderr", err)
            cli._end_as_closed_pipe()
        assert exit.value.code == 141
        assert (err.flushed, discarded) == (1, [out, err] if stderr_gone else [out])


def test_say_and_fail_print_their_text_as_written_on_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """No Rich markup, no emoji codes, no wrapping at the console's width: a script reads the
    lines, and ``fail``'s sentence goes to stderr alone, with its status."""
    text = "[bold]tenant:ok:42[/bold] " + "x" * 3000

    cli_output.say(text, "second")
    with pytest.raises(SystemExit) as failed:
        cli_output.fail(text)
    with pytest.raises(SystemExit) as failed_check:
        cli_output.fail("broken", cli_output.EXIT_CHECK_FAILED)

    assert failed.value.code == 2 and failed_check.value.code == 1
    assert capsys.readouterr() == (f"{text}\nsecond\n", f"{text}\nbroken\n")


def test_a_sentence_nobody_reads_on_stderr_still_exits_with_its_status(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``2>&1 | true``: stderr is sent nowhere (so the flush at exit does not fail) and the
    status is the sentence's."""
    discarded: list[Any] = []
    monkeypatch.setattr(cli_output, "discard", discarded.append)

    def gone(*_: Any, **__: Any) -> None:
        raise OutputClosed("gone")

    monkeypatch.setattr(cli_output.err_console, "print", gone)
    with pytest.raises(SystemExit) as failed:
        cli_output.fail("no reader", 1)

    assert failed.value.code == 1
    assert discarded == [sys.stderr]


class GoneReader(io.StringIO):
    """A pipe whose reader went away: every write fails."""

    def write(self, _: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_a_console_whose_reader_went_away_raises_output_closed_and_writes_no_more() -> None:
    console = CliConsole(file=GoneReader())

    with pytest.raises(OutputClosed):
        console.print("lost")

    assert console.quiet
    console.print("later")  # quiet: no second attempt at the pipe


def test_discard_sends_what_a_stream_still_holds_and_later_writes_to_nowhere(
    tmp_path: Path,
) -> None:
    with (tmp_path / "out").open("w") as stream:
        stream.write("held")
        descriptors = os.listdir("/proc/self/fd")
        cli_output.discard(stream)
        assert os.listdir("/proc/self/fd") == descriptors  # /dev/null's own is closed again
        stream.write("later")
    assert (tmp_path / "out").read_text() == ""
    cli_output.discard(io.StringIO())  # no descriptor: nothing to do


def test_output_in_a_pipe_is_as_wide_as_its_content_unless_columns_says(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.setattr(sys, "stdout", io.StringIO())  # no terminal
    assert cli_output._width() == 1000
    monkeypatch.setenv("COLUMNS", "120")
    assert cli_output._width() is None  # Rich reads COLUMNS itself
    monkeypatch.delenv("COLUMNS")
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert cli_output._width() is None  # a terminal: its width
