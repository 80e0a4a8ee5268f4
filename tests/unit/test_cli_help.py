"""``enforcement --help``: the command list a newcomer reads first."""

from __future__ import annotations

import typer
from typer.testing import CliRunner

from enforcement.cli import app


def test_every_command_is_summed_up_on_one_line_of_the_command_list() -> None:
    """Typer keeps the line breaks of a docstring's first paragraph: a summary written over
    several lines came out as ragged rows (backup, restore and webhook-key did)."""
    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    panel = result.output[result.output.index("Commands") :].splitlines()[1:]
    rows = [line.strip("│ ").strip() for line in panel if line.startswith("│")]
    names = [row.split()[0] for row in rows if row]
    assert sorted(names) == sorted(commands)  # one row per command, none continued
