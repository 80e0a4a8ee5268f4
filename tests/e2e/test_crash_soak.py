"""The embedded default killed under load: a bounded run of ``benchmarks/soak_embedded.py``.

``enforcement serve`` on one SQLite file is SIGKILLed three times while clients post reports
and operator commands, each request sent again after the restart when it had no answer; then
every promise the soak checks must hold: each acknowledged request recorded exactly once,
``verify`` intact, every notice delivered (at least once) on each channel, deadlines escalated
once, ``replay`` giving the same standings, no stray files, an intact database."""

from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

from soak_embedded import Soak, run  # noqa: E402


def test_serve_killed_three_times_under_load_keeps_every_promise(tmp_path: Path) -> None:
    # Given the real `serve`, killed with SIGKILL at a random moment of each of three rounds of
    # load, with requests in flight, and started once more to take the requests sent again
    soak = Soak(
        tmp_path,
        rounds=3,
        seconds=1.5,
        clients=3,
        accounts_per_round=8,
        startup_kills=0.0,
        seed=3,
        # Under the 24 s after which the lost-retry scan would send what a start-up missed
        settle_seconds=15.0,
    )

    # When the soak has run
    result = run(soak, Console(file=sys.stderr))

    # Then every check holds
    assert result.ok, "\n".join(result.failures + result.notes)
    assert result.figures["rounds (kills)"] == 3
    assert result.figures["kills with a request in flight"] == 3
    assert result.figures["notices issued"] > 0
