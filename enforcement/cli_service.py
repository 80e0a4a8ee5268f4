"""The service's commands: ``init`` (the schema), ``serve`` (the HTTP API, and in embedded mode
the workers) and ``worker`` (the relay, the deadline sweep and Dramatiq's processes), with the
checks they make before they start (the port, the schema).

Registered on ``enforcement.cli.app`` when that module is imported (it imports this one last).
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from sqlalchemy import exc as sqlalchemy_errors

from enforcement.cli import (
    SCHEMA_CHECK_TIMEOUT_SECONDS,
    app,
    container_or_fail,
    database_error,
    is_older,
    load_policy_or_fail,
    older_schema,
    redacted,
    replay_standings,
    require_sqlite_file,
    settings_or_fail,
)
from enforcement.cli_output import console, fail

# uvicorn's own default: an idle keep-alive connection is closed 5 s after its last answer.
KEEP_ALIVE_SECONDS = 5


@app.command()
def init() -> None:
    """Create or upgrade the schema (Alembic upgrade head); rebuild older stored standings."""
    from enforcement.migrations import upgrade
    from enforcement.schema_revisions import current_revision

    settings = settings_or_fail()
    try:
        upgrade(settings.database_url)
    except Exception as exc:
        # The driver's own message, first line only, and the URL without its password.
        lines = str(getattr(exc, "orig", None) or exc).strip().splitlines() or [type(exc).__name__]
        fail(f"Could not migrate {redacted(settings.database_url)}: {lines[0].rstrip('.')}.")
    console.print(
        f"Schema at revision [bold]{current_revision(settings.database_url)}[/] on "
        f"{escape(redacted(settings.database_url))}"
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
            replay_standings(store, StandingRepository(store), account=None, jobs=0)
    finally:
        engine.dispose()


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port (0: any free one).", min=0, max=65535)] = 8000,
    workers: Annotated[
        bool, typer.Option(help="Run the relay, workers and scheduler inside (embedded mode).")
    ] = True,
    keep_alive: Annotated[
        int,
        typer.Option(
            help="Seconds an idle keep-alive connection is kept open; behind a load balancer, "
            "more than its idle timeout.",
            min=1,
        ),
    ] = KEEP_ALIVE_SECONDS,
) -> None:
    """Run the HTTP API (and, in embedded mode, the workers and the deadline scheduler)."""
    from enforcement.logs import configure_logging
    from enforcement.policy_activations import record_when_possible

    # The configuration, the port and the database are checked before the web stack is
    # imported (about 0.7 s of CPU): a refusal comes at once.
    settings = settings_or_fail()
    _check_can_listen(host, port)
    configure_logging()  # before the schema check, whose connection may log (a pooler)
    answered = _check_schema(settings.database_url)
    container = container_or_fail(settings)
    import uvicorn  # here: after the checks, before anything is recorded

    from enforcement.api.app import create_app
    from enforcement.api.keep_alive import HTTP_PROTOCOL

    # The policy this process decides with, in force from now on (``policy_activations``); not
    # waited for when the database did not answer: ``/healthz`` says so meanwhile.
    record_when_possible(container.engine, container.policy, container.clock, wait=answered)
    if workers and container.settings.embedded:
        from enforcement.workers.runtime import install_embedded_workers

        install_embedded_workers(container)
    application = create_app(container, run_workers=workers)
    uvicorn.run(
        application,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        http=HTTP_PROTOCOL,  # spares a keep-alive connection with a request waiting
        timeout_keep_alive=keep_alive,
    )


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


def _check_schema(url: str) -> bool:
    """Exit 2 if the database has no schema, or an older revision than this release's: serving
    it would answer requests with errors, and a worker's relay would fail on it until stopped.
    A database that does not answer yet is left to ``/healthz`` (503 until it does) and to the
    relay's retries; one at a revision this release does not know (a newer release's) is
    served, as during a rolling upgrade. Whether the database answered."""
    from enforcement.schema_revisions import current_revision, release_revisions

    require_sqlite_file(url)
    try:
        revision = current_revision(url, connect_timeout=SCHEMA_CHECK_TIMEOUT_SECONDS)
    except sqlalchemy_errors.DBAPIError as exc:
        # Refused credentials or a database that does not exist will not mend by waiting.
        # psycopg gives no SQLSTATE for a failed connection: the server's FATAL text, then.
        orig = getattr(exc, "orig", None)
        if getattr(orig, "sqlstate", None) in NOT_BY_WAITING or any(
            text in str(orig) for text in NOT_BY_WAITING_TEXT
        ):
            fail(database_error(exc))
        return False
    except ValueError as exc:  # several revisions recorded: no release of these migrations
        fail(f"The database {redacted(url)} cannot be used: {exc}.")
    head, known = release_revisions()
    if revision is None:
        fail(f"The database {redacted(url)} has no schema; run `enforcement init` to create it.")
    if is_older(revision, head, known):
        fail(older_schema(url, revision, head))
    return True


@app.command()
def worker() -> None:
    """Run the relay, the deadline sweep and Dramatiq worker processes (needs Redis)."""
    from enforcement.logs import configure_logging

    settings = settings_or_fail()
    if settings.redis_url is None:
        fail(
            "enforcement worker needs ENFORCEMENT_REDIS_URL; in embedded mode "
            "`enforcement serve` runs the workers itself."
        )
    load_policy_or_fail(settings.policy_file)  # before the processes start: one sentence
    configure_logging()
    answered = _check_schema(settings.database_url)  # an upgrade's worker started before `init`
    from enforcement.workers.runtime import run_worker_processes  # Dramatiq: after the checks

    status = run_worker_processes(settings, record_at_once=answered)
    if status:
        raise typer.Exit(status)
