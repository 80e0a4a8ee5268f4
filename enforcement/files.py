"""Files the service writes whole or not at all (an ``.eml`` notice, an export, a backup)."""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

# Where a file system has no hard links, ``os.link`` fails with one of these.
_NO_HARD_LINKS = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK})


def replace_durably(target: Path, chunks: Iterable[bytes], mode: int) -> None:
    """Write ``chunks`` to ``target`` whole or not at all, with ``mode``, on disk before this
    returns: written to a ``new_part`` first, renamed over ``target`` once complete and synced
    (``put_in_place``), so a reader never sees half a file; the part is removed if anything
    fails, ``chunks`` included."""
    fd, partial = new_part(target, mode)
    try:
        with open(fd, "wb") as file:
            for chunk in chunks:
                file.write(chunk)
            file.flush()
            os.fsync(fd)
        put_in_place(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def new_part(target: Path, mode: int) -> tuple[int, Path]:
    """An empty file with ``mode`` beside ``target``, to be written and then put in its place:
    its open descriptor and its path. Its name is its own (``mkstemp``: two writers never share
    it, and a link planted in the directory is never followed) and hidden
    (``.<name>.*.part``). The caller removes it if it is not put in place."""
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        os.fchmod(fd, mode)
    except BaseException:
        os.close(fd)
        Path(name).unlink(missing_ok=True)
        raise
    return fd, Path(name)


def put_in_place(partial: Path, target: Path, *, replace: bool = True) -> None:
    """Give the complete, synced ``partial`` the name ``target``, and sync the directory, so
    the new name survives a crash. ``replace=False`` never replaces a file that has the name by
    then (``FileExistsError``, ``partial`` left as it is): a hard link, which fails on a name
    that exists, then the part's name removed; where the file system has no hard links, a
    rename after a look (which a writer of the same name at that instant can still race)."""
    if replace:
        partial.replace(target)
    else:
        try:
            os.link(partial, target)
        except FileExistsError:
            raise
        except OSError as exc:
            if exc.errno not in _NO_HARD_LINKS:
                raise
            if os.path.lexists(target):
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(target)) from exc
            partial.rename(target)
        else:
            partial.unlink()
    directory = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
