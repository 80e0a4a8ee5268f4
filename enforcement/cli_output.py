"""How the CLI talks: Rich on stdout, one clear sentence on stderr for errors; a reader that
stops reading (``enforcement export | head -1``) ends the command quietly (``OutputClosed``)."""

from __future__ import annotations

import os
import sys
from typing import NoReturn, TextIO

from rich.console import Console


def _width() -> int | None:
    """Rich lays out for 80 columns when stdout is no terminal, which breaks ids, URLs and event
    types mid-word in a pipe or a file. There, unless ``COLUMNS`` says otherwise, lines are as
    long as their content (up to 1,000 columns); on a terminal, its width."""
    if os.environ.get("COLUMNS") or sys.stdout.isatty():
        return None
    return 1000


class OutputClosed(Exception):
    """The reader of the command's output (or of its notes on stderr) went away before all of
    it was written: ``enforcement.cli.main`` ends the command quietly, as ``cat`` ends."""


class CliConsole(Console):
    """Rich's console, but a pipe whose reader has gone raises ``OutputClosed``: Rich's own
    ``on_broken_pipe`` raises ``SystemExit(1)``, the status that says a check failed."""

    def on_broken_pipe(self) -> None:
        self.quiet = True  # nothing more is written
        raise OutputClosed("the reader of the output went away")


# No emoji codes: ``:ok:`` in an account id (``tenant:ok:42`` is one) or a file name is text.
console = CliConsole(width=_width(), emoji=False)
err_console = CliConsole(stderr=True, emoji=False)

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """Print ``message`` as one sentence on stderr and exit with ``code``."""
    try:
        err_console.print(message, markup=False, highlight=False, soft_wrap=True)
    except OutputClosed:  # nobody reads stderr (``2>&1 | true``): the status still says it
        discard(sys.stderr)
    sys.exit(code)


def say(*lines: str) -> None:
    """Print ``lines`` on stdout as written, whatever the terminal's width (a script may read
    them), never read as Rich markup."""
    for line in lines:
        console.print(line, markup=False, highlight=False, soft_wrap=True)


def discard(stream: TextIO) -> None:
    """Send what ``stream`` (stdout or stderr, whose reader went away) still holds, and any
    later write, to nowhere: Python's flush at exit would fail on it, print "Exception ignored"
    and exit 120."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no file descriptor (replaced in a test): nothing to flush
        pass
