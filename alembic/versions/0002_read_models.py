"""Stored standings, API tokens and contact data.

Revision ID: 0002_read_models
Revises: 0001_event_log
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision = "0002_read_models"
down_revision = "0001_event_log"
branch_labels = None
depends_on = None

_json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
_time = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "standings",
        sa.Column("account_id", sa.String(128), primary_key=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("state", _json, nullable=False),
        sa.Column("updated_at", _time, nullable=False),
    )
    op.create_table(
        "api_tokens",
        sa.Column("token_id", sa.String(40), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("role", sa.String(20), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("created_at", _time, nullable=False),
        sa.UniqueConstraint("token_hash", name="uq_api_tokens_hash"),
    )
    op.create_table(
        "contacts",
        sa.Column("account_id", sa.String(128), primary_key=True),
        sa.Column("email", sa.String(320), nullable=True),
        sa.Column("webhook_url", sa.String(2048), nullable=True),
        sa.Column("updated_at", _time, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("contacts")
    op.drop_table("api_tokens")
    op.drop_table("standings")
