"""``enforcement backup PATH``: a checked copy of the SQLite database, taken while it serves;
``enforcement restore BACKUP``: a checked backup put in the database's place while nothing runs.

Registered on ``enforcement.cli.app`` when that module is imported (it imports this one last).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from enforcement.cli import app, redacted, require_sqlite_file, settings_or_fail
from enforcement.cli_output import EXIT_CHECK_FAILED, fail, say

if TYPE_CHECKING:
    from enforcement.backup import CopyCheck, Progress


@app.command()
def backup(
    path: Annotated[Path, typer.Argument(help="The backup file to create.")],
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite", help="Replace PATH if it exists, once the new copy passed its check."
        ),
    ] = False,
) -> None:
    """Copy the SQLite database to PATH while the service runs, and check the copy.

    The check: SQLite's integrity_check, its schema revision and every hash chain. Exit 1 if it
    fails (PATH is then left as it was). On PostgreSQL, use pg_dump (docs/operations.md)."""
    from enforcement.backup import BackupError, companions, copy_sqlite, remove_part
    from enforcement.files import new_part, put_in_place

    url = settings_or_fail().database_url
    database = _database_file(
        url,
        "back up",
        "enforcement backup copies a SQLite database file; back up PostgreSQL with "
        "pg_dump --format=custom (or pg_basebackup for a base backup), as "
        'docs/operations.md, "Backups and restore", shows.',
    )
    require_sqlite_file(url)
    target, mode = _backup_target(path, overwrite, companions(database))

    try:
        fd, partial = new_part(target, mode)
    except OSError as exc:
        fail(f"Cannot write {path}: {exc.strerror or exc}.")
    placed = False
    try:
        check = _copy_and_check(
            lambda progress: copy_sqlite(database, partial, progress),
            partial,
            "pages",
            failed=f"The copy failed its check: {{}}; {path} was left as it was.",
        )
        os.fsync(fd)
        put_in_place(partial, target, replace=overwrite)
        placed = True
    except BackupError as exc:
        fail(str(exc).rstrip(".") + f"; {path} was left as it was.")
    except FileExistsError:
        fail(f"{path} was created while the copy was made; it was left as it was.")
    except OSError as exc:
        fail(f"Cannot write {path}: {exc.strerror or exc}.")
    finally:
        os.close(fd)
        if not placed:
            remove_part(partial)
    say(
        f"Backed up {database} to {path}: {_figures(check)}.",
        f"Checked the copy: {_intact(check)}.",
    )


@app.command()
def restore(
    backup: Annotated[Path, typer.Argument(help="The backup file to put in place.")],
) -> None:
    """Put the SQLite backup BACKUP in the database's place, once checked.

    The check is the one enforcement backup makes (exit 1 if it fails: the database is left as
    it was). Refused while any process has the database open: stop serve and the workers first.
    The database it replaces, with its -wal and -shm, is moved aside under a timestamped name,
    never deleted. On PostgreSQL, use pg_restore (docs/operations.md)."""
    from datetime import UTC, datetime

    from enforcement.backup import companions, remove_part
    from enforcement.files import new_part, put_in_place
    from enforcement.restore import (
        DatabaseHold,
        InUse,
        RestoreError,
        aside_name,
        copy_file,
        describe_moved,
        move_aside,
        move_back,
    )
    from events.dialects import DATABASE_FILE_MODE

    settings = settings_or_fail()
    live = _database_file(
        settings.database_url,
        "restore",
        "enforcement restore puts back a SQLite backup; restore PostgreSQL with pg_restore "
        'into a new database, as docs/operations.md, "Backups and restore", shows.',
    )
    source = _backup_source(backup, companions(live))
    hold = DatabaseHold(live)
    try:
        hold.take()
    except (InUse, RestoreError) as exc:
        fail(str(exc))
    try:
        try:
            mode = stat.S_IMODE(live.stat().st_mode)
        except FileNotFoundError:
            mode = DATABASE_FILE_MODE
        try:
            fd, partial = new_part(live, mode)
        except OSError as exc:
            fail(f"Cannot write beside {live}: {exc.strerror or exc}.")
        placed = False
        try:
            check = _copy_and_check(
                lambda progress: copy_file(source, fd, progress),
                partial,
                "bytes",
                failed=f"The backup failed its check: {{}}; the database {live} was left as "
                "it was.",
            )
            os.fsync(fd)  # as checked (the check opened it)
            aside = aside_name(live, datetime.now(UTC))
            moved = move_aside(live, aside)
            try:
                put_in_place(partial, live, replace=False)
            except FileExistsError:
                fail(
                    f"{live} was created while the backup was put in place (a serve or worker "
                    f"starting?); it was left as it was. {describe_moved(aside, moved)}"
                )
            except OSError:
                move_back(live, aside, moved)
                raise
            placed = True
        except RestoreError as exc:
            fail(str(exc))
        except OSError as exc:
            fail(f"Cannot restore {live}: {exc.strerror or exc}; it was left as it was.")
        finally:
            os.close(fd)
            if not placed:
                remove_part(partial)
    finally:
        hold.release()
    redis = (
        []
        if settings.redis_url is None
        else [
            "Redis needs nothing: the leading worker sees, as it starts, that Redis followed "
            "events this log does not have, and brings the gate back to the log (it logs a "
            "warning)."
        ]
    )
    say(
        f"Restored {live} from {backup}: {_figures(check)}.",
        f"Checked the backup first: {_intact(check)}.",
        describe_moved(aside, moved),
        "Next: `enforcement init` (it upgrades a backup of an earlier release), then start serve "
        "and the workers. Everything recorded after the backup was taken is gone: "
        'docs/operations.md, "What a restore means".',
        *redis,
    )


def _database_file(url: str, verb: str, not_sqlite: str) -> Path:
    """The SQLite database file of ``url``; exit 2 for a database in memory (nothing to
    ``verb``) or one that is not SQLite (``not_sqlite`` says what to use instead)."""
    from events.dialects import sqlite_file

    database = sqlite_file(url)
    if database is None:
        if url.startswith("sqlite"):
            fail(f"{redacted(url)} is a database in memory: there is no file to {verb}.")
        fail(not_sqlite)
    return Path(database)


def _copy_and_check(
    copy: Callable[[Progress], object], partial: Path, unit: str, *, failed: str
) -> CopyCheck:
    """Run ``copy`` (into ``partial``) with a progress bar in ``unit``, then check the part as a
    restore would use it (``backup.check_copy``); exit 1 with ``failed``, its ``{}`` replaced by
    the problems found, when the check does not pass."""
    from enforcement.backup import check_copy
    from enforcement.progress import progress_bar

    with progress_bar() as bar:
        task = bar.add_task("copying", total=None, unit=unit)
        copy(lambda done, total: bar.update(task, completed=done, total=total))
    check = check_copy(partial)
    if check.problems:
        fail(failed.format("; ".join(check.problems)), EXIT_CHECK_FAILED)
    return check


def _backup_source(backup: Path, database_files: set[str]) -> Path:
    """The backup file to read (a symbolic link's file); exit 2 for one that does not exist, is
    no regular file, or is the database itself or a file SQLite keeps beside it."""
    source = Path(os.path.realpath(backup))
    if str(source) in database_files:
        fail(f"{backup} is the database or a file SQLite keeps beside it; name a backup file.")
    try:
        mode = source.stat().st_mode
    except OSError as exc:
        fail(f"Cannot read {backup}: {exc.strerror or exc}.")
    if not stat.S_ISREG(mode):
        fail(f"{backup} is not a regular file; name a backup file.")
    if os.path.isfile(f"{source}-wal") and os.path.getsize(f"{source}-wal") > 0:
        fail(
            f"{backup} has a -wal beside it, so the file alone is not the whole backup; once no "
            "process has it open, open it with sqlite3 (which folds the -wal in), then run the "
            "restore again."
        )
    return source


def _figures(check: CopyCheck) -> str:
    return (
        f"{check.events:,} events of {check.accounts:,} account(s), last position "
        f"{check.last_position:,}, schema revision {check.revision}, {_size(check.size)}"
    )


def _intact(check: CopyCheck) -> str:
    return f"integrity_check ok, {check.accounts} of {check.accounts} account chain(s) intact"


def _backup_target(path: Path, overwrite: bool, database_files: set[str]) -> tuple[Path, int]:
    """The file to write (a symbolic link's file, not the link) and its mode: a new file's
    ``DATABASE_FILE_MODE`` (it holds what the database holds), or the mode of the file
    ``--overwrite`` replaces. Exit 2 for a PATH that exists without ``--overwrite``, a directory
    or a device, or the database itself."""
    from events.dialects import DATABASE_FILE_MODE

    target = Path(os.path.realpath(path))
    if str(target) in database_files:
        fail(f"{path} is the database or a file SQLite keeps beside it; choose another PATH.")
    try:
        mode = target.stat().st_mode
    except FileNotFoundError:  # a new file (or a link to none yet: the file it names)
        return target, DATABASE_FILE_MODE
    except OSError as exc:
        fail(f"Cannot use {path}: {exc.strerror or exc}.")
    if stat.S_ISDIR(mode):
        fail(f"{path} is a directory; name the backup file in it, such as {path}/enforcement.db.")
    if not overwrite:
        fail(f"{path} exists already; choose another PATH, or pass --overwrite to replace it.")
    if not stat.S_ISREG(mode):
        fail(f"{path} is not a regular file; choose another PATH.")
    return target, stat.S_IMODE(mode)


def _size(size: int) -> str:
    return f"{size / 2**20:,.1f} MiB" if size >= 2**20 else f"{size / 2**10:,.1f} KiB"
