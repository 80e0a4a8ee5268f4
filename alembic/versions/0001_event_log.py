"""The event log: events (append-only), idempotency keys, subscription checkpoints.

Revision ID: 0001_event_log
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op
from events.dialects import append_only_ddl, drop_append_only_ddl

revision = "0001_event_log"
down_revision = None
branch_labels = None
depends_on = None

# Frozen copies of the column types as of this revision (never import live table objects).
_json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
_uuid = sa.String(36).with_variant(postgresql.UUID(as_uuid=False), "postgresql")
_position = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_time = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("position", _position, primary_key=True, autoincrement=True),
        sa.Column("event_id", _uuid, nullable=False),
        sa.Column("account_id", sa.String(128), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("type", sa.String(100), nullable=False),
        sa.Column("schema_version", sa.Integer, nullable=False),
        sa.Column("data", _json, nullable=False),
        sa.Column("metadata", _json, nullable=False),
        sa.Column("occurred_at", _time, nullable=False),
        sa.Column("recorded_at", _time, nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.UniqueConstraint("event_id", name="uq_events_event_id"),
        sa.UniqueConstraint("account_id", "version", name="uq_events_account_version"),
        sa.CheckConstraint("version >= 1", name="ck_events_version_positive"),
    )
    op.create_index("ix_events_recorded_at", "events", ["recorded_at"])
    op.create_table(
        "idempotency_keys",
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("account_id", sa.String(128), nullable=False),
        sa.Column("event_ids", sa.JSON, nullable=False),
        sa.Column("recorded_at", _time, nullable=False),
    )
    op.create_table(
        "checkpoints",
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("position", sa.BigInteger, nullable=False),
        sa.Column("updated_at", _time, nullable=False),
    )
    for statement in append_only_ddl(op.get_bind().dialect.name):
        op.execute(statement)


def downgrade() -> None:
    for statement in drop_append_only_ddl(op.get_bind().dialect.name):
        op.execute(statement)
    op.drop_table("checkpoints")
    op.drop_table("idempotency_keys")
    op.drop_index("ix_events_recorded_at", table_name="events")
    op.drop_table("events")
