"""Tables of the stored read models. Alembic migrations create them; this is their shape."""

from __future__ import annotations

import sqlalchemy as sa

from events.schema import JSONDocument, UTCDateTime, metadata

# The stored standing: the head of the fold's accumulator as of ``version`` (its records are in
# ``standing_records``), written in the same transaction as the append (and rebuilt by the
# projections runner). Readers add the events after ``version``.
standings = sa.Table(
    "standings",
    metadata,
    sa.Column("account_id", sa.String(128), primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("state", JSONDocument, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

# The records of each stored standing's tables (``projections.standing.TABLES``): one row per
# record, ``seq`` giving their event order within a table. Written in the same transactions as
# the ``standings`` row; an append writes only the records it added or changed.
standing_records = sa.Table(
    "standing_records",
    metadata,
    sa.Column("account_id", sa.String(128), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("record_key", sa.String(200), nullable=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("data", JSONDocument, nullable=False),
    sa.PrimaryKeyConstraint("account_id", "kind", "record_key", name="pk_standing_records"),
)
