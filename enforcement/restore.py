"""Putting a SQLite backup in the database's place (``enforcement restore``): only while no
other process uses the database, and keeping the database it replaces, with the files SQLite
keeps beside it, under a name of its own.

PostgreSQL is restored with ``pg_restore`` (docs/operations.md, "Backups and restore").
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Callable
from contextlib import suppress
from datetime import datetime
from pathlib import Path

# What SQLite keeps beside a database, and applies to whatever file has the database's name:
# an old -wal beside a restored file would put the old database's later pages into it.
SIDE_FILES = ("-wal", "-shm", "-journal")
COPY_CHUNK = 1 << 20
# SQLite's locks on a database file (its unix VFS; https://www.sqlite.org/lockingv3.html): a
# connection that reads holds a read lock on the shared range (in WAL mode for as long as it is
# open), and an exclusive lock is a write lock on the pending byte and on that range.
PENDING_BYTE = 0x40000000
SHARED_FIRST, SHARED_SIZE = PENDING_BYTE + 2, 510


class InUse(Exception):
    """Another process uses the database; the message is one sentence."""


class RestoreError(Exception):
    """The backup cannot be put in place; the message is one sentence."""


class DatabaseHold:
    """No other process uses the database while this holds it (``take``): neither one that has
    it open nor one that starts meanwhile (which waits, as for any writer).

    Two locks: the relay leader's file lock (``<database>.leader``, which a ``serve`` or a
    worker that leads holds while it runs), and SQLite's exclusive lock on the database, which
    no other connection that has the file open lets it take. That one is taken on the file
    itself, as SQLite takes it, not through a connection of SQLite's: closed, that connection
    would fold the -wal into the database, which a restore that does not happen must leave as
    it is (and its locks would not cover a file SQLite cannot read, the one most often
    restored over). Like any POSIX lock it is the process's: nothing else here may open and
    close the database file while it is held."""

    def __init__(self, database: Path) -> None:
        self.database = database
        self._leader: int | None = None
        self._file: int | None = None

    def take(self) -> None:
        """Take both locks, or raise ``InUse`` (or ``RestoreError``) holding neither."""
        try:
            self._leader = self._lock(
                Path(f"{self.database}.leader"),
                "a serve or a worker leads the relay on it",
                (0, 0),
            )
            self._file = self._lock(
                self.database,
                "another process has it open (a serve, a worker, a command or a sqlite3 shell)",
                (1, PENDING_BYTE),
                (SHARED_SIZE, SHARED_FIRST),
            )
            opener = other_opener(self.database)
            if opener is not None:
                raise InUse(
                    f"The database {self.database} is in use: {opener} has it open; stop it, "
                    "then run the restore again."
                )
        except BaseException:
            self.release()
            raise

    def _lock(self, path: Path, holder: str, *ranges: tuple[int, int]) -> int | None:
        """Write-lock ``ranges`` (length, start; (0, 0): the whole file, with ``flock`` as
        ``LeaderLock`` takes it) of ``path`` at once; None when there is no such file."""
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise RestoreError(f"Cannot open {path}: {exc.strerror or exc}.") from exc
        try:
            for length, start in ranges:
                if length == 0:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                else:
                    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, length, start)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise InUse(
                    f"The database {self.database} is in use: {holder}; stop it, then run the "
                    "restore again."
                ) from None
            raise RestoreError(f"Cannot lock {path}: {exc.strerror or exc}.") from exc
        return fd

    def release(self) -> None:
        """Let go of both locks (closing a file releases its locks)."""
        for fd in (self._file, self._leader):
            if fd is not None:
                os.close(fd)
        self._file = self._leader = None


def other_opener(database: Path, proc: Path = Path("/proc")) -> str | None:
    """Another process that has ``database`` open, as ``process <pid> (<name>)``, or None.

    SQLite's locks see only a connection that has read the database: one that has opened it
    and read nothing yet (a ``sqlite3`` shell just started) holds none, and would read the
    file moved aside once it does. Its open file is seen where the system lists them
    (``/proc``, Linux), for the processes this user may look into (root: all); elsewhere, or
    where it may not look, nothing is found."""
    try:
        wanted = database.stat()
        pids = [entry.name for entry in os.scandir(proc) if entry.name.isdigit()]
    except OSError:
        return None
    for pid in pids:
        if int(pid) == os.getpid():
            continue
        try:
            fds = list(os.scandir(proc / pid / "fd"))
        except OSError:
            continue  # gone, or not ours to look into
        for fd in fds:
            try:
                opened = os.stat(fd.path)
            except OSError:
                continue
            if (opened.st_dev, opened.st_ino) == (wanted.st_dev, wanted.st_ino):
                with suppress(OSError):
                    name = (proc / pid / "comm").read_text().strip()
                    return f"process {pid} ({name})"
                return f"process {pid}"
    return None


def copy_file(source: Path, fd: int, progress: Callable[[int, int], None] | None = None) -> None:
    """Copy ``source`` into the open, empty file ``fd`` as it is, reporting (bytes copied,
    bytes in all)."""
    total = source.stat().st_size
    done = 0
    with source.open("rb") as reader:
        while chunk := reader.read(COPY_CHUNK):
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]
            done += len(chunk)
            if progress is not None:
                progress(done, total)


def aside_name(database: Path, now: datetime) -> Path:
    """A name for the database that a restore replaces: its own name, ``before-restore`` and
    the time (UTC), with a number added should a file of that name (or one SQLite keeps beside
    it) exist already."""
    stem = f"{database.name}.before-restore-{now.strftime('%Y%m%dT%H%M%SZ')}"
    for number in range(1, 1000):
        name = database.with_name(stem if number == 1 else f"{stem}-{number}")
        if not any(os.path.lexists(f"{name}{suffix}") for suffix in ("", *SIDE_FILES)):
            return name
    raise RestoreError(f"No free name for the database beside {database}.")


def move_aside(database: Path, aside: Path) -> list[str]:
    """Rename the database and each file SQLite keeps beside it to ``aside`` (with the same
    suffixes, so that SQLite opens ``aside`` as the database was); the suffixes moved ("" for
    the database). On a failure, what was moved is put back."""
    moved: list[str] = []
    try:
        for suffix in ("", *SIDE_FILES):
            source = Path(f"{database}{suffix}")
            if os.path.lexists(source):
                source.rename(f"{aside}{suffix}")
                moved.append(suffix)
    except OSError as exc:
        move_back(database, aside, moved)
        raise RestoreError(f"Cannot move {database} aside: {exc.strerror or exc}.") from exc
    return moved


def move_back(database: Path, aside: Path, moved: list[str]) -> None:
    """Undo ``move_aside`` (as far as it can)."""
    for suffix in reversed(moved):
        with suppress(OSError):
            Path(f"{aside}{suffix}").rename(f"{database}{suffix}")


def describe_moved(aside: Path, moved: list[str]) -> str:
    """What ``move_aside`` moved, in a few words."""
    if not moved:
        return "There was no database to replace."
    beside = [suffix for suffix in moved if suffix]
    files = f" (with its {' and '.join(beside)})" if beside else ""
    if "" not in moved:
        return f"The files {', '.join(beside)} that were beside no database were moved to {aside}."
    return f"The database it replaced was moved to {aside}{files}; delete it once you are sure."
