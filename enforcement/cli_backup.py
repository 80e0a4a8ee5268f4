"""``enforcement backup PATH``: a checked copy of the SQLite database, taken while it serves.

Registered on ``enforcement.cli.app`` when that module is imported (it imports this one last).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Annotated

import typer

from enforcement.cli import _redacted, _require_sqlite_file, _settings, app
from enforcement.cli_output import EXIT_CHECK_FAILED, console, fail

BACKUP_FILE_MODE = 0o600  # it holds what the database holds (contacts, descriptions, tokens)


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
    """Copy the SQLite database to PATH while the service runs, then check the copy: SQLite's
    integrity_check, its schema revision and every hash chain. Exit 1 if the check fails (PATH
    is then left as it was). On PostgreSQL, use pg_dump (docs/operations.md)."""
    from enforcement.backup import BackupError, check_copy, companions, copy_sqlite, remove_part
    from enforcement.files import new_part, put_in_place
    from enforcement.progress import progress_bar
    from events.dialects import sqlite_file

    url = _settings().database_url
    database = sqlite_file(url)
    if database is None:
        if url.startswith("sqlite"):
            fail(f"{_redacted(url)} is a database in memory: there is no file to back up.")
        fail(
            "enforcement backup copies a SQLite database file; back up PostgreSQL with "
            "pg_dump --format=custom (or pg_basebackup for a base backup), as "
            'docs/operations.md, "Backups and restore", shows.'
        )
    _require_sqlite_file(url)
    target, mode = _backup_target(path, overwrite, companions(Path(database)))

    try:
        fd, partial = new_part(target, mode)
    except OSError as exc:
        fail(f"Cannot write {path}: {exc.strerror or exc}.")
    placed = False
    try:
        with progress_bar() as bar:
            task = bar.add_task("copying", total=None, unit="pages")
            revision = copy_sqlite(
                Path(database),
                partial,
                lambda done, total: bar.update(task, completed=done, total=total),
            )
        check = check_copy(partial)
        if check.problems:
            fail(
                f"The copy failed its check: {'; '.join(check.problems)}; {path} was left as "
                "it was.",
                EXIT_CHECK_FAILED,
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
    for line in (
        f"Backed up {database} to {path}: {check.events:,} events of {check.accounts:,} "
        f"account(s), last position {check.last_position:,}, schema revision {revision}, "
        f"{_size(check.size)}.",
        f"Checked the copy: integrity_check ok, {check.accounts} of {check.accounts} account "
        "chain(s) intact.",
    ):
        # As written, whatever the terminal's width: a script may read the figures.
        console.print(line, markup=False, highlight=False, soft_wrap=True)


def _backup_target(path: Path, overwrite: bool, database_files: set[str]) -> tuple[Path, int]:
    """The file to write (a symbolic link's file, not the link) and its mode: a new file's
    ``BACKUP_FILE_MODE``, or the mode of the file ``--overwrite`` replaces. Exit 2 for a PATH
    that exists without ``--overwrite``, a directory or a device, or the database itself."""
    target = Path(os.path.realpath(path))
    if str(target) in database_files:
        fail(f"{path} is the database or a file SQLite keeps beside it; choose another PATH.")
    try:
        mode = target.stat().st_mode
    except FileNotFoundError:  # a new file (or a link to none yet: the file it names)
        return target, BACKUP_FILE_MODE
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
