"""Open files: which of this process's are on a path, and another process that holds a SQLite
database open (tests of what a function leaves open, and of what it refuses while another has
the database)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def files_open_here(path: Path) -> list[str]:
    """This process's open files on ``path`` (Linux lists them under /proc/self/fd)."""
    fds = Path("/proc/self/fd")
    return [fd.name for fd in fds.iterdir() if os.path.realpath(fd) == os.path.realpath(path)]


@contextmanager
def another_process_with(database: Path, statement: str) -> Iterator[None]:
    """A Python process that has connected to ``database`` and run ``statement`` (``select
    1`` reads nothing of the file, so SQLite holds no lock; reading a table takes one), until
    the block ends."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
            "c.execute(sys.argv[2]).fetchall(); print('open', flush=True); sys.stdin.read()",
            str(database),
            statement,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None and process.stdout.readline() == "open\n"
        yield
    finally:
        process.communicate("", timeout=30)
