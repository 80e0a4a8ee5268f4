"""Run the Alembic migrations programmatically (``enforcement init``, tests)."""

from __future__ import annotations

from pathlib import Path

from alembic.config import Config

from alembic import command

ROOT = Path(__file__).resolve().parent.parent


def script_location() -> Path:
    """The migration scripts: the checkout's ``alembic/`` (a source tree, an editable install),
    else the copy an installed wheel carries as ``enforcement/alembic`` (pyproject.toml)."""
    checkout = ROOT / "alembic"
    if (checkout / "env.py").is_file():  # not the Alembic library beside an installed package
        return checkout
    return Path(__file__).resolve().parent / "alembic"


def alembic_config(database_url: str) -> Config:
    ini = ROOT / "alembic.ini"  # logging for the `alembic` command; an installed wheel has none
    config = Config(str(ini) if ini.is_file() else None)
    config.set_main_option("script_location", str(script_location()))
    config.set_main_option("path_separator", "os")
    config.attributes["database_url"] = database_url
    config.attributes["configure_logging"] = False
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Create or upgrade the schema to ``revision``."""
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str) -> None:
    command.downgrade(alembic_config(database_url), revision)


def release_revisions() -> tuple[str | None, set[str]]:
    """This release's schema: the revision ``upgrade`` brings a database to, and every
    revision of its migrations."""
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory.from_config(alembic_config("sqlite://"))
    return scripts.get_current_head(), {script.revision for script in scripts.walk_revisions()}


def current_revision(database_url: str, connect_timeout: int | None = None) -> str | None:
    """The database's schema revision (None: no schema). ``connect_timeout`` (seconds, on
    PostgreSQL) bounds the wait for a server that accepts connections but does not answer."""
    from alembic.runtime.migration import MigrationContext

    from events.dialects import create_engine

    engine = create_engine(database_url, connect_timeout=connect_timeout)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
