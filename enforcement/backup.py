"""Online backups of the SQLite database (``enforcement backup``): a consistent copy of the file
while the service writes, then checked as a restore would use it.

PostgreSQL has its own tools (``pg_dump``, base backups): docs/operations.md, "Backups and
restore".
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import sqlalchemy as sa

from events.dialects import storage_full

# Pages copied per step of SQLite's backup (4 MiB of 4 KiB pages): how often the progress bar
# moves. The steps read one snapshot (``copy_sqlite``), so their number changes nothing else.
PAGES_PER_STEP = 1024

Progress = Callable[[int, int], None]  # (pages copied, pages in all)


class BackupError(Exception):
    """The database cannot be copied (no schema, unreadable, the copy cannot be written); the
    message is one sentence."""


def copy_sqlite(
    source: Path,
    target: Path,
    progress: Progress | None = None,
    pages_per_step: int = PAGES_PER_STEP,
) -> str:
    """Copy the database ``source`` into the empty file ``target`` with SQLite's online backup,
    while other connections and processes go on writing; returns its schema revision.

    The copy is the database as one read transaction sees it, held from the first step to the
    last: in WAL mode that blocks no writer, and SQLite's backup, which otherwise starts over
    whenever another connection writes between two steps (and under steady writes may never
    finish), copies that snapshot page by page, so ``progress`` only moves forward."""
    try:
        reader = sqlite3.connect(
            f"file:{quote(str(source))}?mode=rw", uri=True, isolation_level=None, timeout=60
        )
    except sqlite3.Error as exc:
        raise BackupError(f"The database {source} cannot be opened ({exc}).") from exc
    try:
        reader.execute("BEGIN")
        try:
            # The first read fixes the snapshot that every step copies.
            row = reader.execute("SELECT version_num FROM alembic_version").fetchone()
        except sqlite3.OperationalError as exc:
            if "no such table" not in str(exc):
                raise
            row = None
        if row is None:
            raise BackupError(
                f"The database {source} has no schema; run `enforcement init` to create it."
            )
        writer = sqlite3.connect(target, isolation_level=None)
        try:
            reader.backup(
                writer,
                pages=pages_per_step,
                progress=None
                if progress is None
                else lambda _status, remaining, total: progress(total - remaining, total),
            )
        finally:
            writer.close()
        return str(row[0])
    except sqlite3.Error as exc:
        if storage_full(exc):  # the copy's: the database is only read
            raise BackupError(
                f"The database {source} could not be copied: the disk it is copied to is full "
                f"({exc})."
            ) from exc
        raise BackupError(f"The database {source} could not be copied ({exc}).") from exc
    finally:
        reader.close()  # ends the read transaction


@dataclass(frozen=True)
class CopyCheck:
    """What a check of a copy found: SQLite's ``integrity_check``, the schema revision, every
    chain, and the figures of what the copy holds."""

    integrity: list[str]
    revision: str | None
    known_revision: bool
    broken: list[dict[str, Any]] = field(default_factory=list)
    unreadable: str | None = None  # why its log could not be read to the end
    events: int = 0
    accounts: int = 0
    last_position: int = 0
    size: int = 0

    @property
    def problems(self) -> list[str]:
        """Each failed check in a few words; none when the copy is sound."""
        found = []
        if self.integrity != ["ok"]:
            shown = "; ".join(self.integrity[:3])
            more = f" and {len(self.integrity) - 3} more" if len(self.integrity) > 3 else ""
            found.append(f"SQLite's integrity_check says {shown}{more}")
        if self.revision is None:
            found.append("it has no schema revision")
        elif not self.known_revision:
            found.append(f"its schema revision {self.revision} is not one this release knows")
        if self.unreadable is not None:
            found.append(f"its log could not be read ({self.unreadable})")
        if self.broken:
            first = self.broken[0]
            found.append(
                f"{len(self.broken)} account chain(s) are broken, the first "
                f"{first['account_id']} at version {first['broken_at_version']}: {first['reason']}"
            )
        return found


def check_copy(path: Path, show_progress: bool = True) -> CopyCheck:
    """Check the SQLite database at ``path`` as a restore would use it: ``PRAGMA
    integrity_check``, a schema revision of this release's migrations, and every hash chain
    (``EventStore.verify_all``); with its figures (events, accounts, last position, size)."""
    from enforcement.auditing import verify_accounts
    from enforcement.schema_revisions import release_revisions
    from events import EventStore
    from events.dialects import create_engine
    from events.schema import events

    revision = None
    with closing(sqlite3.connect(path)) as conn:  # none of the service's settings
        try:
            # Damage past what it can list (a page that is no page at all) is an error.
            integrity = [str(row[0]) for row in conn.execute("PRAGMA integrity_check")]
            row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
            revision = None if row is None else str(row[0])
        except sqlite3.DatabaseError as exc:
            integrity = [str(exc)]
    known = revision in release_revisions()[1]
    if integrity != ["ok"] or revision is None:
        return CopyCheck(integrity, revision, known, size=path.stat().st_size)
    engine = create_engine(sa.URL.create("sqlite", database=str(path)).render_as_string())
    try:
        store = EventStore(engine)
        results = verify_accounts(store, None, show_progress=show_progress)
        with engine.connect() as counting:
            count = counting.execute(sa.select(sa.func.count()).select_from(events)).scalar_one()
        last = store.max_position()
    except sa.exc.DatabaseError as exc:  # what integrity_check let pass, should there be any
        reason = str(exc.orig or exc).strip().splitlines()[0]
        return CopyCheck(integrity, revision, known, unreadable=reason, size=path.stat().st_size)
    finally:
        engine.dispose()  # SQLite folds its -wal back and removes it: the file is whole
    return CopyCheck(
        integrity,
        revision,
        known,
        broken=[r for r in results if not r["ok"]],
        events=int(count),
        accounts=len(results),
        last_position=last,
        size=path.stat().st_size,
    )


def remove_part(partial: Path) -> None:
    """Remove a copy that was not put in place, and any file SQLite kept beside it."""
    for suffix in ("", "-journal", "-wal", "-shm"):
        Path(f"{partial}{suffix}").unlink(missing_ok=True)


def companions(database: Path) -> set[str]:
    """The real paths of the database file and the files SQLite and the workers keep beside it,
    which a backup must never replace."""
    real = os.path.realpath(database)
    return {real, *(real + suffix for suffix in ("-wal", "-shm", "-journal", ".leader"))}
