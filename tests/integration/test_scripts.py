"""scripts/test, run against stand-ins for what it calls (setup, the test services, the tools)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def _executable(path: Path, body: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/usr/bin/env bash\n{body}\n", encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def _run_scripts_test(tmp_path: Path, services: str) -> tuple[int, str]:
    """Run a copy of scripts/test whose test-services is ``services``; returns its status and
    what the tools it went on to (ruff, mypy, pytest) logged, each with the database URL."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(SCRIPTS / "test", tmp_path / "scripts" / "test")
    _executable(tmp_path / "scripts" / "setup", "exit 0")
    _executable(tmp_path / "scripts" / "test-services", services)
    for tool in ("ruff", "mypy", "pytest"):
        _executable(
            tmp_path / ".venv" / "bin" / tool,
            f'echo "{tool} $ENFORCEMENT_TEST_PG_URL" >> "$(dirname "$0")/../../ran"',
        )
    env = {k: v for k, v in os.environ.items() if k != "ENFORCEMENT_TEST_PG_URL"}
    result = subprocess.run(
        ["bash", str(tmp_path / "scripts" / "test")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    ran = tmp_path / "ran"
    return result.returncode, ran.read_text(encoding="utf-8") if ran.exists() else ""


def test_scripts_test_stops_when_the_test_services_cannot_be_set_up(tmp_path: Path) -> None:
    # As a user who is not root: `su postgres` fails, and nothing is printed on stdout. The
    # suite must not run (minutes of lint, types and tests, every PostgreSQL one failing on an
    # empty URL) as if PostgreSQL were there.
    status, ran = _run_scripts_test(tmp_path, 'echo "su: Authentication failure" >&2; exit 1')

    assert status == 1
    assert ran == ""


def test_scripts_test_hands_the_services_url_to_the_suite(tmp_path: Path) -> None:
    url = "postgresql+psycopg://enforcement:enforcement@127.0.0.1:5433/postgres"
    status, ran = _run_scripts_test(tmp_path, f'echo "starting"; echo "{url}"')

    assert status == 0
    tools = ["ruff", "ruff", "mypy", "mypy", "pytest"]
    assert ran.splitlines() == [f"{tool} {url}" for tool in tools]
