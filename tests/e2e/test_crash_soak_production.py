"""Production killed under load: a bounded run of ``benchmarks/soak_production.py``.

PostgreSQL and Redis, two ``serve --no-workers`` and two ``enforcement worker`` processes;
the leading worker, an API process and Redis (without persistence: it comes back empty) are
SIGKILLed in turn, and then both workers, Redis again, and the worker that starts alone to
lead while it re-sends what Redis lost, while clients post through both API processes, each
request sent again after the restart when it had no answer; then every promise the soak checks
must hold: each acknowledged request recorded exactly once, ``verify`` intact, every notice
delivered on each channel, deadlines escalated once, ``replay`` giving the same standings, and
the gate (each account asked of one API process, in turn) refusing exactly the suspended and
terminated accounts once the workers settled."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

from soak_production import run  # noqa: E402
from soak_services import Soak  # noqa: E402

from tests.conftest import create_pg_database, drop_pg_database  # noqa: E402
from tests.processes import free_port  # noqa: E402

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


@pytest.fixture
def database() -> Iterator[str]:
    url = create_pg_database()
    yield url
    drop_pg_database(url)


def test_production_killed_four_times_under_load_keeps_every_promise(
    tmp_path: Path, database: str
) -> None:
    # Given PostgreSQL, Redis, two API processes and two workers, of which the leading worker,
    # an API process, Redis, and then the worker about to lead while it starts (both workers
    # and Redis killed, one worker started alone, killed once its log says the gate is seeded,
    # as it re-sends) are killed with SIGKILL at a random moment of a round of load each, with
    # requests in flight
    soak = Soak(
        tmp_path,
        rounds=4,
        seconds=1.0,
        clients=3,
        accounts_per_round=8,
        startup_kills=0.0,
        seed=3,
        settle_seconds=15.0,
        pg_url=database,
        redis_port=free_port(),
    )
    plan = [
        "the leading worker",
        "an API process",
        "Redis",
        "the leading worker while re-sending, Redis restarted",
    ]

    # When the soak has run
    result = run(soak, "none", 0.0, Console(file=sys.stderr), plan)

    # Then every check holds
    assert result.ok, "\n".join(result.failures + result.notes)
    assert result.figures["rounds (kills)"] == 4
    assert [result.figures.get(f"kills: {name}") for name in plan] == [1, 1, 1, 1]
    assert result.figures["kills with a request in flight"] == 4
    assert result.figures["kills while starting"] == 1
    assert result.figures["notices issued"] > 0
