"""The ``enforcement`` command line (CONTRACT.md, "CLI"): thin commands over the use cases.

This module holds the Typer ``app`` (the entry point ``main``, which turns every error into one
sentence and an exit status) and the helpers every command uses (the settings, the container, an
option's checks). The commands are in ``cli_service`` (init, serve, worker), ``cli_credentials``
(tokens, webhook-key), ``cli_audit`` (standing, history, verify, replay, export), ``cli_backup``
(backup, restore), ``cli_reports`` (report, whatif) and ``cli_operator`` (resend); how they
write is ``cli_output``'s."""

from __future__ import annotations

import inspect
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.markup import escape
from sqlalchemy import exc as sqlalchemy_errors
from typer.core import TyperGroup

from enforcement.cli_output import EXIT_USAGE, OutputClosed, console, discard, fail
from enforcement.settings import Settings, SettingsError
from events.errors import UnknownEventType

if TYPE_CHECKING:
    from events import EventStore
    from projections.stored import StandingRepository


class _Commands(TyperGroup):
    """The commands' group: a write to a pipe whose reader has gone (``BrokenPipeError``) leaves
    the command as ``OutputClosed``, which ``main`` ends quietly (``_end_as_closed_pipe``);
    Typer and click would catch the error themselves and exit 1, which says a check failed."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError as exc:
            raise OutputClosed(str(exc)) from exc


app = typer.Typer(
    name="enforcement",
    cls=_Commands,
    help="Enforcement backend for the TaaS API Service Acceptable Use Policy.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def settings_or_fail() -> Settings:
    try:
        return Settings.from_env()
    except SettingsError as exc:
        fail(f"Configuration error: {exc}.")


def container_or_fail(settings: Settings | None = None) -> Any:
    from enforcement.bootstrap import bootstrap
    from enforcement.errors import PolicyError

    try:
        return bootstrap(settings or settings_or_fail())
    except PolicyError as exc:
        _policy_unusable(exc)


def _policy_unusable(exc: Exception) -> NoReturn:
    fail(f"The policy file cannot be used: {exc}.")


def load_policy_or_fail(path: str | None) -> Any:
    """The policy file's ``Policy``, or exit 2 with its error (as every command says it)."""
    from enforcement.errors import PolicyError
    from enforcement.policy import load_policy

    try:
        return load_policy(path)
    except PolicyError as exc:
        _policy_unusable(exc)


def require_sqlite_file(url: str) -> None:
    """Exit 2 if ``url`` names a SQLite file that does not exist (opening it would create an
    empty database)."""
    from events.dialects import sqlite_file

    missing = sqlite_file(url)
    if missing is not None and not Path(missing).exists():
        fail(f"The database {missing} does not exist; run `enforcement init` to create it.")


@contextmanager
def opened_container() -> Iterator[Any]:
    """The configured system for one command, closed when the command is done; a SQLite file
    that does not exist is an error (``require_sqlite_file``)."""
    settings = settings_or_fail()
    require_sqlite_file(settings.database_url)
    container = container_or_fail(settings)
    try:
        yield container
    finally:
        container.close()


def time_option(value: str | None, name: str) -> datetime | None:
    """An RFC 3339 option's value, or a usage error naming the option."""
    if value is None:
        return None
    from events.timefmt import LEAP_SECOND_MESSAGE, is_leap_second, parse_time

    try:
        return parse_time(value)
    except ValueError:
        if is_leap_second(value):
            fail(f"{name} {LEAP_SECOND_MESSAGE}.")
        fail(f"{name} must be an RFC 3339 time with a UTC offset, such as 2026-11-24T10:00:00Z.")


def account_option(value: str | None, name: str) -> str | None:
    """An account id as the contract writes them, or a usage error naming the argument."""
    from enforcement.gate.base import ACCOUNT_ID

    if value is not None and ACCOUNT_ID.fullmatch(value) is None:
        fail(f"{name} must be an account id: 1 to 128 characters of A-Za-z0-9._:-.")
    return value


# The notices' commands (``notices``, ``resend``): one account's, or every account's since.
NoticesAccount = Annotated[
    str | None, typer.Argument(help="Account id (or --all for every account).")
]
EveryAccount = Annotated[bool, typer.Option("--all", help="Every account's notices.")]
IssuedSince = Annotated[
    str | None, typer.Option("--since", help="RFC 3339 time: notices issued then or later.")
]


def account_or_every(account: str | None, every: bool) -> None:
    """A usage error unless exactly one of ACCOUNT (an account id) and --all is given."""
    if account is None and not every:
        fail("Give an ACCOUNT, or --all for every account.")
    if account is not None and every:
        fail("Give an ACCOUNT or --all, not both.")
    account_option(account, "ACCOUNT")


def redacted(url: str) -> str:
    """``url`` for a message: as written when it holds no password, else with each password
    (the user's, or a ``password`` query parameter libpq reads) shown as ``***``."""
    import sqlalchemy as sa

    parsed = sa.make_url(url)
    if parsed.password is None and "password" not in parsed.query:
        return url  # SQLAlchemy's rendering would escape it: sqlite:///%3Amemory%3A
    if "password" in parsed.query:
        parsed = parsed.update_query_dict({"password": "HIDDEN"})
    text = parsed.render_as_string(hide_password=True)
    return text.replace("password=HIDDEN", "password=***")


def replay_standings(
    store: EventStore, standings: StandingRepository, account: str | None, jobs: int
) -> None:
    """``rebuild_standings`` with a progress bar, then one line of figures."""
    from enforcement.progress import progress_bar
    from projections.runner import rebuild_standings

    with progress_bar() as bar:
        task = bar.add_task("replaying", total=None, unit="events")
        stats = rebuild_standings(
            store,
            standings,
            account=account,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
            jobs=jobs or min(4, os.cpu_count() or 1),
        )
    if account is not None and stats.events == 0:
        console.print(f"{escape(account)} has no events: nothing to replay.")
        return
    console.print(
        f"Rebuilt {stats.accounts} standing(s) from {stats.events} events in "
        f"{stats.seconds:.2f}s ({stats.events_per_second:,.0f} events/s)."
    )


def _usage_errors() -> tuple[type[Exception], ...]:
    # Typer ≥ 0.2x vendors click (its ``ClickException`` derives from ``typer.TyperException``);
    # older Typer raises click's own. Both are usage errors here.
    kinds: list[type[Exception]] = [typer.TyperException]
    try:
        import click
    except ImportError:  # pragma: no cover - only with a Typer that vendors click
        pass
    else:
        kinds.append(click.ClickException)
    return tuple(kinds)


def main() -> None:
    """Console entry point: usage errors exit 2 with one sentence on stderr."""
    try:
        # Without standalone mode, click *returns* the code of a ``typer.Exit`` instead of
        # raising it; it must still become the process's exit status (``verify`` exits 1).
        code = app(standalone_mode=False)
        sys.stdout.flush()  # a write error is this command's, not the interpreter's at exit
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(1)
    except (OutputClosed, BrokenPipeError):  # the flush above meets the latter
        _end_as_closed_pipe()
    except SystemExit as exc:
        # A pipe that is not ours to watch: the help goes through Typer's own Rich console, whose
        # ``on_broken_pipe`` exits 1, as click does on a write error while parsing.
        if exc.code == 1 and isinstance(exc.__context__, BrokenPipeError):
            _end_as_closed_pipe()
        raise
    except _usage_errors() as exc:
        format_message = getattr(exc, "format_message", None)
        if not callable(format_message):
            raise
        message = str(format_message()).strip().rstrip(".")
        if not message:  # no command given: the help was printed already
            sys.exit(EXIT_USAGE)
        fail(message + ".", EXIT_USAGE)
    except sqlalchemy_errors.DBAPIError as exc:
        # Not exit 1: that says a check failed (``verify``: the chain is broken).
        fail(database_error(exc), EXIT_USAGE)
    except OSError as exc:
        if exc.filename is None:
            if exc.errno is None:
                raise
            # Writing the output failed (a full disk, an I/O error): not exit 1, which says a
            # check failed (``verify > report.txt`` on a full disk found nothing broken).
            fail(f"Could not write the output: {exc.strerror or exc}.", EXIT_USAGE)
        fail(f"Cannot use {exc.filename}: {exc.strerror or exc}.", EXIT_USAGE)
    except UnknownEventType as exc:
        # An event this release cannot read (one of a newer release's schema: docs/operations.md,
        # "Upgrades"), met while folding or listing an account's events.
        fail(f"The log cannot be read by this release: {exc}.", EXIT_USAGE)
    except Exception as exc:  # a bug, or an event damaged past what readers can decode
        if os.environ.get("ENFORCEMENT_TRACEBACK"):
            raise
        # Not exit 1 (a check failed), nor a traceback: one sentence, as for any error.
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        fail(
            f"The command failed ({reason}); `enforcement verify` finds an event the log holds "
            "damaged, and ENFORCEMENT_TRACEBACK=1 shows where it failed.",
            EXIT_USAGE,
        )
    if isinstance(code, int) and code != 0:
        sys.exit(code)


def _end_as_closed_pipe() -> NoReturn:
    """End as ``cat`` or ``git log`` end when the reader of their output goes away (``… | head
    -1``): quietly, killed by SIGPIPE (a shell's status 141, ``subprocess``'s -13). Not exit 1,
    which says a check failed (``verify``: a broken chain), nor 0, which would say the output was
    written whole. Python ignores SIGPIPE, so that a write fails instead of killing it at any
    socket's write; its default action is restored here, at the very end, only."""
    discard(sys.stdout)  # should the process outlive the signal
    try:
        sys.stderr.flush()
    except OSError:  # its reader went away too
        discard(sys.stderr)
    sigpipe = getattr(signal, "SIGPIPE", None)
    if sigpipe is not None:  # not on Windows
        signal.signal(sigpipe, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {sigpipe})
        os.kill(os.getpid(), sigpipe)
    sys.exit(128 + int(sigpipe or 13))  # its status, should the signal not end the process


def _sqlite_file() -> str | None:
    """The SQLite file the settings name, if they name one."""
    from events.dialects import sqlite_file

    try:
        return sqlite_file(Settings.from_env().database_url)
    except SettingsError:
        return None


def database_error(exc: Exception) -> str:
    """One sentence for a database error (no credentials in it): one that cannot be reached or
    has no schema yet says so; any other is the database's own reason."""
    from events.dialects import storage_full

    detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    reason = detail[0].rstrip(".") if detail else type(exc).__name__
    missing = "no such table" in reason or ("relation" in reason and "does not exist" in reason)
    unreachable = isinstance(
        exc, sqlalchemy_errors.OperationalError | sqlalchemy_errors.InterfaceError
    )
    if storage_full(exc, _sqlite_file()):
        return (
            f"The database cannot write: the disk that holds it is full ({reason}); free space "
            "there and run the command again."
        )
    if not (missing or unreachable):
        return f"The database could not complete the command ({reason})."
    if missing and (older := _older_schema()) is not None:
        return older
    hint = " Run `enforcement init` to create its schema." if missing else ""
    return (
        f"The database cannot be used ({reason}); check ENFORCEMENT_DATABASE_URL and that the "
        f"database is running.{hint}"
    )


# How long a look at the database's schema revision waits to connect (seconds, PostgreSQL).
SCHEMA_CHECK_TIMEOUT_SECONDS = 5


def is_older(revision: str | None, head: str | None, known: set[str]) -> bool:
    """Whether a database at ``revision`` was made by an earlier release: a revision of this
    release's migrations (``known``) other than its ``head`` (a newer release's is not known)."""
    return revision is not None and revision != head and revision in known


def older_schema(url: str, revision: str | None, head: str | None) -> str:
    """The sentence for a database at ``revision``, older than this release's ``head``."""
    return (
        f"The database {redacted(url)} is at schema revision {revision}, this release needs "
        f"{head}; run `enforcement init` to upgrade it."
    )


def _older_schema() -> str | None:
    """``older_schema``'s sentence when a table is missing because the configured database was
    made by an older release (a command run before `enforcement init` after an upgrade), not
    because it has no schema; None otherwise, or when that cannot be told."""
    from enforcement.schema_revisions import current_revision, release_revisions

    try:
        url = Settings.from_env().database_url
        revision = current_revision(url, connect_timeout=SCHEMA_CHECK_TIMEOUT_SECONDS)
    except (SettingsError, sqlalchemy_errors.DBAPIError, ValueError):
        return None
    head, known = release_revisions()
    return older_schema(url, revision, head) if is_older(revision, head, known) else None


def reflowed_help(typer_app: typer.Typer) -> None:
    """Give each command of ``typer_app`` (and of its groups) its docstring as help, each
    paragraph on one line for Rich to wrap at the terminal's width: Typer keeps a docstring's
    own line breaks past its first paragraph, and then wraps those lines again, so that on an
    80-column terminal every other line held a word or two."""
    for info in typer_app.registered_commands:
        doc = None if info.callback is None else info.callback.__doc__
        if info.help is None and doc:
            paragraphs = inspect.cleandoc(doc).split("\n\n")
            info.help = "\n\n".join(" ".join(p.split()) for p in paragraphs)
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            reflowed_help(group.typer_instance)


# Each module registers its commands on ``app`` as it is imported: in this order ``--help``
# lists them (Typer keeps the order commands were registered in; ``tokens`` comes last).
# isort: off
from enforcement import cli_service  # noqa: E402,F401 - init, serve, worker
from enforcement import cli_credentials  # noqa: E402,F401 - tokens, webhook-key
from enforcement import cli_audit  # noqa: E402,F401 - standing, history, verify, replay, export
from enforcement import cli_backup  # noqa: E402,F401 - backup, restore
from enforcement import cli_reports  # noqa: E402,F401 - report, whatif
from enforcement import cli_operator  # noqa: E402,F401 - resend
# isort: on

reflowed_help(app)
