"""Rich progress bars with a rate column, for long work (verify, replay, export)."""

from __future__ import annotations

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from enforcement.cli_output import CliConsole


class RateColumn(ProgressColumn):
    """``12,345 events/s`` (or accounts/s): the unit is the task's ``unit`` field."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        unit = task.fields.get("unit", "items")
        return Text("-" if speed is None else f"{speed:,.0f} {unit}/s", style="cyan")


def progress_bar(enabled: bool = True) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        console=CliConsole(stderr=True),
        disable=not enabled,
        transient=False,
        # Rich's default takes what is written to stdout while a bar is drawn and prints it on
        # the bar's console (stderr): ``export > log.jsonl`` in a terminal wrote its lines there.
        redirect_stdout=False,
        redirect_stderr=False,
    )
