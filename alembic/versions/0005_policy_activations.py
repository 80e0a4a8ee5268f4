"""The policies the deployment ran, each with the instant it began (``policy_activations``), so
that a standing as of an instant counts strikes as the policy in force then did, also for an
account that policy had not acted on yet (``enforcement.policy_activations``). Append-only and
in time order: the database refuses UPDATE and DELETE, as on the events, and an insert whose
``activated_at`` is not after every row's.

An existing deployment starts with no row: until its first ``serve`` or ``worker`` of this
release records its policy, readings fall back to what each event recorded, as before.

Revision ID: 0005_policy_activations
Revises: 0004_contact_channel_since
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "0005_policy_activations"
down_revision = "0004_contact_channel_since"
branch_labels = None
depends_on = None

_position = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_time = sa.DateTime(timezone=True)
_MESSAGE = "policy activations are append-only: UPDATE and DELETE are refused"
_ORDER_MESSAGE = (
    "policy activations are recorded in time order: activated_at must be after the last row"
)


def upgrade() -> None:
    op.create_table(
        "policy_activations",
        sa.Column("position", _position, primary_key=True, autoincrement=True),
        sa.Column("policy_version", sa.Text, nullable=False),
        sa.Column("strike_lookback", sa.String(40), nullable=False),
        sa.Column("activated_at", _time, nullable=False),
    )
    op.create_index("ix_policy_activations_activated_at", "policy_activations", ["activated_at"])
    if op.get_bind().dialect.name == "sqlite":
        for operation in ("UPDATE", "DELETE"):
            op.execute(
                f"""CREATE TRIGGER policy_activations_refuse_{operation.lower()}
                BEFORE {operation} ON policy_activations
                BEGIN SELECT RAISE(ABORT, '{_MESSAGE}'); END"""
            )
        # SQLite holds the times as text of one width (microseconds always): text order is time
        # order.
        op.execute(
            f"""CREATE TRIGGER policy_activations_in_order BEFORE INSERT ON policy_activations
            WHEN NEW.activated_at <= (SELECT max(activated_at) FROM policy_activations)
            BEGIN SELECT RAISE(ABORT, '{_ORDER_MESSAGE}'); END"""
        )
        return
    op.execute(
        f"""CREATE OR REPLACE FUNCTION policy_activations_refuse_change() RETURNS trigger AS $$
        BEGIN
            RAISE EXCEPTION '{_MESSAGE} (% on policy_activations)', TG_OP
                USING ERRCODE = 'restrict_violation';
        END $$ LANGUAGE plpgsql"""
    )
    op.execute(
        """CREATE TRIGGER policy_activations_refuse_update_delete
        BEFORE UPDATE OR DELETE ON policy_activations
        FOR EACH ROW EXECUTE FUNCTION policy_activations_refuse_change()"""
    )
    op.execute(
        """CREATE TRIGGER policy_activations_refuse_truncate BEFORE TRUNCATE ON policy_activations
        FOR EACH STATEMENT EXECUTE FUNCTION policy_activations_refuse_change()"""
    )
    op.execute(
        f"""CREATE OR REPLACE FUNCTION policy_activations_in_order() RETURNS trigger AS $$
        BEGIN
            IF NEW.activated_at <= (SELECT max(activated_at) FROM policy_activations) THEN
                RAISE EXCEPTION '{_ORDER_MESSAGE}' USING ERRCODE = 'check_violation';
            END IF;
            RETURN NEW;
        END $$ LANGUAGE plpgsql"""
    )
    op.execute(
        """CREATE TRIGGER policy_activations_in_order BEFORE INSERT ON policy_activations
        FOR EACH ROW EXECUTE FUNCTION policy_activations_in_order()"""
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS policy_activations_refuse_change() CASCADE")
        op.execute("DROP FUNCTION IF EXISTS policy_activations_in_order() CASCADE")
    op.drop_index("ix_policy_activations_activated_at", table_name="policy_activations")
    op.drop_table("policy_activations")  # SQLite drops the table's triggers with it
