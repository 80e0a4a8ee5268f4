"""The ``enforcement`` command line (CONTRACT.md, "CLI"): thin commands over the use cases."""

from __future__ import annotations

import csv
import json
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

from enforcement.cli_output import (
    EXIT_CHECK_FAILED,
    EXIT_USAGE,
    OutputClosed,
    console,
    discard,
    err_console,
    fail,
    say,
)
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
tokens_app = typer.Typer(help="Manage API tokens.", no_args_is_help=True)
app.add_typer(tokens_app, name="tokens")


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except SettingsError as exc:
        fail(f"Configuration error: {exc}.")


def _container(settings: Settings | None = None) -> Any:
    from enforcement.bootstrap import bootstrap
    from enforcement.errors import PolicyError

    try:
        return bootstrap(settings or _settings())
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


def _require_sqlite_file(url: str) -> None:
    """Exit 2 if ``url`` names a SQLite file that does not exist (opening it would create an
    empty database)."""
    from events.dialects import sqlite_file

    missing = sqlite_file(url)
    if missing is not None and not Path(missing).exists():
        fail(f"The database {missing} does not exist; run `enforcement init` to create it.")


@contextmanager
def opened_container() -> Iterator[Any]:
    """The configured system for one command, closed when the command is done; a SQLite file
    that does not exist is an error (``_require_sqlite_file``)."""
    settings = _settings()
    _require_sqlite_file(settings.database_url)
    container = _container(settings)
    try:
        yield container
    finally:
        container.close()


def time_option(value: str | None, name: str) -> datetime | None:
    """An RFC 3339 option's value, or a usage error naming the option."""
    if value is None:
        return None
    from events.timefmt import parse_time

    try:
        return parse_time(value)
    except ValueError:
        fail(f"{name} must be an RFC 3339 time with a UTC offset, such as 2026-11-24T10:00:00Z.")


def account_option(value: str | None, name: str) -> str | None:
    """An account id as the contract writes them, or a usage error naming the argument."""
    from enforcement.gate.base import ACCOUNT_ID

    if value is not None and ACCOUNT_ID.fullmatch(value) is None:
        fail(f"{name} must be an account id: 1 to 128 characters of A-Za-z0-9._:-.")
    return value


@app.command()
def init() -> None:
    """Create or upgrade the schema (Alembic upgrade head); rebuild older stored standings."""
    from enforcement.migrations import current_revision, upgrade

    settings = _settings()
    try:
        upgrade(settings.database_url)
    except Exception as exc:
        # The driver's own message, first line only, and the URL without its password.
        lines = str(getattr(exc, "orig", None) or exc).strip().splitlines() or [type(exc).__name__]
        fail(f"Could not migrate {_redacted(settings.database_url)}: {lines[0].rstrip('.')}.")
    console.print(
        f"Schema at revision [bold]{current_revision(settings.database_url)}[/] on "
        f"{escape(_redacted(settings.database_url))}"
    )
    _rebuild_older_standings(settings.database_url)


def _rebuild_older_standings(url: str) -> None:
    """Rebuild the stored standings if any is of an earlier release's shape: until rewritten,
    each would be folded from its log on every read of all rows (the gate's seeding, the
    deadline sweep). Only the database: a migration job may run without the policy or Redis."""
    from events import EventStore
    from events.dialects import create_engine
    from projections.stored import StandingRepository, count_older_states

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            older = count_older_states(conn)
        if older:
            console.print(
                f"{older} stored standing(s) are of an earlier release's shape: rebuilding the "
                "standings from the log."
            )
            store = EventStore(engine)
            _rebuild_standings(store, StandingRepository(store), account=None, jobs=0)
    finally:
        engine.dispose()


def _redacted(url: str) -> str:
    import sqlalchemy as sa

    return sa.make_url(url).render_as_string(hide_password=True)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port (0: any free one).", min=0, max=65535)] = 8000,
    workers: Annotated[
        bool, typer.Option(help="Run the relay, workers and scheduler inside (embedded mode).")
    ] = True,
) -> None:
    """Run the HTTP API (and, in embedded mode, the workers and the deadline scheduler)."""
    import uvicorn

    from enforcement.api.app import create_app
    from enforcement.logs import configure_logging

    settings = _settings()
    _check_can_listen(host, port)
    configure_logging()  # before the schema check, whose connection may log (a pooler)
    _check_schema(settings.database_url)
    container = _container(settings)
    if workers and container.settings.embedded:
        from enforcement.workers.runtime import install_embedded_workers

        install_embedded_workers(container)
    application = create_app(container, run_workers=workers)
    uvicorn.run(application, host=host, port=port, log_config=None, access_log=False)


def _check_can_listen(host: str, port: int) -> None:
    """Exit 2 with one sentence if ``host:port`` cannot be bound (uvicorn would log the error
    and exit 3, a code the contract does not have). Every address the host resolves to is
    bound at once, as asyncio's ``create_server`` binds them (``""``: every interface), then
    released."""
    import errno
    import socket
    from contextlib import ExitStack

    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except (socket.gaierror, UnicodeError) as exc:
        fail(f"Cannot listen on {host!r}: {getattr(exc, 'strerror', None) or exc}.")
    with ExitStack() as sockets:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = sockets.enter_context(socket.socket(family, kind, proto))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:  # as asyncio: IPv6 beside IPv4, not over it
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                shown_host = f"[{host}]" if ":" in host else host
                where = f"{shown_host}:{port}" if host else f"port {port}"
                if exc.errno == errno.EADDRINUSE:
                    shown = f"Port {port} on {host}" if host else f"Port {port}"
                    fail(f"{shown} is already in use; choose another with --port.")
                fail(f"Cannot listen on {where} ({address[0]}): {exc.strerror or exc}.")


SCHEMA_CHECK_TIMEOUT_SECONDS = 5
# PostgreSQL's SQLSTATEs for a password or role refused (28P01, 28000) and a database that does
# not exist (3D000).
NOT_BY_WAITING = frozenset({"28P01", "28000", "3D000"})
# (PostgreSQL's English messages: a server speaking another language is left to /healthz.)
NOT_BY_WAITING_TEXT = (
    "authentication failed",
    "does not exist",
    "no pg_hba.conf entry",
    "no password supplied",
    "permission denied for database",
    "not permitted to log in",
)


def _check_schema(url: str) -> None:
    """Exit 2 if the database has no schema, or an older revision than this release's: serving
    it would answer requests with errors, and a worker's relay would fail on it until stopped.
    A database that does not answer yet is left to ``/healthz`` (503 until it does) and to the
    relay's retries; one at a revision this release does not know (a newer release's) is
    served, as during a rolling upgrade."""
    from enforcement.migrations import current_revision, release_revisions

    _require_sqlite_file(url)
    try:
        revision = current_revision(url, connect_timeout=SCHEMA_CHECK_TIMEOUT_SECONDS)
    except sqlalchemy_errors.DBAPIError as exc:
        # Refused credentials or a database that does not exist will not mend by waiting.
        # psycopg gives no SQLSTATE for a failed connection: the server's FATAL text, then.
        orig = getattr(exc, "orig", None)
        if getattr(orig, "sqlstate", None) in NOT_BY_WAITING or any(
            text in str(orig) for text in NOT_BY_WAITING_TEXT
        ):
            fail(_database_error(exc))
        return
    head, known = release_revisions()
    if revision is None:
        fail(f"The database {_redacted(url)} has no schema; run `enforcement init` to create it.")
    if revision != head and revision in known:
        fail(
            f"The database {_redacted(url)} is at schema revision {revision}, this release needs "
            f"{head}; run `enforcement init` to upgrade it."
        )


@app.command()
def worker() -> None:
    """Run the relay, the deadline sweep and Dramatiq worker processes (needs Redis)."""
    from enforcement.logs import configure_logging
    from enforcement.workers.runtime import run_worker_processes

    settings = _settings()
    if settings.redis_url is None:
        fail(
            "enforcement worker needs ENFORCEMENT_REDIS_URL; in embedded mode "
            "`enforcement serve` runs the workers itself."
        )
    load_policy_or_fail(settings.policy_file)  # before the processes start: one sentence
    configure_logging()
    _check_schema(settings.database_url)  # an upgrade's worker started before `init`
    status = run_worker_processes(settings)
    if status:
        raise typer.Exit(status)


@tokens_app.command("create")
def tokens_create(
    role: Annotated[str, typer.Option(help="reporter, operator, auditor, gateway or admin.")],
    name: Annotated[str, typer.Option(help="Who or what uses the token.")],
) -> None:
    """Create a token; it is printed alone on the last line (only its hash is stored)."""
    from enforcement.roles import Role
    from enforcement.tokens import issue_token

    try:
        chosen = Role(role)
    except ValueError:
        fail(f"Unknown role {role!r}; choose one of {', '.join(r.value for r in Role)}.")
    if not name.strip():
        fail("--name must say who or what uses the token; it is empty.")
    try:  # a byte that is not UTF-8 comes as half a surrogate pair, which no text can hold
        name.encode("utf-8")
    except UnicodeEncodeError:
        fail("--name must be UTF-8 text; it holds a byte that is not.")
    with opened_container() as container:
        token_id, token = issue_token(container.engine, chosen, name)
    article = "an" if chosen.value[0] in "aeiou" else "a"
    console.print(
        f"Created {article} {chosen.value} token for {name!r} ({token_id}). Store it now: it is "
        "not shown again.",
        markup=False,
        highlight=False,
    )
    sys.stdout.flush()
    print(token)


@tokens_app.command("list")
def tokens_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List the tokens: id, name, role, created (never the token or its hash)."""
    from rich.table import Table
    from rich.text import Text

    from enforcement.tokens import list_tokens
    from events.timefmt import format_time

    with opened_container() as container:
        tokens = list_tokens(container.engine)
    if as_json:
        shown = [
            {
                "token_id": t.token_id,
                "name": t.name,
                "role": t.role,
                "created_at": format_time(t.created_at),
            }
            for t in tokens
        ]
        print(json.dumps(shown, indent=2, ensure_ascii=False))
        return
    table = Table(title=f"{len(tokens)} token(s)")
    for column in ("id", "name", "role", "created"):
        table.add_column(column)
    for t in tokens:
        cells = (t.token_id, t.name, t.role, format_time(t.created_at))
        table.add_row(*map(Text, cells))  # a name is shown as written, not read as markup
    console.print(table)


@tokens_app.command("revoke")
def tokens_revoke(
    token_id: Annotated[str, typer.Argument(help="The token's id (tok_…), from tokens list.")],
) -> None:
    """Revoke a token: it stops working within 30 seconds (each process remembers a token it
    checked for that long)."""
    from enforcement.tokens import revoke_token

    with opened_container() as container:
        revoked = revoke_token(container.engine, token_id)
    if revoked is None:
        fail(f"There is no token {token_id!r}; `enforcement tokens list` shows them.")
    console.print(
        f"Revoked {revoked.token_id} ({revoked.role} token for {revoked.name!r}); it stops "
        "working within 30 seconds.",
        markup=False,
        highlight=False,
    )


@app.command("webhook-key")
def webhook_key(account: Annotated[str, typer.Argument(help="Account id.")]) -> None:
    """Print an account's webhook key, alone on the last line.

    Its owner checks X-Enforcement-Account-Signature with it; it is derived from
    ENFORCEMENT_WEBHOOK_SECRET."""
    from enforcement.notices.webhook import ACCOUNT_SIGNATURE_HEADER, account_key

    account_option(account, "ACCOUNT")
    secret = _settings().webhook_secret
    if secret is None:
        fail(
            "ENFORCEMENT_WEBHOOK_SECRET is unset, so webhooks are not signed and no account has "
            "a key; run this with the service's secret set."
        )
    say(
        f"Webhook key of account {account}, to check {ACCOUNT_SIGNATURE_HEADER} with. Give it "
        "to the account's owner only; it changes when ENFORCEMENT_WEBHOOK_SECRET does."
    )
    sys.stdout.flush()
    print(account_key(secret, account))


@app.command()
def standing(
    account: Annotated[str, typer.Argument(help="Account id.")],
    as_of: Annotated[str | None, typer.Option("--as-of", help="RFC 3339 time.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show one account's standing."""
    from enforcement.render import standing_table

    account_option(account, "ACCOUNT")
    moment = time_option(as_of, "--as-of")
    with opened_container() as container:
        result = container.service.standing(account, moment).to_json()
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        console.print(standing_table(result))


@app.command()
def history(
    account: Annotated[str, typer.Argument(help="Account id.")],
    as_of: Annotated[str | None, typer.Option("--as-of", help="RFC 3339 time.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="table, json or csv.")] = "table",
) -> None:
    """Show an account's events, each with what it changed in the standing and the rule."""
    from enforcement.render import history_csv_rows, history_json, history_table

    if fmt not in ("table", "json", "csv"):
        fail(f"Unknown format {fmt!r}; choose table, json or csv.")
    account_option(account, "ACCOUNT")
    moment = time_option(as_of, "--as-of")
    with opened_container() as container:
        # Written as read (JSON and CSV): a long history is never held whole.
        entries = container.service.history(account, moment)
        if fmt == "json":
            sys.stdout.writelines(history_json(entries))
        elif fmt == "csv":
            csv.writer(sys.stdout).writerows(history_csv_rows(entries))
        else:
            console.print(history_table(account, entries))


@app.command()
def verify(
    account: Annotated[str | None, typer.Argument(help="One account; all when omitted.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Check hash chains: exit 0 when intact, 1 when any chain is broken."""
    from enforcement.auditing import verify_accounts

    account_option(account, "ACCOUNT")
    with opened_container() as container:
        results = verify_accounts(container.store, account, show_progress=not as_json)
    broken = [r for r in results if not r["ok"]]
    if as_json:
        print(json.dumps(results if account is None else results[0], indent=2))
    else:
        for r in broken:
            # The account id as the log holds it: a tampered log may hold anything there.
            console.print(
                f"[red]BROKEN[/] {escape(r['account_id'])} at version {r['broken_at_version']}: "
                f"{escape(r['reason'])}"
            )
        total = sum(r["events"] for r in results)
        if account is not None and total == 0:
            console.print(f"{escape(account)} has no events: nothing to verify.")
        else:
            console.print(
                f"{len(results) - len(broken)} of {len(results)} account(s) intact, "
                f"{total} events checked."
            )
    if broken:
        raise typer.Exit(EXIT_CHECK_FAILED)


@app.command()
def replay(
    account: Annotated[str | None, typer.Option("--account", help="Only this account.")] = None,
    jobs: Annotated[
        int,
        typer.Option(
            "--jobs",
            min=0,
            help="Processes that fold the log (a log of 50,000 events or more); 0: the "
            "number of CPUs, at most 4.",
        ),
    ] = 0,
) -> None:
    """Rebuild the stored projections from the log, with a progress bar and events/s."""
    account_option(account, "--account")
    with opened_container() as container:
        _rebuild_standings(container.store, container.standings, account, jobs)


def _rebuild_standings(
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


@app.command()
def export(
    fmt: Annotated[str, typer.Option("--format", help="jsonl (events) or sor (statements).")],
    since: Annotated[str | None, typer.Option("--since", help="RFC 3339 time.")] = None,
    until: Annotated[str | None, typer.Option("--until", help="RFC 3339 time.")] = None,
    account: Annotated[str | None, typer.Option("--account", help="Only this account.")] = None,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="File (default stdout).")
    ] = None,
) -> None:
    """Export events (jsonl) or statements of reasons (sor) as JSON lines."""
    from enforcement.auditing import events_in_log, export_lines
    from enforcement.progress import progress_bar

    if fmt not in ("jsonl", "sor"):
        fail(f"Unknown format {fmt!r}; choose jsonl or sor.")
    account_option(account, "--account")
    start, end = time_option(since, "--since"), time_option(until, "--until")
    if start is not None and end is not None and start > end:
        fail("--since must not be later than --until.")
    # The whole log takes minutes: a progress bar on stderr. With the lines on stdout, only when
    # stderr is a terminal that stdout is not: never into a stream that also holds the data
    # (``export > log.jsonl 2>&1``), nor over the lines on the screen.
    shown = account is None and (
        output is not None or (sys.stderr.isatty() and not sys.stdout.isatty())
    )
    with opened_container() as container, progress_bar(shown) as bar:
        task = bar.add_task(
            "exporting", total=events_in_log(container.store) if shown else None, unit="events"
        )
        lines = export_lines(
            container.store,
            fmt,
            since=start,
            until=end,
            account=account,
            progress=lambda read: bar.advance(task, read),
        )
        try:
            if output is None:
                for line in lines:
                    sys.stdout.write(line + "\n")
                return
            count = _write_lines_to(output, lines)
        except BaseException:
            # An error is one sentence, and a reader that left ends it quietly
            # (``_end_as_closed_pipe``): no bar drawn after them.
            bar.console.quiet = True
            raise
    # On stderr, as every note: ``-o /dev/stdout`` (or a FIFO) gives the lines alone.
    err_console.print(f"Wrote {count} line(s) to {escape(str(output))}.")


def _write_lines_to(output: Path, lines: Iterator[str]) -> int:
    """Write ``lines`` to ``output``; returns how many. A regular file (or a new one) is written
    beside it first and renamed over it once complete, so an export that fails (a full disk, a
    database error) leaves neither a partial file nor a clobbered earlier export; a device or a
    pipe (``/dev/stdout``) is written as it is."""
    import stat

    try:
        mode: int | None = output.stat().st_mode
    except OSError:
        mode = None  # none yet (or one that cannot be looked at: creating it names the problem)
    if mode is not None and not stat.S_ISREG(mode):
        count = 0
        try:
            with output.open("w", encoding="utf-8") as stream:
                for line in lines:
                    stream.write(line + "\n")
                    count += 1
        except BrokenPipeError:
            raise  # a pipe's reader went away (``-o /dev/stdout | head -1``): as for stdout
        except OSError as exc:
            fail(f"Cannot write {output}: {exc.strerror or exc}.")
        return count
    from enforcement.files import replace_durably
    from events.dialects import DATABASE_FILE_MODE

    target = Path(os.path.realpath(output))  # a symbolic link's file, not the link
    if mode is None:
        # A new file is the exporter's alone, as the database file is: it holds what that holds
        # (descriptions, a third party's contact). One that exists keeps the mode it has.
        mode = DATABASE_FILE_MODE
    count = 0
    started = False  # a failure before the first line is the path's (a missing directory)

    def encoded() -> Iterator[bytes]:
        nonlocal count, started
        started = True
        for line in lines:
            yield (line + "\n").encode("utf-8")
            count += 1

    try:
        replace_durably(target, encoded(), stat.S_IMODE(mode))
    except OSError as exc:
        fail(f"Cannot {'write' if started else 'use'} {output}: {exc.strerror or exc}.")
    return count


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


from enforcement import cli_backup, cli_reports  # noqa: E402,F401 - register their commands


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
        fail(_database_error(exc), EXIT_USAGE)
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


def _database_error(exc: Exception) -> str:
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
    hint = " Run `enforcement init` to create its schema." if missing else ""
    return (
        f"The database cannot be used ({reason}); check ENFORCEMENT_DATABASE_URL and that the "
        f"database is running.{hint}"
    )
