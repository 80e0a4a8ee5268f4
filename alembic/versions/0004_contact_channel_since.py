"""Since when each channel of a contact has been set (``email_since``, ``webhook_since``), so
that a re-send of the notices without an outcome does not send a channel set later the notices
that went out on the others before it existed (``enforcement.workers.recovery``).

Existing rows keep NULL in both: "since always", the behaviour before this revision.

Revision ID: 0004_contact_channel_since
Revises: 0003_standing_records
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "0004_contact_channel_since"
down_revision = "0003_standing_records"
branch_labels = None
depends_on = None

_time = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("contacts", sa.Column("email_since", _time, nullable=True))
    op.add_column("contacts", sa.Column("webhook_since", _time, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("contacts") as batch:
        batch.drop_column("webhook_since")
        batch.drop_column("email_since")
