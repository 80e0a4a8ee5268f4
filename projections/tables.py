"""Tables of the stored read models. Alembic migrations create them; this is their shape."""

from __future__ import annotations

import sqlalchemy as sa

from events.schema import JSONDocument, UTCDateTime, metadata

# The stored standing: the fold's accumulator as of ``version``, written in the same transaction
# as the append (and rebuilt by the projections runner). Readers add the events after ``version``.
standings = sa.Table(
    "standings",
    metadata,
    sa.Column("account_id", sa.String(128), primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("state", JSONDocument, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)
