"""The application's own tables: API tokens, contact data, policy activations. Migrations create
them."""

from __future__ import annotations

import sqlalchemy as sa

from events.schema import Position, UTCDateTime, metadata

api_tokens = sa.Table(
    "api_tokens",
    metadata,
    sa.Column("token_id", sa.String(40), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("role", sa.String(20), nullable=False),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

# Mutable contact data (CONTRACT.md: "not an event").
contacts = sa.Table(
    "contacts",
    metadata,
    sa.Column("account_id", sa.String(128), primary_key=True),
    sa.Column("email", sa.String(320), nullable=True),
    sa.Column("webhook_url", sa.String(2048), nullable=True),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    # Since when each channel has been set (NULL: unset, or set before these columns existed,
    # "since always"); a change of its target keeps it (``routes.accounts.set_contact``).
    sa.Column("email_since", UTCDateTime, nullable=True),
    sa.Column("webhook_since", UTCDateTime, nullable=True),
    # The leader's look at the contacts changed lately (``workers.recovery``).
    sa.Index("ix_contacts_updated_at", "updated_at"),
)

# The policies the deployment ran, each from the instant a serving process began with it
# (``enforcement.policy_activations``). Append-only: the database refuses UPDATE and DELETE.
policy_activations = sa.Table(
    "policy_activations",
    metadata,
    sa.Column("position", Position, primary_key=True, autoincrement=True),
    sa.Column("policy_version", sa.Text, nullable=False),
    sa.Column("strike_lookback", sa.String(40), nullable=False),
    sa.Column("activated_at", UTCDateTime, nullable=False),
    sa.Index("ix_policy_activations_activated_at", "activated_at"),
)
