"""What a CLI command costs to start: CPU time per command against the imports it cannot avoid.

An operator's command (and each of the test suite's few hundred) is a new process that imports
the project and its libraries before it does anything. This runs ``verify``, ``standing`` and
``tokens create`` on a fresh SQLite database ``--rounds`` times each, beside two floors run in
the same rounds: the interpreter alone (``python -c pass``) and the libraries every command
imports (``import sqlalchemy, typer, rich``). With ``--compare DIR``, each command also runs with
``DIR`` first on ``PYTHONPATH`` (say another Typer, ``pip install --target DIR --no-deps
typer==0.29.2``), in the same rounds, alternating which goes first.

The table gives the median and minimum over rounds of each process's CPU time (user + system,
its own) and of its wall time; the ratios are to the library floor.

Run from the repository root: ``.venv/bin/python benchmarks/bench_cli_start.py``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import load_average
from rich.console import Console
from rich.table import Table

CLI = str(Path(sys.executable).with_name("enforcement"))
COMMANDS = {
    "verify": [CLI, "verify"],
    "standing acct_1": [CLI, "standing", "acct_1"],
    "tokens create": [CLI, "tokens", "create", "--role", "auditor", "--name", "bench"],
}
LIBRARIES = "imports: sqlalchemy, typer, rich"  # the floor the ratios are to
FLOORS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    LIBRARIES: [sys.executable, "-c", "import sqlalchemy, typer, rich"],
}
Side = tuple[list[str], dict[str, str]]  # a command and its environment


def _run(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """The CPU seconds (user + system) and wall seconds of one run of ``argv``."""
    before, started = os.times(), time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    wall, after = time.perf_counter() - started, os.times()
    if done.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    cpu = (after.children_user + after.children_system) - (
        before.children_user + before.children_system
    )
    return cpu, wall


def _measure(sides: dict[str, Side], rounds: int) -> dict[str, list[tuple[float, float]]]:
    """Each side's (CPU, wall) per round: each once a round, the order reversed every round."""
    figures: dict[str, list[tuple[float, float]]] = {name: [] for name in sides}
    order = list(sides)
    for _ in range(rounds):
        for name in order:
            figures[name].append(_run(*sides[name]))
        order.reverse()
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15, help="runs of each command")
    parser.add_argument("--compare", metavar="DIR", help="also run each command with DIR first")
    args = parser.parse_args(argv)
    console = Console(width=max(Console().width, 110))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENFORCEMENT_")}
    env.pop("PYTHONPATH", None)
    console.print(
        f"[bold]conditions[/]: {os.cpu_count()} cores, {platform.machine()}, Python "
        f"{platform.python_version()}; a fresh SQLite database; {args.rounds} rounds, each side "
        f"once a round, the order reversed every round; load average before: {load_average()}"
    )
    with tempfile.TemporaryDirectory(prefix="bench_cli_") as workdir:
        env["ENFORCEMENT_DATABASE_URL"] = f"sqlite:///{workdir}/bench.db"
        _run([CLI, "init"], env)
        sides: dict[str, Side] = {
            name: (command, env) for name, command in {**FLOORS, **COMMANDS}.items()
        }
        if args.compare:
            other = {**env, "PYTHONPATH": args.compare}
            for name, command in COMMANDS.items():
                sides[f"{name}, {args.compare} first"] = (command, other)
        figures = _measure(sides, args.rounds)
    floor = statistics.median(cpu for cpu, _ in figures[LIBRARIES])
    table = Table(title="One process, start to exit")
    for column in ("command", "CPU ms median", "CPU ms min", "wall ms median", "CPU / floor"):
        table.add_column(column, justify="left" if column == "command" else "right")
    for name, runs in figures.items():
        cpu = statistics.median(c for c, _ in runs)
        table.add_row(
            name,
            f"{cpu * 1000:.0f}",
            f"{min(c for c, _ in runs) * 1000:.0f}",
            f"{statistics.median(w for _, w in runs) * 1000:.0f}",
            f"{cpu / floor:.2f}x",
        )
    console.print(table)


if __name__ == "__main__":
    main()
