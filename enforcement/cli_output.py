"""How the CLI talks: Rich on stdout, one clear sentence on stderr for errors."""

from __future__ import annotations

import os
import sys
from typing import NoReturn

from rich.console import Console


def _width() -> int | None:
    """Rich lays out for 80 columns when stdout is no terminal, which breaks ids, URLs and event
    types mid-word in a pipe or a file. There, unless ``COLUMNS`` says otherwise, lines are as
    long as their content (up to 1,000 columns); on a terminal, its width."""
    if os.environ.get("COLUMNS") or sys.stdout.isatty():
        return None
    return 1000


# No emoji codes: ``:ok:`` in an account id (``tenant:ok:42`` is one) or a file name is text.
console = Console(width=_width(), emoji=False)
err_console = Console(stderr=True, emoji=False)

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """Print ``message`` as one sentence on stderr and exit with ``code``."""
    err_console.print(message, markup=False, highlight=False, soft_wrap=True)
    sys.exit(code)
