"""``enforcement --help``: the command list a newcomer reads first; each command's ``--help``
says its docstring in paragraphs that the terminal wraps, not in the source's lines wrapped once
more (``enforcement.cli.reflowed_help``)."""

from __future__ import annotations

import inspect
import sys

import pytest
import typer
from typer.testing import CliRunner

from enforcement.cli import app, main


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


def test_no_command_prints_the_help_and_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``enforcement`` alone: the help (the command list) on stdout, nothing more on stderr,
    and a usage error's status."""
    monkeypatch.setattr(sys, "argv", ["enforcement"])
    with pytest.raises(SystemExit) as exited:
        main()
    out, err = capsys.readouterr()
    assert exited.value.code == 2
    assert "Commands" in out and "Usage:" in out
    assert "Enforcement backend for the TaaS API Service Acceptable Use Policy." in out
    assert "--install-completion" not in out  # no shell-completion options
    assert err == ""


def test_a_command_group_alone_prints_its_help() -> None:
    """``enforcement tokens`` alone: the group's help (its summary and commands), not just
    "Missing command"."""
    result = CliRunner().invoke(app, ["tokens"], env={"COLUMNS": "300"})
    assert result.exit_code == 2
    assert "Manage API tokens." in result.output
    assert all(command in result.output for command in ("create", "list", "revoke"))


def commands(typer_app: typer.Typer, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [
        (*prefix, str(info.name or info.callback.__name__))
        for info in typer_app.registered_commands
        if info.callback
    ]
    for group in typer_app.registered_groups:
        if group.typer_instance is not None and group.name:
            found += commands(group.typer_instance, (*prefix, group.name))
    return found


def callback_of(path: tuple[str, ...]) -> object:
    typer_app = app
    for name in path[:-1]:
        [group] = [g for g in typer_app.registered_groups if g.name == name]
        assert group.typer_instance is not None
        typer_app = group.typer_instance
    [info] = [
        i
        for i in typer_app.registered_commands
        if (i.name or (i.callback.__name__ if i.callback else "")) == path[-1]
    ]
    return info.callback


@pytest.mark.parametrize("path", commands(app), ids=" ".join)
def test_each_paragraph_of_a_commands_docstring_is_one_line_of_a_wide_help(
    path: tuple[str, ...],
) -> None:
    doc = inspect.getdoc(callback_of(path))
    assert doc, f"{' '.join(path)} has no docstring"

    shown = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "1000"})

    assert shown.exit_code == 0, shown.output
    lines = {line.strip() for line in shown.stdout.splitlines()}
    for paragraph in doc.split("\n\n"):
        assert " ".join(paragraph.split()) in lines, paragraph
