"""An index on ``contacts.updated_at``: the leader's periodic look at the contacts changed since
its last look (``enforcement.workers.recovery.contact_changed_deliveries``) reads those rows
only, not the whole table.

Revision ID: 0006_contacts_updated_at
Revises: 0005_policy_activations
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

revision = "0006_contacts_updated_at"
down_revision = "0005_policy_activations"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_contacts_updated_at", "contacts", ["updated_at"])


def downgrade() -> None:
    op.drop_index("ix_contacts_updated_at", table_name="contacts")
