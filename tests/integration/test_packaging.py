"""The project installed from a wheel, not a checkout: its migrations travel inside the package,
so ``enforcement init`` works there too (``pip install .`` used to leave them behind)."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[2]


def importable(directory: Path) -> bool:
    """What setuptools takes for a package: a directory with a module, or one named as a
    package would be that holds files it ships (``enforcement/api/static``, whose files are
    package data; ``swagger-ui`` below it is no name a package could have)."""
    if not directory.is_dir() or directory.name == "__pycache__":
        return False
    if any(directory.glob("*.py")):
        return True
    return directory.name.isidentifier() and any(
        p.is_file() and "__pycache__" not in p.parts for p in directory.rglob("*")
    )


def test_every_package_directory_is_listed_in_pyproject() -> None:
    """The packages are listed (the migrations are mapped in from ``alembic/``), so a package
    directory added later must be listed too, or a wheel would leave it out (or, for a
    directory of data files, build it with a warning that it "would be ignored")."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapped = {name: ROOT / path for name, path in setuptools["package-dir"].items()}
    on_disk = set()
    for top in ("enforcement", "events", "projections"):
        for directory in [ROOT / top, *(ROOT / top).rglob("*")]:
            if importable(directory):
                on_disk.add(".".join(directory.relative_to(ROOT).parts))
    for name, path in mapped.items():
        on_disk |= {name} | {f"{name}.{d.name}" for d in path.iterdir() if any(d.glob("*.py"))}
    assert sorted(setuptools["packages"]) == sorted(on_disk)


def test_init_from_an_installed_wheel_creates_the_schema(tmp_path: Path) -> None:
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", tmp_path],
        check=True,
        capture_output=True,
        text=True,
    )
    # setuptools' warning of a directory it ships files from but which is not listed: 40 lines
    # on the first `scripts/run` saying a package "would be ignored", when nothing was.
    assert "absent from the `packages` configuration" not in built.stdout + built.stderr
    [wheel] = tmp_path.glob("*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    names = {p.relative_to(site).as_posix() for p in site.rglob("*") if p.is_file()}
    assert {
        "enforcement/alembic/env.py",
        "enforcement/alembic/script.py.mako",
        "enforcement/api/static/swagger-ui/swagger-ui-bundle.js",
        "enforcement/api/static/swagger-ui/swagger-ui.css",
        "enforcement/api/static/swagger-ui/LICENSE",
    } <= names
    assert not any(name.startswith("alembic/") for name in names)  # the library's name

    # No site processing (-S): the checkout's editable install is not on the path, only the
    # wheel's files and the dependencies (the environment's site-packages, added after them).
    database = tmp_path / "installed.db"
    code = (
        "import sys; "
        f"sys.path[:0] = [{str(site)!r}]; sys.path.append({sysconfig.get_paths()['purelib']!r}); "
        "import enforcement.migrations as m; print(m.__file__); "
        "from enforcement.cli import main; sys.argv = ['enforcement', 'init']; main()"
    )
    env = {**os.environ, "ENFORCEMENT_DATABASE_URL": f"sqlite:///{database}"}
    env.pop("PYTHONPATH", None)
    done = subprocess.run(
        [sys.executable, "-S", "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == str(site / "enforcement" / "migrations.py")
    engine = sa.create_engine(f"sqlite:///{database}")
    try:
        tables = set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert {"events", "idempotency_keys", "checkpoints", "alembic_version"} <= tables
