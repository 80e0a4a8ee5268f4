"""Which of this process's open files are on a path (tests of what a function leaves open)."""

from __future__ import annotations

import os
from pathlib import Path


def files_open_here(path: Path) -> list[str]:
    """This process's open files on ``path`` (Linux lists them under /proc/self/fd)."""
    fds = Path("/proc/self/fd")
    return [fd.name for fd in fds.iterdir() if os.path.realpath(fd) == os.path.realpath(path)]
