"""How the CLI talks: Rich on stdout, one clear sentence on stderr for errors."""

from __future__ import annotations

import sys
from typing import NoReturn

from rich.console import Console

console = Console()
err_console = Console(stderr=True)

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """Print ``message`` as one sentence on stderr and exit with ``code``."""
    err_console.print(message, markup=False, highlight=False, soft_wrap=True)
    sys.exit(code)
