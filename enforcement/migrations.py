"""Run the Alembic migrations programmatically (``enforcement init``, tests); a database's
revision is read without Alembic (``schema_revisions``)."""

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


def alembic_revisions() -> tuple[str | None, list[str]]:
    """Alembic's reading of the migrations: the head, and every revision from the first on
    (what ``schema_revisions.REVISIONS`` must list)."""
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory.from_config(alembic_config("sqlite://"))
    walked = [script.revision for script in scripts.walk_revisions()]  # from the head down
    return scripts.get_current_head(), walked[::-1]
