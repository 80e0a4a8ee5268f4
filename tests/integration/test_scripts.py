"""scripts/test and scripts/setup, run against stand-ins for what they call (setup, the test
services, the tools, .venv's python)."""

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


def _run_scripts_test(
    tmp_path: Path, services: str, exits: dict[str, int] | None = None
) -> tuple[int, str, str]:
    """Run a copy of scripts/test whose test-services is ``services``; returns its status, what
    the tools it went on to (ruff, mypy, pytest) logged, each with the database URL, and what it
    printed. A tool exits with ``exits``'s status for it (0 if not given)."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(SCRIPTS / "test", tmp_path / "scripts" / "test")
    _executable(tmp_path / "scripts" / "setup", "exit 0")
    _executable(tmp_path / "scripts" / "test-services", services)
    for tool in ("ruff", "mypy", "pytest"):
        _executable(
            tmp_path / ".venv" / "bin" / tool,
            f'echo "{tool} $ENFORCEMENT_TEST_PG_URL" >> "$(dirname "$0")/../../ran"\n'
            f'echo "{tool} says"\n'
            f"exit {(exits or {}).get(tool, 0)}",
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
    logged = ran.read_text(encoding="utf-8") if ran.exists() else ""
    return result.returncode, logged, result.stdout + result.stderr


def test_scripts_test_stops_when_the_test_services_cannot_be_set_up(tmp_path: Path) -> None:
    # As a user who is not root: `su postgres` fails, and nothing is printed on stdout. The
    # suite must not run (minutes of lint, types and tests, every PostgreSQL one failing on an
    # empty URL) as if PostgreSQL were there.
    status, ran, _ = _run_scripts_test(tmp_path, 'echo "su: Authentication failure" >&2; exit 1')

    assert status == 1
    assert ran == ""


def test_scripts_test_hands_the_services_url_to_the_suite(tmp_path: Path) -> None:
    url = "postgresql+psycopg://enforcement:enforcement@127.0.0.1:5433/postgres"
    status, ran, _ = _run_scripts_test(tmp_path, f'echo "starting"; echo "{url}"')

    assert status == 0
    # ruff first; mypy (on the code, then benchmarks/) beside the tests
    lines = ran.splitlines()
    assert lines[:2] == [f"ruff {url}"] * 2
    assert sorted(lines[2:]) == [f"mypy {url}", f"mypy {url}", f"pytest {url}"]


def test_scripts_test_fails_when_the_type_checks_fail_though_the_tests_pass(
    tmp_path: Path,
) -> None:
    url = "postgresql+psycopg://enforcement:enforcement@127.0.0.1:5433/postgres"
    status, ran, output = _run_scripts_test(tmp_path, f'echo "{url}"', {"mypy": 1})

    assert status == 1
    assert sorted(ran.splitlines()[2:]) == [f"mypy {url}", f"pytest {url}"]
    # what mypy said is shown, after the tests' report
    assert output.index("pytest says") < output.index("mypy says")
    assert "the type checks failed" in output


def test_scripts_test_gives_the_tests_status_when_they_fail(tmp_path: Path) -> None:
    url = "postgresql+psycopg://enforcement:enforcement@127.0.0.1:5433/postgres"
    status, _, _ = _run_scripts_test(tmp_path, f'echo "{url}"', {"pytest": 5})

    assert status == 5


def _run_scripts_setup(tmp_path: Path, kind: str, installed: list[str]) -> list[str]:
    """Run a copy of scripts/setup ``kind`` in a checkout whose .venv was installed as each of
    ``installed`` (their stamps); returns what it asked of .venv's python."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(SCRIPTS / "setup", tmp_path / "scripts" / "setup")
    shutil.copy(SCRIPTS.parent / "pyproject.toml", tmp_path / "pyproject.toml")
    _executable(tmp_path / ".venv" / "bin" / "python", 'echo "$*" >> "$(dirname "$0")/../../ran"')
    digest = subprocess.run(
        ["sha256sum", "pyproject.toml"], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout[:16]
    for done in installed:
        (tmp_path / ".venv" / f".installed-{digest}-{done}").touch()
    subprocess.run(["bash", str(tmp_path / "scripts" / "setup"), kind], timeout=60, check=True)
    return (tmp_path / "ran").read_text(encoding="utf-8").splitlines()


def test_scripts_run_after_scripts_test_installs_nothing_again(tmp_path: Path) -> None:
    # The test install (the project with its extras) holds what `scripts/run` needs: the README
    # says the network is needed the first time only.
    ran = _run_scripts_setup(tmp_path, "run", installed=["test"])

    assert [line for line in ran if "pip" in line] == []
    assert [line.split()[:2] for line in ran] == [["-m", "compileall"]]


def test_scripts_test_after_scripts_run_installs_the_extras(tmp_path: Path) -> None:
    ran = _run_scripts_setup(tmp_path, "test", installed=["run"])

    assert "-m pip install -q -e .[dev,bench]" in ran
