"""Files the service writes whole or not at all (an ``.eml`` notice, an export)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path


def replace_durably(target: Path, chunks: Iterable[bytes], mode: int) -> None:
    """Write ``chunks`` to ``target`` whole or not at all, with ``mode``, on disk before this
    returns. The part written first has a name of its own beside ``target`` (``mkstemp``: two
    writers never share it, and a link planted in the directory is never followed), hidden
    (``.<name>.*.part``), and is renamed over ``target`` once complete and synced, so a reader
    never sees half a file; it is removed if anything fails, ``chunks`` included. The directory
    is synced too, so the rename survives a crash."""
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    partial = Path(name)
    try:
        with open(fd, "wb") as file:
            os.fchmod(fd, mode)
            for chunk in chunks:
                file.write(chunk)
            file.flush()
            os.fsync(fd)
        partial.replace(target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    directory = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
